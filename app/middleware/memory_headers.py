"""``X-Process-RSS-Bytes``: the worker's RSS on every non-streaming response.

Off by default (``MEMORY_HEADERS=true`` turns it on): it is a debugging aid for
watching memory while exercising an endpoint with curl, and it tells anyone
who can reach the server how big the process is.

Design decisions:

* Pure ASGI, never Starlette's base-class HTTP middleware: that one runs the app in a task
  group and pipes the body through a memory stream, which breaks endless SSE
  streams and cancellation. Here the only message touched is
  ``http.response.start``; body messages pass through untouched, unbuffered.
* SSE responses (``text/event-stream``) are left alone: the value would be
  stale a second after the stream opened, and the stream's headers are sent
  by the hub's response exactly as built.
* The header list is copied, not appended to: Starlette hands over the
  response's own ``raw_headers`` list, and mutating it would change the
  response object.
* RSS is read when the response starts, i.e. after the endpoint ran, which is
  the figure someone watching the effect of a request wants.
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.memory.process import read_rss

__all__ = ["RSS_HEADER", "MemoryHeadersMiddleware"]

RSS_HEADER = "X-Process-RSS-Bytes"
_RSS_HEADER_RAW = RSS_HEADER.lower().encode("latin-1")
_CONTENT_TYPE = b"content-type"
_EVENT_STREAM = b"text/event-stream"


def _is_event_stream(headers: list[tuple[bytes, bytes]]) -> bool:
    for name, value in headers:
        if name.lower() == _CONTENT_TYPE:
            return value.split(b";", 1)[0].strip().lower() == _EVENT_STREAM
    return False


class MemoryHeadersMiddleware:
    def __init__(self, app: ASGIApp, rss_source: Callable[[], int] = read_rss) -> None:
        self.app = app
        self.rss_source = rss_source

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_rss(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", ()))
                if not _is_event_stream(headers):
                    headers.append((_RSS_HEADER_RAW, str(self.rss_source()).encode("ascii")))
                    message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_rss)
