"""Direct writes: the hub writes to a parked stream without waking its task, and a write
that must wait for the socket is finished by the stream's own task as if it had awaited it."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, MutableMapping
from typing import Any

import pytest

from app.sse.connection import (
    ALREADY_HAD,
    PING_CHUNK,
    QUEUED,
    WRITTEN,
    CloseReason,
    Connection,
    QueueBudget,
)
from app.sse.direct_write import resume, step
from app.wire.encoding import PING_FRAME
from tests.sse.test_connection import make_event

Message = MutableMapping[str, Any]


class FakeSend:
    """An ASGI send that finishes at once, or waits on a future while ``blocked``."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.blocked: asyncio.Future[None] | None = None
        self.finished_after_block = False

    async def __call__(self, message: Message) -> None:
        if self.blocked is not None:
            try:
                await self.blocked
            finally:
                self.finished_after_block = True
        self.bodies.append(message["body"])


async def parked(
    send: FakeSend, on_ready: Callable[[Connection], None] | None = None
) -> tuple[Connection, asyncio.Task[None]]:
    """A connection whose writer task is asleep in wait(), with direct writes on."""
    connection = Connection(
        ("c",),
        maxsize=10,
        drop_oldest=False,
        budget=QueueBudget(1 << 20),
        now=0.0,
        on_ready=on_ready,
    )
    connection.send = send
    writer = asyncio.create_task(connection.wait())
    await asyncio.sleep(0)
    return connection, writer


async def test_step_finishes_a_write_that_never_waits() -> None:
    send = FakeSend()
    assert step(send({"body": b"a"})) is None
    assert send.bodies == [b"a"]


async def test_a_held_write_is_finished_by_the_task_that_resumes_it() -> None:
    send = FakeSend()
    send.blocked = asyncio.get_running_loop().create_future()
    held = step(send({"body": b"late"}))
    assert held is not None and send.bodies == []
    finishing = asyncio.create_task(resume_and_return(held))
    await asyncio.sleep(0)
    assert not finishing.done()
    send.blocked.set_result(None)
    assert await finishing == "done"
    assert send.bodies == [b"late"]


async def resume_and_return(held: Any) -> str:
    await resume(held)
    return "done"


async def test_cancelling_the_resuming_task_cancels_the_write_itself() -> None:
    send = FakeSend()
    send.blocked = asyncio.get_running_loop().create_future()
    held = step(send({"body": b"never"}))
    assert held is not None
    finishing = asyncio.create_task(resume_and_return(held))
    await asyncio.sleep(0)
    finishing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await finishing
    assert send.finished_after_block  # the write's own cleanup ran
    assert send.blocked.cancelled()  # the future it waited on was cancelled, not leaked
    assert send.bodies == []


async def test_flush_writes_without_waking_the_parked_writer() -> None:
    send = FakeSend()
    scheduled: list[Connection] = []
    connection, writer = await parked(send, scheduled.append)
    connection.push(make_event(1, "a"))
    connection.push(make_event(2, "b"))
    assert scheduled == [connection]  # one flush per loop iteration, however many events
    connection.flush(5.0, {})
    assert b"".join(send.bodies) == make_event(1, "a").frame + make_event(2, "b").frame
    assert connection.delivered == 2 and connection.last_delivery == 5.0
    await asyncio.sleep(0)
    assert not writer.done()  # the writer task slept through it
    connection.close(CloseReason.SHUTDOWN)
    await writer


async def test_a_write_that_must_wait_is_handed_to_the_writer() -> None:
    send = FakeSend()
    send.blocked = asyncio.get_running_loop().create_future()
    connection, writer = await parked(send, lambda c: None)
    connection.push(make_event(1))
    connection.flush(1.0, {})
    assert connection.held_write is not None
    await writer  # woken to finish the held write
    send.blocked.set_result(None)
    await resume(connection.held_write)
    assert send.bodies == [make_event(1).frame]


async def test_without_direct_writes_a_push_wakes_the_writer() -> None:
    send = FakeSend()
    connection, writer = await parked(send, on_ready=None)
    connection.push(make_event(1))
    await writer
    assert send.bodies == []  # nothing written behind the writer's back


async def test_a_busy_writer_is_left_to_take_the_queue_itself() -> None:
    send = FakeSend()
    scheduled: list[Connection] = []
    connection, writer = await parked(send, scheduled.append)
    connection.close(CloseReason.IDLE)  # wakes the writer: it is no longer parked
    await writer
    connection.push(make_event(1))
    connection.flush(1.0, {})
    assert scheduled == [] and send.bodies == []


