"""A stream's kernel buffers: capped at open, aborted on overflow and idleness.

Real sockets throughout. The helpers run on loopback connections made here;
the stalled-client tests run against real servers (``python -m app`` and the
gunicorn worker), whose clients set a 4 KB receive buffer and never read, and
measure TCP memory while those sockets are still open: the buffers of the
server port's connections, both ends (``ss``; exact on a shared machine), and
the namespace's total (``/proc/net/sockstat``), printed beside it. Without the cap
and the abort, each stalled stream held the kernel's autotuned send buffer, about
3.9 MB, for as long as the client stayed.
"""

from __future__ import annotations

import asyncio
import collections
import signal
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any, cast

import pytest
import uvloop

from app.sse.connection import BEHIND_UNSENT_BYTES, CloseReason, Connection, QueueBudget
from app.sse.stream_socket import (
    LINGER_ABORT,
    TRANSPORT_EXTENSION,
    abort_transport,
    kernel_unsent_bytes,
    prepare_stream_transport,
    stream_transport,
)
from tests.conftest import FAST_TIMERS
from tests.leak.raw_http import KeepAliveClient, SseSocket, open_sse
from tests.serving.test_gunicorn import gunicorn
from tests.support.logs import capture_logs
from tests.support.server import ServerProcess
from tests.support.tcp_memory import SS, port_tcp_memory, sockstat_tcp_memory
from tests.support.waiting import wait_until

HOST = "127.0.0.1"
KB = 1024
STALLED_STREAMS = 40
SMALL_RECEIVE_BUFFER = 4 * KB
EVENT_BYTES = 1000
QUEUE_SIZE = 16
MAX_EVENTS = 2000  # ~250 overflow a stalled stream with the defaults; 4,000+ without the cap
SAMPLE_EVERY = 10
MAX_TCP_GROWTH_PER_STREAM = 200 * KB


# --- the helpers on loopback sockets ---------------------------------------------------


def send_buffer(transport: asyncio.Transport) -> int:
    sock = transport.get_extra_info("socket")
    return int(sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF))


