"""Tests for ``OpenAIProducer`` against a real local fake upstream."""

from __future__ import annotations

import socket
import time
from collections.abc import AsyncIterator, Callable, Sequence

import httpx
import pytest

from app.responses.producers.base import Message, ProducerError
from app.responses.producers.openai import OpenAIProducer, chat_completions_url
from tests.responses.producers.fake_upstream import (
    CHAT_COMPLETIONS_PATH,
    Behaviour,
    FakeUpstream,
    error_body,
)

API_KEY = "sk-test-SECRET-0123456789"
MODEL = "fake-model"
# Short enough to keep the stall test fast, long enough for a loaded machine.
SHORT_TIMEOUT_SECONDS = 0.5

MakeProducer = Callable[..., OpenAIProducer]


@pytest.fixture
async def make_producer(upstream: FakeUpstream) -> AsyncIterator[MakeProducer]:
    """Build producers pointed at the fake upstream; close them all afterwards."""
    producers: list[OpenAIProducer] = []

    def make(**overrides: object) -> OpenAIProducer:
        options: dict[str, object] = {
            "base_url": upstream.base_url,
            "api_key": API_KEY,
            "model": MODEL,
        }
        options.update(overrides)
        producer = OpenAIProducer(**options)  # type: ignore[arg-type]
        producers.append(producer)
        return producer

    yield make
    for producer in producers:
        await producer.aclose()


async def collect(
    producer: OpenAIProducer, text: str = "hi", context: Sequence[Message] = ()
) -> list[str]:
    return [chunk async for chunk in producer.stream(text, context)]


async def collect_until_error(
    producer: OpenAIProducer, text: str = "hi"
) -> tuple[list[str], ProducerError]:
    chunks: list[str] = []
    with pytest.raises(ProducerError) as info:
        async for chunk in producer.stream(text, []):
            chunks.append(chunk)
    return chunks, info.value


def assert_safe(error: ProducerError) -> None:
    assert API_KEY not in str(error)
    assert "Traceback" not in str(error)


