"""A lean HTTP/1.1 client on raw asyncio sockets, for thousands of connections per test.

httpx costs about a millisecond of client CPU per request and more per stream;
on a 2-core machine the client would then compete with the server it measures.
These helpers write the request bytes by hand and read only what a test needs.

Design decisions:

- ``SseSocket`` can end a stream two ways, the two a server meets in the wild:
  ``close()`` (FIN, the orderly goodbye) and ``reset()`` (``SO_LINGER`` 0, then
  close: the kernel sends RST and discards anything unsent, as when a phone
  drops off the network or a proxy kills the connection).
- ``receive_buffer`` sets ``SO_RCVBUF`` *before* connecting, so the TCP window
  the client advertises is small from the first byte: a client that then stops
  reading backs the server up after a few kilobytes instead of megabytes, which
  is how a slow consumer is simulated without publishing hundreds of megabytes.
- ``source_address`` binds the client socket to an address of 127.0.0.0/8 before
  connecting (with ``IP_BIND_ADDRESS_NO_PORT``, so the port is chosen at connect
  time, per destination): tens of thousands of connections to one server port
  would otherwise exhaust the ephemeral ports of 127.0.0.1.
- ``KeepAliveClient`` sends one request at a time on one kept-alive connection
  and reads responses by ``Content-Length`` (Herald's JSON answers always carry
  it), reconnecting if the server closed the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import struct
from typing import Any

from app.wire.parser import SSEMessage, SSEParser

__all__ = ["ChunkedDecoder", "HttpResponse", "KeepAliveClient", "SseSocket", "open_sse"]

HEADER_END = b"\r\n\r\n"
READ_CHUNK = 65536
LINGER_RESET = struct.pack("ii", 1, 0)  # l_onoff=1, l_linger=0: close() sends RST
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)  # Linux's value


class HttpResponse:
    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def json(self) -> Any:
        return json.loads(self.body)


def _parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    return status, headers


async def _connect(
    host: str, port: int, receive_buffer: int | None, source_address: str | None = None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    if receive_buffer is None and source_address is None:
        return await asyncio.open_connection(host, port)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        if receive_buffer is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        if source_address is not None:
            sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
            sock.bind((source_address, 0))
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (host, port))
    except BaseException:
        sock.close()
        raise
    return await asyncio.open_connection(sock=sock)


class ChunkedDecoder:
    """Incremental decoder of an HTTP/1.1 chunked body (how uvicorn sends an endless stream)."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._left = 0  # bytes of the current chunk still to come
        self._crlf_due = False  # the CRLF that ends a chunk's data
        self.finished = False  # the zero-length last chunk arrived

    def feed(self, data: bytes) -> bytes:
        """The body bytes completed by ``data``."""
        buffer = self._buffer
        buffer += data
        out = bytearray()
        while buffer and not self.finished:
            if self._left:
                take = min(self._left, len(buffer))
                out += buffer[:take]
                del buffer[:take]
                self._left -= take
                self._crlf_due = self._left == 0
            elif self._crlf_due:
                if len(buffer) < 2:
                    break
                del buffer[:2]
                self._crlf_due = False
            else:
                end = buffer.find(b"\r\n")
                if end == -1:
                    break
                size = int(bytes(buffer[:end]).split(b";", 1)[0], 16)
                del buffer[: end + 2]
                self._left = size
                self.finished = size == 0
        return bytes(out)


class LengthDecoder:
    """A body of ``Content-Length`` bytes (a short answer such as a deferral), fed as it comes."""

    def __init__(self, length: int) -> None:
        self._left = length
        self.finished = length == 0

    def feed(self, data: bytes) -> bytes:
        out = data[: self._left]
        self._left -= len(out)
        self.finished = self._left == 0
        return out


