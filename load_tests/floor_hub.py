"""The raw floor: the least any Python SSE hub on this machine can do per event.

Bare uvloop, no framework, no ASGI, no queues, no coalescing: one
``asyncio.Protocol`` per connection. ``GET /events/<anything>`` answers the
stream's headers and registers its transport; ``POST /events/<anything>`` takes
the body as the event's data, frames it once (``data: <body>\\n\\n`` as one
HTTP chunk) and writes it to every subscriber with one ``transport.write``
each, inside the request's ``data_received``, before answering ``202``. ``GET
/health`` answers 200, so the benchmark's server helper can wait for it.

What it leaves out on purpose is what a real hub must pay for: flow control
(it writes into the transport whatever the client reads), ids, replay,
heartbeats, limits. Latency against it (``python -m load_tests.latency``) is the
price of those, plus HTTP parsing and the framework. Run alone::

    PORT=8002 python -m load_tests.floor_hub
"""

from __future__ import annotations

import asyncio
import os

__all__ = ["FloorProtocol", "main", "serve"]

STREAM_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-store\r\n"
    b"transfer-encoding: chunked\r\n\r\n"
)
ACCEPTED = b"HTTP/1.1 202 Accepted\r\ncontent-length: 0\r\n\r\n"
HEALTHY = (
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 15\r\n\r\n"
    b'{"status":"ok"}'
)
NOT_FOUND = b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n"
MAX_HEAD_BYTES = 64 * 1024


class FloorProtocol(asyncio.Protocol):
    """One connection: a subscriber (after its GET) or a keep-alive publisher."""

    def __init__(self, subscribers: set[asyncio.Transport]) -> None:
        self.subscribers = subscribers
        self.transport: asyncio.Transport | None = None
        self.buffer = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment, unused-ignore]  # uvloop's is duck-typed

    def connection_lost(self, exc: Exception | None) -> None:
        self.subscribers.discard(self.transport)  # type: ignore[arg-type, unused-ignore]

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer + data if self.buffer else data
        transport = self.transport
        assert transport is not None
        while True:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(buffer) > MAX_HEAD_BYTES:
                    transport.close()
                break
            head = buffer[:end]
            method, _, rest = head.partition(b" ")
            path = rest.partition(b" ")[0]
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            body_end = end + 4 + length
            if len(buffer) < body_end:
                break  # the body has not all arrived
            body = buffer[end + 4 : body_end]
            buffer = buffer[body_end:]
            if method == b"POST" and path.startswith(b"/events/"):
                frame = b"data: " + body + b"\n\n"
                chunk = b"%x\r\n%b\r\n" % (len(frame), frame)
                for subscriber in self.subscribers:
                    subscriber.write(chunk)
                transport.write(ACCEPTED)
            elif method == b"GET" and path.startswith(b"/events/"):
                transport.write(STREAM_HEAD)
                self.subscribers.add(transport)
            elif method == b"GET" and path == b"/health":
                transport.write(HEALTHY)
            else:
                transport.write(NOT_FOUND)
        self.buffer = buffer


async def serve(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    subscribers: set[asyncio.Transport] = set()
    server = await loop.create_server(lambda: FloorProtocol(subscribers), host, port, backlog=4096)
    async with server:
        await server.serve_forever()


def main() -> None:
    import uvloop

    uvloop.run(serve(os.environ.get("HOST", "127.0.0.1"), int(os.environ.get("PORT", "8002"))))


if __name__ == "__main__":
    main()
