"""The one body reader: 413 as soon as the body is known to be too large, and a client that
leaves before its body arrived is told apart from an empty body."""

from __future__ import annotations

import pytest
from starlette.types import Message

from app.publishing import ClientGoneError, PublishRefusedError, read_body
from app.publishing.bodies import Receive


def chunks(*bodies: bytes, gone: bool = False) -> Receive:
    messages: list[Message] = [
        {"type": "http.request", "body": body, "more_body": index < len(bodies) - 1 or gone}
        for index, body in enumerate(bodies)
    ]
    if gone:
        messages.append({"type": "http.disconnect"})

    async def receive() -> Message:
        return messages.pop(0)

    return receive


async def test_a_body_in_one_message_or_in_chunks() -> None:
    assert await read_body(chunks(b"abc"), b"3", 10, "LIMIT") == b"abc"
    assert await read_body(chunks(b"ab", b"c", b""), None, 10, "LIMIT") == b"abc"


@pytest.mark.parametrize(
    ("receive", "declared"),
    [
        (chunks(b"x" * 11), None),  # one message
        (chunks(b"x" * 6, b"x" * 6, b"never read"), None),  # refused at the second chunk
        (chunks(), b"11"),  # the declared length: refused before anything is read
    ],
)
async def test_past_the_limit_is_413_naming_the_setting(
    receive: Receive, declared: bytes | None
) -> None:
    with pytest.raises(PublishRefusedError) as refused:
        await read_body(receive, declared, 10, "MAX_EVENT_BYTES")
    assert refused.value.status == 413
    assert refused.value.detail == "body larger than MAX_EVENT_BYTES (10 bytes)"


async def test_a_client_gone_before_its_body_is_not_an_empty_body() -> None:
    with pytest.raises(ClientGoneError):
        await read_body(chunks(b"ab", gone=True), None, 10, "LIMIT")
