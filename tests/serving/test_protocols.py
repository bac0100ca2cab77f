"""Herald's HTTP protocols against real uvicorn servers: each request's scope carries the
transport of the connection it came on, under both parsers (httptools and h11), and the
direct chunk path is offered exactly where its bytes are uvicorn's."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from app.memory.pressure import WRITE_PAUSES
from app.serving.protocols import (
    HeraldH11Protocol,
    HeraldHttpProtocol,
    HeraldHttpToolsProtocol,
    _HeadHoldingTransport,
)
from app.serving.worker import HeraldWorker
from app.sse.chunked_write import DetachedBody, body_detacher, chunked_body_flow, frame_chunk
from app.sse.stream_socket import TRANSPORT_EXTENSION
from tests.leak.raw_http import KeepAliveClient
from tests.support.server import free_port

HOST = "127.0.0.1"


def address(pair: tuple[str, int]) -> str:
    host, port = pair
    return f"{host}:{port}"


class PeerReporter:
    """An ASGI app answering with the peer of the transport its scope carries (or none)."""

    def __init__(self) -> None:
        self.transports: list[Any] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        transport = scope.get("extensions", {}).get(TRANSPORT_EXTENSION)
        self.transports.append(transport)
        peer = "none" if transport is None else address(transport.get_extra_info("peername"))
        body = peer.encode()
        headers = [(b"content-type", b"text/plain"), (b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})


@contextlib.asynccontextmanager
async def serving(app: Any, http: type[asyncio.Protocol]) -> AsyncIterator[int]:
    port = free_port()
    config = uvicorn.Config(app, host=HOST, port=port, http=http, lifespan="off", log_level="error")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:  # noqa: ASYNC110 - uvicorn offers no event for it
            await asyncio.sleep(0.01)
        yield port
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)


@pytest.mark.parametrize("http", [HeraldHttpToolsProtocol, HeraldH11Protocol])
async def test_every_request_sees_its_own_connections_transport(
    http: type[asyncio.Protocol],
) -> None:
    app = PeerReporter()
    async with serving(app, http) as port:
        first, second = KeepAliveClient(HOST, port), KeepAliveClient(HOST, port)
        try:
            answers = []
            for client in (first, second, first):  # the first connection is kept alive
                response = await client.request("GET", "/")
                answers.append(response.body.decode())
            assert first._writer is not None and second._writer is not None
            mine = [address(c._writer.get_extra_info("sockname")) for c in (first, second)]
        finally:
            await first.aclose()
            await second.aclose()
    assert answers == [mine[0], mine[1], mine[0]]
    assert app.transports[0] is app.transports[2] is not app.transports[1]


@pytest.mark.parametrize("http", [HttpToolsProtocol, H11Protocol])
async def test_uvicorns_own_protocols_carry_no_transport(http: type[asyncio.Protocol]) -> None:
    # What Herald meets under a plain `uvicorn app.main:app`: the stream keeps the defaults.
    app = PeerReporter()
    async with serving(app, http) as port:
        client = KeepAliveClient(HOST, port)
        try:
            assert (await client.request("GET", "/")).body == b"none"
        finally:
            await client.aclose()


def test_both_ways_of_serving_use_herald_protocol() -> None:
    assert HeraldHttpProtocol is HeraldHttpToolsProtocol  # httptools is installed here
    assert HeraldWorker.CONFIG_KWARGS["http"] is HeraldHttpProtocol
    # python -m app passes it to uvicorn.run: the stalled-stream tests
    # (tests/sse/test_stream_socket.py) fail on a server without the transport.


class ChunkedBodyReporter:
    """An ASGI app that answers three body chunks, writing the middle one straight to the
    transport when the server offers the direct path (else through send), and records
    whether it was offered before and after its headers went out."""

    def __init__(self, *, content_length: bool = False) -> None:
        self.content_length = content_length
        self.offered: list[tuple[bool, bool]] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        before = chunked_body_flow(scope) is not None
        headers = [(b"content-type", b"text/event-stream")]
        if self.content_length:
            headers.append((b"content-length", b"9"))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        flow = chunked_body_flow(scope)
        self.offered.append((before, flow is not None))
        await send({"type": "http.response.body", "body": b"one", "more_body": True})
        if flow is not None and not flow.write_paused:
            scope["extensions"][TRANSPORT_EXTENSION].write(frame_chunk(b"two"))
        else:
            await send({"type": "http.response.body", "body": b"two", "more_body": True})
        await send({"type": "http.response.body", "body": b"six", "more_body": False})


async def raw_response(port: int, version: str = "1.1") -> bytes:
    reader, writer = await asyncio.open_connection(HOST, port)
    writer.write(f"GET / HTTP/{version}\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    async with asyncio.timeout(5):
        data = await reader.read()
    writer.close()
    return data.partition(b"\r\n\r\n")[2]


@pytest.mark.parametrize(
    ("http", "version", "content_length", "offered"),
    [
        (HeraldHttpToolsProtocol, "1.1", False, True),
        (HeraldHttpToolsProtocol, "1.0", False, False),  # HTTP/1.0: the ASGI path
        (HeraldHttpToolsProtocol, "1.1", True, False),  # not a chunked body
        (HeraldH11Protocol, "1.1", False, False),  # h11 frames the body itself
        (HttpToolsProtocol, "1.1", False, False),  # plain uvicorn: no extension
    ],
)
async def test_direct_chunks_are_offered_only_where_they_are_uvicorns_bytes(
    http: type[asyncio.Protocol], version: str, content_length: bool, offered: bool
) -> None:
    app = ChunkedBodyReporter(content_length=content_length)
    async with serving(app, http) as port:
        body = await raw_response(port, version)
    assert app.offered == [(False, offered)]  # never before the headers are out
    if content_length:
        assert body == b"onetwosix"
    else:  # uvicorn chunks HTTP/1.0 bodies too; the direct chunk looks the same as its own
        assert body == b"3\r\none\r\n3\r\ntwo\r\n3\r\nsix\r\n0\r\n\r\n"


# --- one send() per small response (design note 5) --------------------------------------


class RecordingTransport:
    """Records what reaches the connection's transport, call by call."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[bytes, ...]]] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.calls.append(("write", (data,)))

    def writelines(self, parts: tuple[bytes, ...]) -> None:
        self.calls.append(("writelines", tuple(parts)))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True