def closed_port() -> int:
    """A port on 127.0.0.1 where nothing listens, so connecting is refused."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


# --- happy path -----------------------------------------------------------


async def test_streams_content_deltas_in_order(
    upstream: FakeUpstream, make_producer: MakeProducer
) -> None:
    upstream.behaviour = Behaviour(chunks=("Hel", "lo", ", ", "world"))

    chunks = await collect(make_producer())

    # The role-only first chunk and content-less last chunk yield nothing.
    assert chunks == ["Hel", "lo", ", ", "world"]


async def test_sends_model_stream_flag_context_and_input(
    upstream: FakeUpstream, make_producer: MakeProducer
) -> None:
    context = [
        Message("system", "You are terse."),
        Message("user", "Hi"),
        Message("assistant", "Hello."),
    ]

    await collect(make_producer(), "What now?", context)

    [request] = upstream.requests
    assert request.method == "POST"
    assert request.path == CHAT_COMPLETIONS_PATH
    assert request.body == {
        "model": MODEL,
        "stream": True,
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello."},
            {"role": "user", "content": "What now?"},
        ],
    }


async def test_sends_bearer_token_when_api_key_set(
    upstream: FakeUpstream, make_producer: MakeProducer
) -> None:
    await collect(make_producer())

    [request] = upstream.requests
    assert request.headers["authorization"] == f"Bearer {API_KEY}"


@pytest.mark.parametrize("api_key", [None, ""])
async def test_sends_no_authorization_without_api_key(
    upstream: FakeUpstream, make_producer: MakeProducer, api_key: str | None
) -> None:
    assert await collect(make_producer(api_key=api_key)) == list(Behaviour().chunks)

    [request] = upstream.requests
    assert "authorization" not in request.headers


async def test_empty_answer_yields_nothing(
    upstream: FakeUpstream, make_producer: MakeProducer
) -> None:
    upstream.behaviour = Behaviour(chunks=())

    assert await collect(make_producer()) == []


async def test_chunks_without_string_content_are_skipped(
    upstream: FakeUpstream, make_producer: MakeProducer
) -> None:
    upstream.behaviour = Behaviour(
        chunks=("a",),
        raw_payloads=(
            '{"choices": [], "usage": {"total_tokens": 3}}',
            '{"choices": [{"index": 0, "delta": {"content": null}}]}',
            '{"choices": [{"index": 0, "delta": {"tool_calls": []}}]}',
        ),
    )

    assert await collect(make_producer()) == ["a"]


async def test_data_split_over_several_lines_is_one_event(
    upstream: FakeUpstream, make_producer: MakeProducer
) -> None:
    # SSE joins consecutive data lines with "\n"; JSON allows that whitespace.
    upstream.behaviour = Behaviour(
        chunks=(), raw_payloads=('{"choices": [{"delta":\ndata: {"content": "split"}}]}',)
    )

    assert await collect(make_producer()) == ["split"]


# --- base URL handling ----------------------------------------------------


@pytest.mark.parametrize("suffix", ["", "/", "/v1", "/v1/"])
async def test_base_url_spellings_reach_the_same_endpoint(
    upstream: FakeUpstream, make_producer: MakeProducer, suffix: str
) -> None:
    producer = make_producer(base_url=upstream.base_url + suffix)

    assert await collect(producer) == list(Behaviour().chunks)
    assert [request.path for request in upstream.requests] == [CHAT_COMPLETIONS_PATH]


async def test_base_url_path_prefix_is_kept(
    upstream: FakeUpstream, make_producer: MakeProducer
) -> None:
    producer = make_producer(base_url=upstream.base_url + "/proxy/v1/")

    # The fake only serves /v1/chat/completions, so the prefixed path is a 404.
    _, error = await collect_until_error(producer)

    assert "HTTP 404" in str(error)
    assert [request.path for request in upstream.requests] == ["/proxy/v1/chat/completions"]


@pytest.mark.parametrize(
    ("base_url", "expected"),
    [
        ("http://h:1", "http://h:1/v1/chat/completions"),
        ("http://h:1/", "http://h:1/v1/chat/completions"),
        ("http://h:1/v1", "http://h:1/v1/chat/completions"),
        ("https://h/v1/", "https://h/v1/chat/completions"),
        ("http://h/api/v1", "http://h/api/v1/chat/completions"),
        ("http://h/v10", "http://h/v10/v1/chat/completions"),
    ],
)
def test_chat_completions_url(base_url: str, expected: str) -> None:
    assert chat_completions_url(base_url) == expected


@pytest.mark.parametrize("base_url", ["", "localhost:8000", "ftp://h", "http://"])
def test_invalid_base_url_fails_at_construction(base_url: str) -> None:
    with pytest.raises(ValueError, match="base URL"):
        OpenAIProducer(base_url, None, MODEL)


# --- failures -------------------------------------------------------------


@pytest.mark.parametrize("status", [500, 401])
async def test_error_status_reports_status_and_upstream_message(
    upstream: FakeUpstream, make_producer: MakeProducer, status: int
) -> None:
    upstream.behaviour = Behaviour(status=status, error_body=error_body("model is overloaded"))

    chunks, error = await collect_until_error(make_producer())

    assert chunks == []
    assert str(error) == f"upstream returned HTTP {status}: model is overloaded"


async def test_error_status_masks_an_echoed_api_key(
    upstream: FakeUpstream, make_producer: MakeProducer
) -> None:
    upstream.behaviour = Behaviour(
        status=401, error_body=error_body(f"Incorrect API key provided: {API_KEY}.")
    )

    _, error = await collect_until_error(make_producer())

    assert_safe(error)
    assert str(error) == "upstream returned HTTP 401: Incorrect API key provided: ***."


async def test_error_message_is_truncated_to_200_chars(
    upstream: FakeUpstream, make_producer: MakeProducer
) -> None:
    upstream.behaviour = Behaviour(status=500, error_body=error_body("x" * 1000))

    _, error = await collect_until_error(make_producer())

    prefix = "upstream returned HTTP 500: "
    assert str(error).startswith(prefix)
    message = str(error).removeprefix(prefix)
    assert len(message) == 200
    assert message.startswith("x" * 199)


@pytest.mark.parametrize(
    "body", [b"<html>Bad Gateway</html>", b"", b'{"detail": "nope"}', b"\xff\xfe"]
)
async def test_error_status_without_json_error_reports_status_only(
    upstream: FakeUpstream, make_producer: MakeProducer, body: bytes
) -> None:
    upstream.behaviour = Behaviour(status=502, error_body=body)

    _, error = await collect_until_error(make_producer())

    assert str(error) == "upstream returned HTTP 502"


async def test_connection_refused(make_producer: MakeProducer) -> None:
    producer = make_producer(base_url=f"http://127.0.0.1:{closed_port()}")

    _, error = await collect_until_error(producer)

    assert str(error) == "could not connect to the upstream"
    assert_safe(error)


async def test_stall_between_chunks_times_out(
    upstream: FakeUpstream, make_producer: MakeProducer
) -> None:
    upstream.behaviour = Behaviour(chunks=("one", " two", " three"), stall_after=2)
    producer = make_producer(timeout_seconds=SHORT_TIMEOUT_SECONDS)

    start = time.monotonic()
    chunks, error = await collect_until_error(producer)

    assert chunks == ["one", " two"]
    assert "timed out" in str(error)
    assert_safe(error)
    # Well under the fake's stall: the producer's own timeout fired.
    assert time.monotonic() - start < Behaviour().stall_seconds - 1


async def test_timeout_applies_to_a_passed_in_client(upstream: FakeUpstream) -> None:
    upstream.behaviour = Behaviour(stall_after=1)
    lenient = httpx.Timeout(Behaviour().stall_seconds * 2)
    async with httpx.AsyncClient(timeout=lenient) as client:
        producer = OpenAIProducer(
            upstream.base_url,
            API_KEY,
            MODEL,
            timeout_seconds=SHORT_TIMEOUT_SECONDS,
            client=client,
        )
        start = time.monotonic()
        chunks, error = await collect_until_error(producer)

    assert chunks == list(Behaviour().chunks[:1])
    assert "timed out" in str(error)
    assert time.monotonic() - start < Behaviour().stall_seconds - 1


async def test_stream_cut_before_done(upstream: FakeUpstream, make_producer: MakeProducer) -> None:
    upstream.behaviour = Behaviour(chunks=("par", "tial"), finish="cut")

    chunks, error = await collect_until_error(make_producer())

    assert chunks == ["par", "tial"]
    assert str(error) == "upstream stream ended before completion"
    assert_safe(error)


async def test_connection_dropped_mid_stream(
    upstream: FakeUpstream, make_producer: MakeProducer
) -> None:
    upstream.behaviour = Behaviour(chunks=("par", "tial"), finish="drop")

    _, error = await collect_until_error(make_producer())

    assert str(error) == "upstream stream ended before completion (connection closed)"
    assert_safe(error)


async def test_malformed_json_chunk(upstream: FakeUpstream, make_producer: MakeProducer) -> None:
    upstream.behaviour = Behaviour(chunks=("ok",), raw_payloads=("{not json",))

    chunks, error = await collect_until_error(make_producer())

    assert chunks == ["ok"]
    assert "malformed chunk" in str(error)
    assert_safe(error)


async def test_non_object_json_chunk(upstream: FakeUpstream, make_producer: MakeProducer) -> None:
    upstream.behaviour = Behaviour(chunks=(), raw_payloads=("[1, 2]",))

    _, error = await collect_until_error(make_producer())

    assert "malformed chunk" in str(error)


async def test_error_object_inside_stream(
    upstream: FakeUpstream, make_producer: MakeProducer
) -> None:
    upstream.behaviour = Behaviour(
        chunks=("a",), raw_payloads=('{"error": {"message": "context length exceeded"}}',)
    )

    chunks, error = await collect_until_error(make_producer())

    assert chunks == ["a"]
    assert str(error) == "upstream error: context length exceeded"


async def test_connect_timeout_is_reported_as_such() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectTimeout("timed out", request=request)

    async with httpx.AsyncClient(transport=httpx.MockTransport(refuse)) as client:
        producer = OpenAIProducer(
            "http://upstream.invalid", API_KEY, MODEL, connect_timeout_seconds=2, client=client
        )
        _, error = await collect_until_error(producer)

    assert str(error) == "timed out connecting to the upstream after 2s"


# --- lifecycle ------------------------------------------------------------


async def test_uses_a_passed_in_client_and_leaves_it_open(upstream: FakeUpstream) -> None:
    async with httpx.AsyncClient() as client:
        producer = OpenAIProducer(upstream.base_url, API_KEY, MODEL, client=client)

        assert await collect(producer) == list(Behaviour().chunks)
        await producer.aclose()

        assert not client.is_closed
        # Still usable by its owner.
        assert await collect(producer) == list(Behaviour().chunks)


async def test_aclose_closes_the_client_it_created(
    upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    closed: list[httpx.AsyncClient] = []
    original_aclose = httpx.AsyncClient.aclose

    async def spy_aclose(self: httpx.AsyncClient) -> None:
        closed.append(self)
        await original_aclose(self)

    monkeypatch.setattr(httpx.AsyncClient, "aclose", spy_aclose)
    producer = OpenAIProducer(upstream.base_url, API_KEY, MODEL)
    await collect(producer)

    await producer.aclose()

    assert len(closed) == 1
    assert closed[0].is_closed


async def test_stopping_early_releases_the_connection(
    upstream: FakeUpstream, make_producer: MakeProducer
) -> None:
    # A consumer that stops reading must not leave the stream open: the next
    # request on a one-connection pool would otherwise wait for it forever.
    limits = httpx.Limits(max_connections=1)
    async with httpx.AsyncClient(limits=limits, timeout=SHORT_TIMEOUT_SECONDS) as client:
        producer = OpenAIProducer(upstream.base_url, None, MODEL, client=client)
        stream = producer.stream("hi", [])
        assert await anext(stream) == Behaviour().chunks[0]
        await stream.aclose()  # type: ignore[attr-defined]

        assert await collect(producer) == list(Behaviour().chunks)