async def test_a_failing_write_closes_the_connection() -> None:
    async def broken_send(message: Message) -> None:
        raise OSError("transport closed")

    connection, writer = await parked(FakeSend(), lambda c: None)
    connection.send = broken_send
    connection.push(make_event(1))
    connection.flush(1.0, {})
    assert connection.close_reason is CloseReason.CLIENT_GONE
    await writer


# --- straight to the transport (app.sse.chunked_write), on real loopback sockets -------


class Flow:
    """The one field of uvicorn's FlowControl the direct path reads."""

    def __init__(self) -> None:
        self.write_paused = False


async def parked_on(
    transport: asyncio.Transport, send: FakeSend, *, paused: bool = False
) -> tuple[Connection, asyncio.Task[None]]:
    """A parked connection whose server offers the direct path on ``transport``."""
    connection, writer = await parked(send, lambda c: None)
    connection.transport, connection.flow = transport, Flow()
    connection.flow.write_paused = paused
    return connection, writer


async def read_exactly(client: socket.socket, size: int) -> bytes:
    loop = asyncio.get_running_loop()
    data = b""
    async with asyncio.timeout(5):
        while len(data) < size:
            more = await loop.sock_recv(client, size - len(data))
            assert more, "peer closed"
            data += more
    return data


async def test_a_flush_writes_the_chunk_straight_to_the_transport(
    loopback: tuple[asyncio.Transport, socket.socket],
) -> None:
    transport, client = loopback
    send = FakeSend()
    connection, writer = await parked_on(transport, send)
    connection.push(make_event(1, "a"))
    connection.push(make_event(2, "b"))
    connection.flush(3.0, {})
    body = make_event(1, "a").frame + make_event(2, "b").frame
    # Exactly what uvicorn writes for one body chunk; nothing went through send.
    expected = b"%x\r\n" % len(body) + body + b"\r\n"
    assert await read_exactly(client, len(expected)) == expected
    assert send.bodies == [] and connection.delivered == 2 and connection.last_delivery == 3.0
    assert not writer.done()
    connection.close(CloseReason.SHUTDOWN)
    await writer


async def test_streams_given_one_event_in_a_pass_share_its_chunk(
    loopback: tuple[asyncio.Transport, socket.socket],
) -> None:
    transport, client = loopback
    event = make_event(1, "shared")
    chunks: dict[bytes, bytes] = {}
    parked_pairs = [await parked_on(transport, FakeSend()) for _ in range(3)]
    for connection, _ in parked_pairs:
        connection.push(event)
        connection.flush(1.0, chunks)
    assert list(chunks) == [event.frame]  # framed once for the three streams
    expected = (b"%x\r\n" % len(event.frame) + event.frame + b"\r\n") * 3
    assert await read_exactly(client, len(expected)) == expected
    for connection, writer in parked_pairs:
        connection.close(CloseReason.SHUTDOWN)
        await writer


async def test_a_paused_transport_hands_the_write_back_to_send(
    loopback: tuple[asyncio.Transport, socket.socket],
) -> None:
    transport, _ = loopback
    send = FakeSend()
    send.blocked = asyncio.get_running_loop().create_future()  # uvicorn waits for the drain
    connection, writer = await parked_on(transport, send, paused=True)
    connection.push(make_event(1))
    connection.flush(1.0, {})
    assert transport.get_write_buffer_size() == 0  # nothing written past the pause
    assert connection.held_write is not None  # the writer finishes it once drained
    await writer
    send.blocked.set_result(None)
    await resume(connection.held_write)
    assert send.bodies == [make_event(1).frame]


async def test_a_closing_transport_leaves_the_write_to_send(
    loopback: tuple[asyncio.Transport, socket.socket],
) -> None:
    transport, _ = loopback
    send = FakeSend()  # uvicorn's send returns at once for a client that left
    connection, writer = await parked_on(transport, send)
    transport.close()
    connection.push(make_event(1))
    connection.flush(1.0, {})
    assert send.bodies == [make_event(1).frame] and connection.held_write is None
    connection.close(CloseReason.SHUTDOWN)
    await writer


# --- written inside the fan-out (Connection.push_now, hub design note 12) ---------------