SIZED_HEAD = b"HTTP/1.1 202 Accepted\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n"
CHUNKED_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
)


def test_a_sized_head_and_its_body_leave_in_one_call_and_later_writes_pass_straight() -> None:
    transport = RecordingTransport()
    cycle_transport = _HeadHoldingTransport(transport)  # type: ignore[arg-type]
    cycle_transport.write(SIZED_HEAD)
    assert transport.calls == []  # held for the body
    cycle_transport.write(b"{}")
    cycle_transport.write(b"more")
    assert transport.calls == [("writelines", (SIZED_HEAD, b"{}")), ("write", (b"more",))]


@pytest.mark.parametrize("first", [CHUNKED_HEAD, b"HTTP/1.1 100 Continue\r\n\r\n"])
def test_a_head_whose_body_may_be_long_in_coming_is_written_at_once(first: bytes) -> None:
    transport = RecordingTransport()
    cycle_transport = _HeadHoldingTransport(transport)  # type: ignore[arg-type]
    cycle_transport.write(first)
    assert transport.calls == [("write", (first,))]


def test_a_close_never_loses_a_held_head() -> None:
    transport = RecordingTransport()
    cycle_transport = _HeadHoldingTransport(transport)  # type: ignore[arg-type]
    cycle_transport.write(SIZED_HEAD)
    cycle_transport.close()
    assert transport.calls == [("write", (SIZED_HEAD,))] and transport.closed