class SseSocket:
    """One ``GET`` of an event stream on its own socket; the body is read as raw bytes."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        status: int,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.status = status
        self.headers = headers or {}  # the response head's, names lower-cased
        self.received = bytearray()  # raw bytes after the response head (chunk framing kept)
        length = self.headers.get("content-length")
        self.body: ChunkedDecoder | LengthDecoder = (
            ChunkedDecoder() if length is None else LengthDecoder(int(length))
        )
        self.parser = SSEParser()
        self.ended = False
        self.reset_by_server = False  # the stream ended with RST (an overflow or idle abort)

    async def read_until(self, marker: bytes, timeout: float = 10.0) -> None:
        """Read the body until ``marker`` has arrived (raises ``EOFError`` at end of stream)."""
        async with asyncio.timeout(timeout):
            while marker not in self.received:
                chunk = await self.reader.read(READ_CHUNK)
                if not chunk:
                    raise EOFError(f"stream ended before {marker!r}")
                self.received += chunk

    async def next_messages(self, timeout: float = 10.0) -> list[SSEMessage]:
        """Read once and parse: the SSE messages completed (maybe none); ``EOFError`` at end,
        clean or reset (then ``reset_by_server`` is set)."""
        try:
            async with asyncio.timeout(timeout):
                chunk = await self.reader.read(READ_CHUNK)
        except ConnectionResetError:
            self.ended = self.reset_by_server = True
            raise EOFError("stream reset by the server") from None
        if not chunk:
            self.ended = True
            raise EOFError("stream ended")
        return self.parser.feed(self.body.feed(chunk))

    async def close(self) -> None:
        """Orderly close: FIN, as a browser tab that is closed."""
        self.writer.close()
        # The server may already have gone; the FIN is what matters.
        with contextlib.suppress(ConnectionError, OSError):
            await self.writer.wait_closed()

    def reset(self) -> None:
        """Abrupt close: RST, unsent and unread bytes discarded."""
        sock = self.writer.get_extra_info("socket")
        # Already closed (the server reset it first): nothing left to reset.
        if sock is not None and sock.fileno() != -1:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)
        self.writer.transport.abort()


async def open_sse(
    host: str,
    port: int,
    path: str,
    *,
    last_event_id: str | None = None,
    receive_buffer: int | None = None,
    timeout: float = 10.0,
    headers: dict[str, str] | None = None,
    source_address: str | None = None,
) -> SseSocket:
    """Open a stream and read its response head; the body is left for the caller."""
    reader, writer = await _connect(host, port, receive_buffer, source_address)
    try:
        extra = f"Last-Event-ID: {last_event_id}\r\n" if last_event_id is not None else ""
        extra += "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
        request = (
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
            f"Accept: text/event-stream\r\n{extra}\r\n"
        )
        writer.write(request.encode("ascii"))
        async with asyncio.timeout(timeout):
            head = await reader.readuntil(HEADER_END)
    except BaseException:
        writer.transport.abort()
        raise
    status, response_headers = _parse_head(head[: -len(HEADER_END)])
    return SseSocket(reader, writer, status, response_headers)


class KeepAliveClient:
    """Requests one after another over one kept-alive connection."""

    def __init__(self, host: str, port: int, headers: dict[str, str] | None = None) -> None:
        self.host = host
        self.port = port
        self.headers = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def request(
        self,
        method: str,
        path: str,
        body: bytes = b"",
        content_type: str = "application/json",
        timeout: float = 10.0,
    ) -> HttpResponse:
        async with asyncio.timeout(timeout):
            for attempt in (1, 2):
                if self._writer is None:
                    self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
                assert self._reader is not None
                head = (
                    f"{method} {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                    f"{self.headers}Content-Type: {content_type}\r\n"
                    f"Content-Length: {len(body)}\r\n\r\n"
                ).encode("ascii")
                self._writer.write(head + body)
                try:
                    raw_head = await self._reader.readuntil(HEADER_END)
                except (asyncio.IncompleteReadError, ConnectionError):
                    # The server closed an idle kept-alive connection: reconnect once.
                    await self.aclose()
                    if attempt == 2:
                        raise
                    continue
                status, headers = _parse_head(raw_head[: -len(HEADER_END)])
                length = int(headers.get("content-length", "0"))
                payload = await self._reader.readexactly(length) if length else b""
                if headers.get("connection", "").lower() == "close":
                    await self.aclose()
                return HttpResponse(status, headers, payload)
        raise AssertionError("unreachable")

    async def get_json(self, path: str) -> Any:
        response = await self.request("GET", path)
        assert response.status == 200, (path, response.status, response.body[:200])
        return response.json()

    async def post_json(self, path: str, document: object) -> HttpResponse:
        return await self.request("POST", path, json.dumps(document).encode())

    async def post_text(self, path: str, text: bytes) -> HttpResponse:
        return await self.request("POST", path, text, content_type="text/plain")

    async def aclose(self) -> None:
        writer, self._reader, self._writer = self._writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()