async def live_on(
    transport: asyncio.Transport, *, paused: bool = False
) -> tuple[Connection, asyncio.Task[None], FakeSend]:
    send = FakeSend()
    connection, writer = await parked_on(transport, send, paused=paused)
    connection.go_live((0, 0))
    return connection, writer, send


def chunk_of(frame: bytes) -> bytes:
    return b"%x\r\n" % len(frame) + frame + b"\r\n"


async def test_push_now_writes_a_live_parked_stream_at_once(
    loopback: tuple[asyncio.Transport, socket.socket],
) -> None:
    transport, client = loopback
    connection, writer, send = await live_on(transport)
    event = make_event(1, "now")
    assert connection.push_now(event, chunk_of(event.frame), 7.0) == WRITTEN
    assert await read_exactly(client, len(chunk_of(event.frame))) == chunk_of(event.frame)
    assert connection.queued == 0 and not connection.flush_pending and event.refs == 0
    assert connection.delivered == 1 and connection.last_delivery == 7.0
    assert not writer.done() and send.bodies == []  # the writer slept through it
    # The cursor moved: the same event pushed again (a second channel, a pattern) is skipped.
    assert connection.push_now(event, chunk_of(event.frame), 8.0) == ALREADY_HAD
    assert connection.push(event) == ALREADY_HAD
    connection.close(CloseReason.SHUTDOWN)
    await writer


async def test_push_now_queues_behind_events_already_waiting(
    loopback: tuple[asyncio.Transport, socket.socket],
) -> None:
    transport, client = loopback
    connection, writer, _ = await live_on(transport)
    first, second = make_event(1, "a"), make_event(2, "b")
    assert connection.push(first) == QUEUED
    assert connection.push_now(second, chunk_of(second.frame), 1.0) == QUEUED
    assert transport.get_write_buffer_size() == 0 and connection.queued == 2
    connection.flush(2.0, {})  # the pass writes both, in order, in one chunk
    expected = chunk_of(first.frame + second.frame)
    assert await read_exactly(client, len(expected)) == expected
    connection.close(CloseReason.SHUTDOWN)
    await writer


@pytest.mark.parametrize("state", ["catching up", "paused", "closing", "writer awake"])
async def test_push_now_queues_when_the_stream_cannot_take_a_write_now(
    loopback: tuple[asyncio.Transport, socket.socket], state: str
) -> None:
    transport, _ = loopback
    connection, writer, send = await live_on(transport, paused=state == "paused")
    if state == "catching up":
        connection.cursor = None
    elif state == "closing":
        transport.close()
    elif state == "writer awake":
        # A ping while paused goes to the writer, which wakes and stays in its send.
        assert connection.flow is not None
        send.blocked = asyncio.get_running_loop().create_future()
        connection.flow.write_paused = True
        connection.request_ping(0.0)
        await asyncio.sleep(0)
        connection.flow.write_paused = False
    event = make_event(1)
    outcome = connection.push_now(event, chunk_of(event.frame), 1.0)
    assert outcome == QUEUED and connection.delivered == 0
    assert connection.queued == 1 or state == "writer awake"
    connection.close(CloseReason.SHUTDOWN)
    await writer


async def test_a_ping_is_written_to_a_live_parked_stream_at_once(
    loopback: tuple[asyncio.Transport, socket.socket],
) -> None:
    transport, client = loopback
    connection, writer, send = await live_on(transport)
    connection.request_ping(3.0)
    assert await read_exactly(client, len(PING_CHUNK)) == PING_CHUNK
    assert chunk_of(PING_FRAME) == PING_CHUNK
    assert not writer.done() and send.bodies == []  # the writer slept through it
    assert not connection.ping_due and connection.pinged_at == 3.0
    assert connection.delivered == 0 and connection.last_delivery == 0.0  # not an event
    connection.close(CloseReason.SHUTDOWN)
    await writer


async def test_a_ping_goes_through_the_writer_when_the_socket_is_paused(
    loopback: tuple[asyncio.Transport, socket.socket],
) -> None:
    transport, _ = loopback
    connection, writer, send = await live_on(transport, paused=True)
    connection.request_ping(3.0)
    # Nothing written past the flow control: the writer is woken to send it through
    # uvicorn's send, which waits for the drain.
    assert transport.get_write_buffer_size() == 0
    await asyncio.wait_for(writer, 1)
    assert connection.ping_due and connection.take() == (PING_FRAME, 0)
    assert connection.pinged_at == 3.0 and send.bodies == []