async def test_a_streams_head_reaches_the_client_before_its_first_event() -> None:
    body_sent = asyncio.Event()

    async def slow_stream(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        headers = [(b"content-type", b"text/event-stream")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await asyncio.sleep(2)  # a stream waiting for its first event
        await send({"type": "http.response.body", "body": b"data: x\n\n", "more_body": False})
        body_sent.set()

    async with serving(slow_stream, HeraldHttpToolsProtocol) as port:
        reader, writer = await asyncio.open_connection(HOST, port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        async with asyncio.timeout(1):  # well before the body, two seconds away
            head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200") and not body_sent.is_set()
        writer.close()


class Flood:
    """Streams chunks to a client until told to stop; its transport's buffer is kept small."""

    def __init__(self) -> None:
        self.stop = asyncio.Event()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        scope["extensions"][TRANSPORT_EXTENSION].set_write_buffer_limits(high=16 * 1024)
        headers = [(b"content-type", b"text/event-stream")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        while not self.stop.is_set():
            body = {"type": "http.response.body", "body": b"x" * 65_536, "more_body": True}
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(send(body), 0.2)


@pytest.mark.parametrize("http", [HeraldHttpToolsProtocol, HeraldH11Protocol])
async def test_a_client_that_stops_reading_is_told_to_the_memory_guard(
    http: type[asyncio.Protocol],
) -> None:
    app = Flood()
    paused = asyncio.Event()
    listener, WRITE_PAUSES.listener = WRITE_PAUSES.listener, paused.set
    async with serving(app, http) as port:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect((HOST, port))
        try:
            sock.sendall(f"GET /flood HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
            async with asyncio.timeout(10):  # the client reads nothing: the transport pauses
                await paused.wait()
        finally:
            app.stop.set()
            sock.close()
            WRITE_PAUSES.listener = listener


# --- detached bodies (design note 6) -------------------------------------------------------


class RecordingOwner:
    """A detached body's owner that records what the protocol tells it; asked to shut
    down, it ends the body as a stream does."""

    def __init__(self) -> None:
        self.told: list[str] = []
        self.body: DetachedBody | None = None

    def body_lost(self) -> None:
        self.told.append("lost")

    def body_writable(self) -> None:
        self.told.append("writable")

    def body_shutdown(self) -> None:
        self.told.append("shutdown")
        assert self.body is not None
        self.body.end(b"0\r\n\r\n")


class Detaching:
    """Sends a stream's head and first chunk, takes the body off the ASGI path if offered,
    and returns."""

    def __init__(self) -> None:
        self.owner = RecordingOwner()
        self.offered: list[bool] = []
        self.transport: Any = None
        self.returned = False

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        self.transport = scope["extensions"][TRANSPORT_EXTENSION]
        headers = [(b"content-type", b"text/event-stream")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"one", "more_body": True})
        detacher = body_detacher(scope)
        self.owner.body = None if detacher is None else detacher(self.owner)
        self.offered.append(self.owner.body is not None)
        self.returned = True


@contextlib.asynccontextmanager
async def server_of(app: Any, http: type[asyncio.Protocol]) -> AsyncIterator[uvicorn.Server]:
    config = uvicorn.Config(
        app, host=HOST, port=free_port(), http=http, lifespan="off", log_level="error"
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:  # noqa: ASYNC110 - uvicorn offers no event for it
            await asyncio.sleep(0.01)
        yield server
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)


async def until(condition: Any, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():  # noqa: ASYNC110 - polling what the server does by itself
            await asyncio.sleep(0.01)


async def open_stream(
    server: uvicorn.Server, version: str = "1.1"
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection(HOST, server.config.port)
    writer.write(f"GET / HTTP/{version}\r\nHost: x\r\n\r\n".encode())
    async with asyncio.timeout(5):
        await reader.readuntil(b"\r\n\r\n")
        assert await reader.readexactly(8) == b"3\r\none\r\n"
    return reader, writer


async def test_a_detached_body_outlives_its_asgi_call_and_ends_with_its_last_chunk() -> None:
    app = Detaching()
    async with server_of(app, HeraldHttpToolsProtocol) as server:
        reader, writer = await open_stream(server)
        await until(lambda: app.returned)
        assert app.offered == [True]
        # The protocol's place is the detached stream's.
        held: set[object] = set(server.server_state.connections)
        assert held == {app.owner.body}
        assert server.server_state.total_requests == 0  # not complete yet
        app.transport.write(frame_chunk(b"two"))  # the owner writes on after the app returned
        assert app.owner.body is not None
        app.owner.body.end(b"0\r\n\r\n")
        async with asyncio.timeout(5):
            assert await reader.read() == b"3\r\ntwo\r\n0\r\n\r\n"  # then the server closes
        assert server.server_state.total_requests == 1
        await until(lambda: not server.server_state.connections)
        assert app.owner.told == []
        writer.close()


async def test_a_client_leaving_a_detached_body_tells_its_owner_once() -> None:
    app = Detaching()
    async with server_of(app, HeraldHttpToolsProtocol) as server:
        _, writer = await open_stream(server)
        await until(lambda: app.returned)
        writer.close()
        await until(lambda: not server.server_state.connections)
        await asyncio.sleep(0.05)  # a second notice, if any, would come right after the first
        assert app.owner.told == ["lost"]


async def test_bytes_sent_on_a_detached_connection_are_discarded() -> None:
    app = Detaching()
    async with server_of(app, HeraldHttpToolsProtocol) as server:
        reader, writer = await open_stream(server)
        await until(lambda: app.returned)
        writer.write(b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n")  # never answered
        await writer.drain()
        app.transport.write(frame_chunk(b"two"))
        async with asyncio.timeout(5):
            assert await reader.readexactly(8) == b"3\r\ntwo\r\n"
        assert app.offered == [True] and app.owner.told == []
        writer.close()
        await until(lambda: app.owner.told == ["lost"])


async def test_graceful_shutdown_asks_the_owner_to_end_its_body() -> None:
    app = Detaching()
    async with server_of(app, HeraldHttpToolsProtocol) as server:
        reader, writer = await open_stream(server)
        await until(lambda: app.returned)
    # The server exited: it asked the owner, which ended the body, and it waited for that.
    assert app.owner.told == ["shutdown"]
    async with asyncio.timeout(5):
        assert await reader.read() == b"0\r\n\r\n"
    writer.close()


@pytest.mark.parametrize(
    ("http", "version"),
    [
        (HeraldHttpToolsProtocol, "1.0"),  # not a direct chunked body: the ASGI path
        (HeraldH11Protocol, "1.1"),  # h11 frames the body itself
    ],
)
async def test_a_body_is_not_detached_where_its_chunks_are_not_uvicorns(
    http: type[asyncio.Protocol], version: str
) -> None:
    app = Detaching()
    async with server_of(app, http) as server:
        _, writer = await open_stream(server, version)
        await until(lambda: app.returned)
        assert app.offered == [False]
        writer.close()