async def test_prepare_caps_the_send_buffer_and_the_transport_buffer(
    loopback: tuple[asyncio.Transport, socket.socket],
) -> None:
    transport, _ = loopback
    prepare_stream_transport(transport, send_buffer_kb=32, transport_buffer_kb=48)
    assert send_buffer(transport) == 2 * 32 * KB  # Linux doubles it for its bookkeeping
    assert transport.get_write_buffer_limits() == (48 * KB // 4, 48 * KB)


async def test_zero_keeps_the_kernels_autotuning(
    loopback: tuple[asyncio.Transport, socket.socket],
) -> None:
    transport, _ = loopback
    before = send_buffer(transport)
    prepare_stream_transport(transport, send_buffer_kb=0, transport_buffer_kb=64)
    assert send_buffer(transport) == before
    # Autotuning then grows it past any cap while the peer does not read.
    transport.write(b"x" * (8 * 1024 * KB))
    await asyncio.sleep(0.3)
    assert send_buffer(transport) > 2 * 64 * KB


async def test_abort_resets_and_frees_what_the_kernel_held(
    loopback: tuple[asyncio.Transport, socket.socket],
) -> None:
    transport, client = loopback
    prepare_stream_transport(transport, send_buffer_kb=64, transport_buffer_kb=64)
    transport.write(b"x" * (1024 * KB))  # far more than fits: kernel and transport full
    await asyncio.sleep(0.2)
    assert transport.get_write_buffer_size() > 0
    abort_transport(transport)
    assert transport.is_closing()
    loop = asyncio.get_running_loop()
    with pytest.raises(ConnectionResetError):  # RST, not FIN: nothing unsent is delivered
        async with asyncio.timeout(5):
            while await loop.sock_recv(client, 64 * KB):
                pass


def test_a_scope_without_the_extension_has_no_transport() -> None:
    with capture_logs("herald.sse") as records:
        assert stream_transport({"type": "http"}) is None
        assert stream_transport({"type": "http", "extensions": {}}) is None
    marker = object()
    assert stream_transport({"extensions": {TRANSPORT_EXTENSION: marker}}) is marker
    # Said at most once per process, not once per stream.
    assert len([r for r in records if "no transport in the ASGI scope" in r.getMessage()]) <= 1


# --- stalled clients against real servers ----------------------------------------------


STALL_ENV = {"SSE_QUEUE_SIZE": str(QUEUE_SIZE)}
SERVE_WAYS: dict[str, Callable[[], ServerProcess]] = {
    "python -m app": lambda: ServerProcess({**FAST_TIMERS, **STALL_ENV}).start(),
    "gunicorn worker": lambda: gunicorn({**STALL_ENV, "WEB_CONCURRENCY": "1"}),
}


@pytest.fixture(params=list(SERVE_WAYS))
def stall_server(request: pytest.FixtureRequest) -> Iterator[ServerProcess]:
    server = SERVE_WAYS[request.param]()
    yield server
    server.close()


async def open_connections(publisher: KeepAliveClient) -> int:
    health: dict[str, Any] = await publisher.get_json("/health")
    return int(health["connections"])


async def ends_with_reset(stream: SseSocket) -> bool:
    """Read what is left: True if the server reset the connection, False on a clean end."""
    try:
        async with asyncio.timeout(10):
            while await stream.reader.read(64 * KB):
                pass
    except ConnectionResetError:
        return True
    return False


def close_reasons(server: ServerProcess) -> collections.Counter[str]:
    return collections.Counter(
        line.split("reason=", 1)[1].split()[0]
        for line in server.logs().splitlines()
        if "stream closed: reason=" in line
    )


@pytest.mark.integration
async def test_stalled_streams_are_cut_holding_little_kernel_memory(
    stall_server: ServerProcess,
) -> None:
    server = stall_server
    publisher = KeepAliveClient(HOST, server.port)

    def tcp_memory() -> tuple[int, int]:
        """(this port's connections, the namespace), in bytes; the first is sockstat's
        without ss."""
        total = sockstat_tcp_memory()
        return (port_tcp_memory(server.port) if SS else total), total

    before, before_total = tcp_memory()
    stalled = [
        await open_sse(HOST, server.port, "/events/stall", receive_buffer=SMALL_RECEIVE_BUFFER)
        for _ in range(STALLED_STREAMS)
    ]
    try:
        assert all(stream.status == 200 for stream in stalled)
        while await open_connections(publisher) < STALLED_STREAMS:  # noqa: ASYNC110
            await asyncio.sleep(0.02)
        peak = peak_total = 0
        published = 0
        body = b"x" * EVENT_BYTES
        started = time.monotonic()
        while published < MAX_EVENTS:
            response = await publisher.post_text("/events/stall", body)
            assert response.status == 202, response.body
            published += 1
            if published % SAMPLE_EVERY == 0:
                port, total = tcp_memory()
                peak, peak_total = max(peak, port - before), max(peak_total, total - before_total)
                if await open_connections(publisher) == 0:
                    break
        await asyncio.sleep(0.5)  # the last aborts' RSTs
        port, total = tcp_memory()  # the stalled sockets are still open here
        after_cut = port - before
        peak, peak_total = max(peak, after_cut), max(peak_total, total - before_total)
        resets = [await ends_with_reset(stream) for stream in stalled]
        remaining = await open_connections(publisher)
    finally:
        for stream in stalled:
            stream.reset()
        await publisher.aclose()

    print(
        f"\n{STALLED_STREAMS} stalled streams ({SMALL_RECEIVE_BUFFER // KB} KB receive buffer),"
        f" {published} events of {EVENT_BYTES} B in {time.monotonic() - started:.1f} s:"
        f" TCP memory growth of the port's connections: peak {peak / STALLED_STREAMS / KB:.0f}"
        f" KB per stream, after the cut {after_cut / STALLED_STREAMS / KB:.0f} KB"
        f" ({'ss' if SS else 'sockstat'}); namespace (sockstat) peak"
        f" {peak_total / STALLED_STREAMS / KB:.0f} KB per stream; reset {sum(resets)}"
    )
    assert remaining == 0
    assert close_reasons(server)["overflow"] == STALLED_STREAMS
    assert all(resets), "an overflow close must reset the connection, not end it gracefully"
    assert peak <= MAX_TCP_GROWTH_PER_STREAM * STALLED_STREAMS


@pytest.mark.integration
async def test_an_idle_close_resets_a_client_that_stopped_reading(
    server_factory: Callable[..., ServerProcess],
) -> None:
    server = server_factory(SSE_IDLE_TIMEOUT_SECONDS="1")
    stalled = await open_sse(HOST, server.port, "/events/quiet", receive_buffer=4 * KB)
    try:
        assert stalled.status == 200
        await asyncio.sleep(1.5)  # heartbeats pile up unread; then the reaper closes it
        assert await ends_with_reset(stalled)
    finally:
        stalled.reset()
    assert close_reasons(server)["idle"] == 1


@pytest.mark.integration
async def test_shutdown_still_ends_streams_gracefully(
    server_factory: Callable[..., ServerProcess],
) -> None:
    server = server_factory()
    stream = await open_sse(HOST, server.port, "/events/leaving")
    try:
        await stream.read_until(b"retry:")
        server.signal(signal.SIGTERM)
        while not stream.body.finished:
            try:
                await stream.next_messages(timeout=10)
            except EOFError:
                break
        # No reset: the body ended with its last chunk (the jittered retry: before it).
        assert stream.body.finished
    finally:
        await stream.close()
    assert server.process is not None
    server.process.wait(10)  # its log is complete once it has exited
    assert close_reasons(server)["shutdown"] == 1


async def test_unsent_bytes_are_what_the_peer_has_not_taken(
    loopback: tuple[asyncio.Transport, socket.socket],
) -> None:
    transport, _ = loopback
    prepare_stream_transport(transport, send_buffer_kb=64, transport_buffer_kb=64)
    assert kernel_unsent_bytes(transport) == 0
    transport.write(b"x" * (1024 * KB))  # the peer reads nothing
    await asyncio.sleep(0.2)
    unsent = kernel_unsent_bytes(transport)
    assert 32 * KB < unsent <= 2 * 64 * KB
    abort_transport(transport)
    await asyncio.sleep(0.05)  # the transport closes its socket on the next loop turn
    assert kernel_unsent_bytes(transport) == 0  # reset: nothing left queued, or no socket


def test_a_client_gone_before_the_stream_opens_is_no_error() -> None:
    # uvloop refuses to touch a closed transport; the caps are best effort.
    async def opened_then_closed() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(asyncio.Protocol, HOST, 0)
        port = server.sockets[0].getsockname()[1]
        transport, _ = await loop.create_connection(asyncio.Protocol, HOST, port)
        transport.close()
        await asyncio.sleep(0)
        prepare_stream_transport(transport, send_buffer_kb=64, transport_buffer_kb=64)
        server.close()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(opened_then_closed())


def test_aborting_a_stream_whose_client_reset_first_is_no_error() -> None:
    # An overflow found during the hub's fan-out aborts the stream there, and its client
    # may have reset the connection first: uvloop then hands out a socket whose descriptor
    # is -1. An exception here would escape into the broker's reader running the fan-out.
    async def reset_then_aborted() -> None:
        loop = asyncio.get_running_loop()
        accepted: asyncio.Future[asyncio.Transport] = loop.create_future()

        class Accept(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                accepted.set_result(cast(asyncio.Transport, transport))

        server = await loop.create_server(Accept, HOST, 0)
        try:
            port = server.sockets[0].getsockname()[1]
            client = socket.create_connection((HOST, port))
            transport = await accepted
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_ABORT)
            client.close()  # RST
            await wait_until(
                lambda: transport.get_extra_info("socket").fileno() == -1,
                what="uvloop to close the transport after the reset",
            )
            abort_transport(transport)
        finally:
            server.close()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(reset_then_aborted())


@pytest.mark.integration
async def test_shutdown_resets_a_client_that_stopped_reading_and_the_worker_exits() -> None:
    # A graceful end would wait behind bytes the client never takes, and the worker would
    # hold its memory until gunicorn's graceful timeout (25 s) while its successor boots.
    server = gunicorn({"SSE_QUEUE_SIZE": "1000", "WEB_CONCURRENCY": "1"})
    publisher = KeepAliveClient(HOST, server.port)
    stalled = await open_sse(HOST, server.port, "/events/full", receive_buffer=SMALL_RECEIVE_BUFFER)
    reader = await open_sse(HOST, server.port, "/events/quiet")
    try:
        while await open_connections(publisher) < 2:  # noqa: ASYNC110
            await asyncio.sleep(0.02)
        body = b"x" * 4000
        for _ in range(200):  # 800 KB: past the socket's and the transport's caps
            response = await publisher.post_text("/events/full", body)
            assert response.status == 202, response.body
        await reader.read_until(b"retry:")
        await publisher.aclose()
        assert server.process is not None
        stopping = time.monotonic()
        server.signal(signal.SIGTERM)
        while "shutdown: closing 2 open streams" not in server.logs():  # noqa: ASYNC110
            await asyncio.sleep(0.02)
        assert await ends_with_reset(stalled), "a stalled stream must be reset at shutdown"
        while not reader.body.finished:
            try:
                await reader.next_messages(timeout=10)
            except EOFError:
                break
        assert reader.body.finished, "a reading stream still ends with its last chunk"
        server.process.wait(10)
        exited_after = time.monotonic() - stopping
        reasons = close_reasons(server)
    finally:
        stalled.reset()
        await reader.close()
        server.close()
    print(f"\nSIGTERM to exit with a stalled stream: {exited_after:.2f} s")
    assert exited_after < 10
    assert reasons["shutdown"] == 2


# --- which closes end gracefully ----------------------------------------------------------


async def closed_with_reset(client: socket.socket) -> bool:
    """Drain the client end: True if the server's close was a reset."""
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(5):
            while await loop.sock_recv(client, 64 * KB):
                pass
    except ConnectionResetError:
        return True
    return False


@pytest.mark.parametrize(
    ("written", "reset"),
    [
        (0, False),  # nothing unsent: the farewell goes out and the body ends
        (BEHIND_UNSENT_BYTES // 2, False),  # a frame or two in flight
        (4 * BEHIND_UNSENT_BYTES, True),  # queued in the kernel, the transport empty
        (2048 * KB, True),  # the transport's buffer too
    ],
)
async def test_a_graceful_close_resets_a_client_that_is_behind(
    loopback: tuple[asyncio.Transport, socket.socket], written: int, reset: bool
) -> None:
    transport, client = loopback
    prepare_stream_transport(transport, send_buffer_kb=256, transport_buffer_kb=64)
    connection = Connection(
        ("c",), maxsize=10, drop_oldest=False, budget=QueueBudget(1 << 30), now=0.0
    )
    connection.transport = transport
    if written:
        transport.write(b"x" * written)
        await asyncio.sleep(0.05)  # what the kernel takes, it takes now
    unsent = kernel_unsent_bytes(transport)
    connection.close(CloseReason.SHUTDOWN)
    if not transport.is_closing():
        transport.close()  # what uvicorn does once the stream's body has ended
    assert await closed_with_reset(client) is reset, (written, unsent)
