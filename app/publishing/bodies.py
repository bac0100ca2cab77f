"""Reading a publish request's body within a limit: the one body reader of both fronts.

It reads the ASGI ``receive`` directly, so Herald's pure-ASGI publish path and the
Mercure route (through ``Request.receive``) read a body the same way: a declared
``Content-Length`` over the limit is refused before anything is read, and a body sent in
chunks is refused as soon as it passes the limit, never buffered whole first.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from app.publishing.errors import ClientGoneError, PublishRefusedError

__all__ = ["Receive", "read_body"]

Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]


async def read_body(receive: Receive, declared: bytes | None, limit: int, setting: str) -> bytes:
    """The whole request body; 413 naming ``setting`` as soon as it is known to exceed
    ``limit``. ``declared``: the ``Content-Length`` header's value, if any. Raises
    ``ClientGoneError`` when the client leaves first."""
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit, setting)
    message = await receive()
    body: bytes = message.get("body", b"")
    if message["type"] != "http.request":
        raise ClientGoneError
    if not message.get("more_body", False):  # the usual case: one message
        if len(body) > limit:
            raise _too_large(limit, setting)
        return body
    buffer = bytearray(body)
    while True:
        if len(buffer) > limit:
            raise _too_large(limit, setting)
        message = await receive()
        if message["type"] != "http.request":
            raise ClientGoneError
        buffer += message.get("body", b"")
        if not message.get("more_body", False):
            break
    if len(buffer) > limit:
        raise _too_large(limit, setting)
    return bytes(buffer)


def _too_large(limit: int, setting: str) -> PublishRefusedError:
    return PublishRefusedError(413, f"body larger than {setting} ({limit} bytes)")
