"""Tests for ``EchoProducer``."""

from __future__ import annotations

import asyncio
import time

import pytest

from app.responses.producers.base import Message, Producer
from app.responses.producers.echo import EchoProducer, split_words


async def collect(producer: Producer, text: str) -> list[str]:
    return [chunk async for chunk in producer.stream(text, [])]


async def test_streams_words_with_their_leading_whitespace() -> None:
    chunks = await collect(EchoProducer(delay_ms=0), "hello world")

    assert chunks == ["hello", " world"]


@pytest.mark.parametrize(
    "text",
    [
        "hello world",
        "  leading spaces",
        "trailing spaces  ",
        "tabs\tand\nnew lines\n",
        "double  space",
        "   ",
        "x",
        "unicode — ünïcödé 🙂 text",
    ],
)
async def test_chunks_join_back_to_the_input_exactly(text: str) -> None:
    chunks = await collect(EchoProducer(delay_ms=0), text)

    assert "".join(chunks) == text
    assert all(chunks)


async def test_each_chunk_holds_one_word() -> None:
    chunks = await collect(EchoProducer(delay_ms=0), "one two\nthree  four ")

    assert chunks == ["one", " two", "\nthree", "  four", " "]


async def test_empty_input_yields_nothing() -> None:
    assert await collect(EchoProducer(delay_ms=0), "") == []


async def test_context_is_ignored() -> None:
    producer = EchoProducer(delay_ms=0)
    context = [Message("system", "be brief"), Message("assistant", "earlier")]

    chunks = [chunk async for chunk in producer.stream("just this", context)]

    assert chunks == ["just", " this"]


async def test_sleeps_delay_between_chunks_only(monkeypatch: pytest.MonkeyPatch) -> None:
    sleeps: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        sleeps.append(seconds)

    # The module calls asyncio.sleep, so patching it there is what it sees.
    monkeypatch.setattr(asyncio, "sleep", fake_sleep)

    chunks = await collect(EchoProducer(delay_ms=50), "a b c")

    assert chunks == ["a", " b", " c"]
    assert sleeps == [0.05, 0.05]


async def test_delay_actually_spaces_out_chunks() -> None:
    # Only a lower bound: an upper bound would make the test flaky on a busy machine.
    start = time.monotonic()
    await collect(EchoProducer(delay_ms=30), "a b c")

    assert time.monotonic() - start >= 0.05


def test_defaults() -> None:
    producer = EchoProducer()

    assert producer.name == "echo"
    assert producer.delay_ms == 20.0


def test_negative_delay_is_refused() -> None:
    with pytest.raises(ValueError, match="delay_ms"):
        EchoProducer(delay_ms=-1)


def test_split_words_of_empty_text_is_empty() -> None:
    assert split_words("") == []
