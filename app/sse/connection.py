"""One open SSE stream: a bounded queue of shared events and the means to wake or close it.

Design decisions (read before changing):

1. The queue is a ``deque`` with an explicit cap plus one waiter future, not an
   ``asyncio.Queue``: the writer drains everything queued in one go (one socket
   write per batch instead of one per event), and an idle connection costs one
   small object rather than a queue with its getter/putter deques and an Event.
2. Queued items are references to the publisher's ``Event``; nothing is copied
   per subscriber. ``QueueBudget`` counts the distinct bytes queues keep alive,
   so a crowd of slow consumers cannot pin unbounded memory: over budget, any
   connection that is already behind is treated as overflowing.
3. Heartbeats are a flag set by the hub's single timer, not a task per
   connection, and they never count as delivery (a ping lands in the kernel's
   buffer even when the client is long gone, so it proves nothing).
4. Direct writes (see :mod:`app.sse.direct_write`): while the writer task is
   parked with nothing to do, a push does not wake it; the hub's flush pass
   (once per event-loop iteration, for every connection that got events)
   writes the queued batch itself: straight to the transport where the server
   allows it (:mod:`app.sse.chunked_write`), else through the stream's
   ``send``. Only a write that has to wait for the socket is handed to the
   writer task. Everything else — replay, heartbeats, closing, slow clients —
   stays with the task.
5. The cursor: the newest position queued or sent. ``None`` while the stream
   catches up (it queues everything live), then ``go_live(head)`` drops what the
   replay covered and each push skips an event at or below the cursor. Pushes
   come in id order (the broker contract), so one comparison per push makes
   delivery at most once per stream, however an event got here twice.
6. ``close()`` may come from anywhere (reaper, overflow, shutdown, client gone).
   It wakes the writer; if the writer is stuck in a socket write to a client
   that stopped reading, it cancels that write so the slot is freed now rather
   than whenever the kernel gives up. A close for overflow or idleness
   (``ABORTED_CLOSES``) also aborts the stream's transport, when it has one:
   RST, with what the transport and the kernel still hold discarded, so a
   client that stopped reading cannot keep a send buffer alive
   (:mod:`app.sse.stream_socket`). Other closes end the body gracefully,
   unless the client is behind: the transport still buffers bytes, or the
   kernel holds more than :data:`BEHIND_UNSENT_BYTES` it has not taken. Such a
   client would not see a farewell soon, while a graceful close keeps the
   transport's buffer alive until it drains (a draining worker cannot exit) and
   leaves the kernel an orphaned socket holding its send queue, charged to the
   box, until the client reads or the kernel gives up. Such a close aborts too;
   the client resumes with its last id.
7. Detached (:meth:`Connection.detach`, :mod:`app.sse.chunked_write` design
   note 5): once a live stream's body belongs to the server's protocol, the
   connection is the stream. No writer task, no ``send``: events, gaps and
   heartbeats go as direct chunk writes from the hub's pass (or the fan-out)
   whenever the transport is not paused; while it is they queue, under the
   same bounds, and the protocol's ``resume_writing`` (``body_writable``)
   schedules a pass that writes them in order. The protocol reports the
   client gone (``body_lost``) and the server shutting down
   (``body_shutdown``) as closes. A close ends the stream on the next loop
   iteration (``on_end``, the hub's): the closer may be iterating a set the end
   removes the stream from. The end writes the farewell (:func:`farewell`) and
   the body's last chunk through the detached body, which closes the
   connection, then aborts instead if the client is behind, as note 6 rules
   for any graceful close.
"""

from __future__ import annotations

import asyncio
import random
from collections import deque
from collections.abc import Awaitable, Callable, MutableMapping
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from app.sse.chunked_write import DetachedBody, WriteFlow, frame_chunk, last_chunks
from app.sse.direct_write import HeldWrite, step
from app.sse.stream_socket import abort_transport, kernel_unsent_bytes
from app.wire.encoding import PING_FRAME, encode_retry
from app.wire.event import Event
from app.wire.event_id import EventKey

if TYPE_CHECKING:
    from app.limits import StreamLease

__all__ = [
    "ABORTED_CLOSES",
    "ALREADY_CLOSED",
    "ALREADY_HAD",
    "BEHIND_UNSENT_BYTES",
    "DROPPED_OLDEST",
    "MAX_BATCH_BYTES",
    "OVERFLOWED",
    "PING_CHUNK",
    "QUEUED",
    "SHUTDOWN_RETRY_JITTER",
    "WRITTEN",
    "CloseReason",
    "Connection",
    "QueueBudget",
    "farewell",
]

# Outcomes of Connection.push; plain ints because push runs once per subscriber per event.
QUEUED = 0
DROPPED_OLDEST = 1
OVERFLOWED = 2  # this push closed the connection (policy `disconnect`)
ALREADY_CLOSED = 3
ALREADY_HAD = 4  # at or below the cursor: sent or queued before
WRITTEN = 5  # push_now wrote it to the transport at once

# A batch write stops growing here, so a full queue of large events is not joined
# into one multi-megabyte buffer.
MAX_BATCH_BYTES = 256 * 1024


class CloseReason(StrEnum):
    CLIENT_GONE = "client_gone"
    IDLE = "idle"
    OVERFLOW = "overflow"
    RESYNC = "resync"  # the broker's live feed skipped events: resume from history
    SHUTDOWN = "shutdown"
    TOKEN_EXPIRED = "token_expired"  # the subscriber's access token reached its exp
    ADMIN = "admin"  # POST /api/admin/streams/close
    DRAIN = "drain"  # POST /api/admin/drain
    MEMORY = "memory"  # the box is past its critical line and this stream holds the most


ABORTED_CLOSES = frozenset({CloseReason.OVERFLOW, CloseReason.IDLE, CloseReason.MEMORY})
"""Closes that reset the connection instead of ending the body: the client is not taking
what was sent, and a reset frees what the transport and the kernel still hold at once."""

BEHIND_UNSENT_BYTES = 16 * 1024
"""Unsent bytes in the kernel past which a client is behind, not just a frame or two in
flight: a graceful close would leave them to an orphaned socket (design note 6)."""


def _behind(transport: asyncio.Transport, reason: CloseReason) -> bool:
    if reason is CloseReason.CLIENT_GONE:  # the peer is gone: nothing left to decide
        return False
    return bool(transport.get_write_buffer_size()) or (
        kernel_unsent_bytes(transport) > BEHIND_UNSENT_BYTES
    )


SHUTDOWN_RETRY_JITTER = 1.0
"""On shutdown clients are told to wait ``SSE_RETRY_MS`` plus up to this factor more, so a
crowd does not come back in one instant."""


def farewell(connection: Connection, retry_ms: int) -> bytes:
    """The last frame of a stream the server closes gracefully: an operator's ``retry:``,
    or on shutdown ``retry_ms`` jittered; nothing otherwise."""
    if connection.farewell_retry_ms is not None:  # closed by an operator (app.admin)
        return encode_retry(connection.farewell_retry_ms)
    if connection.close_reason is CloseReason.SHUTDOWN:
        return encode_retry(retry_ms + int(random.random() * SHUTDOWN_RETRY_JITTER * retry_ms))
    return b""


PING_CHUNK = frame_chunk(PING_FRAME)
"""A heartbeat as the body chunk a direct write sends (app.sse.chunked_write)."""


class QueueBudget:
    """Distinct bytes of events held by any queue, against a global limit."""

    __slots__ = ("bytes", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.bytes = 0

    @property
    def exceeded(self) -> bool:
        return self.bytes > self.limit

    def hold(self, event: Event) -> None:
        if event.refs == 0:
            self.bytes += len(event.frame)
        event.refs += 1

    def release(self, event: Event) -> None:
        event.refs -= 1
        if event.refs == 0:
            self.bytes -= len(event.frame)


def _gap_frame(dropped: int) -> bytes:
    return b'event: gap\ndata: {"dropped":%d}\n\n' % dropped


class Connection:
    __slots__ = (
        "_budget",
        "_drop_oldest",
        "_gap",
        "_maxsize",
        "_queue",
        "_waiter",
        "body",
        "channels",
        "client",
        "close_reason",
        "cursor",
        "delivered",
        "dropped",
        "ending",
        "farewell_retry_ms",
        "flow",
        "flush_pending",
        "held_write",
        "last_delivery",
        "lease",
        "on_end",
        "on_ready",
        "opened_at",
        "ping_due",
        "pinged_at",
        "private_channels",
        "send",
        "sending",
        "transport",
        "writer",
    )

    def __init__(
        self,
        channels: tuple[str, ...],
        *,
        maxsize: int,
        drop_oldest: bool,
        budget: QueueBudget,
        now: float,
        client: str = "",
        private_channels: frozenset[str] = frozenset(),
        on_ready: Callable[[Connection], None] | None = None,
    ) -> None:
        self.channels = channels
        self.client = client
        self.private_channels = private_channels
        self.opened_at = now
        self.last_delivery = now
        self.delivered = 0
        self.dropped = 0
        # The newest position queued or sent; None while catching up (design note 5).
        self.cursor: EventKey | None = None
        self.ping_due = False
        # When the last heartbeat was asked for: with last_delivery, how long the stream
        # has been quiet (the hub pings only quiet streams, design note 4 of app.sse.hub).
        self.pinged_at = now
        self.close_reason: CloseReason | None = None
        # The ``retry:`` of the stream's last frame when an operator closed it
        # (app.admin): None writes no farewell retry unless the reason is SHUTDOWN.
        self.farewell_retry_ms: int | None = None
        self.writer: asyncio.Task[object] | None = None
        self.sending = False
        # Direct writes: the stream's ASGI send while the writer is pumping (None before
        # and after), the hub's flush scheduler, and a write handed back half done.
        self.send: Callable[[MutableMapping[str, Any]], Awaitable[None]] | None = None
        self.on_ready = on_ready
        self.flush_pending = False
        self.held_write: HeldWrite | None = None
        # While pumping, where the server allows direct chunk writes: its flow control.
        self.flow: WriteFlow | None = None
        # The stream's transport where the server provides it (app.serving.protocols).
        self.transport: asyncio.Transport | None = None
        # Detached (design note 7): the body the server's protocol handed over, what ends
        # the stream once closed (the hub's), and the hub's per-client lease to release then.
        self.body: DetachedBody | None = None
        self.on_end: Callable[[Connection], None] | None = None
        self.lease: StreamLease | None = None
        # What the front runs once a detached stream has ended (Mercure's inactive events).
        self.ending: Callable[[], Awaitable[None]] | None = None
        # Created by the first push: an idle stream should not carry an empty deque
        # (its first block alone is ~0.6 KB).
        self._queue: deque[Event] | None = None
        self._maxsize = maxsize
        self._drop_oldest = drop_oldest
        self._budget = budget
        self._gap = 0
        self._waiter: asyncio.Future[None] | None = None

    def __repr__(self) -> str:
        return f"Connection(channels={self.channels!r}, client={self.client!r})"

    @property
    def closed(self) -> bool:
        return self.close_reason is not None

    @property
    def queued(self) -> int:
        return len(self._queue) if self._queue else 0

    @property
    def queued_bytes(self) -> int:
        """Bytes of the queued events' frames (shared with other queues and the history)."""
        return sum(len(event.frame) for event in self._queue) if self._queue else 0

    def push(self, event: Event) -> int:
        """Queue a shared event; returns QUEUED, DROPPED_OLDEST, OVERFLOWED or ALREADY_CLOSED."""
        if self.close_reason is not None:
            return ALREADY_CLOSED
        cursor = self.cursor
        if cursor is not None:
            if event.key <= cursor:
                return ALREADY_HAD
            self.cursor = event.key
        queue = self._queue
        if queue is None:
            queue = self._queue = deque()
        outcome = QUEUED
        if len(queue) >= self._maxsize or (queue and self._budget.exceeded):
            if not self._drop_oldest:
                self.close(CloseReason.OVERFLOW)
                return OVERFLOWED
            self._budget.release(queue.popleft())
            self._gap += 1
            self.dropped += 1
            outcome = DROPPED_OLDEST
        self._budget.hold(event)
        queue.append(event)
        self._ready()
        return outcome

    def push_now(self, event: Event, chunk: bytes, now: float) -> int:
        """``push``, but written to the transport at once when nothing stands in the way
        (the hub keeps up: design note 12 of ``app.sse.hub``): live, nothing queued, the
        writer parked, a direct transport that is not paused or closing. ``chunk`` is
        ``event.frame`` framed as an HTTP chunk, shared by every stream. Returns WRITTEN,
        or what ``push`` returns when the event had to be queued instead."""
        transport = self._writable_transport()
        if transport is None:
            return self.push(event)
        cursor = self.cursor
        assert cursor is not None  # _writable_transport: live
        if event.key <= cursor:
            return ALREADY_HAD
        self.cursor = event.key
        try:
            transport.write(chunk)
        except Exception:  # the transport refused the write: treat the client as gone
            self.close(CloseReason.CLIENT_GONE)
            return ALREADY_CLOSED
        self.ping_due = False
        self.delivered += 1
        self.last_delivery = now
        return WRITTEN

    def take(self) -> tuple[bytes, int] | None:
        """What the writer should send next, with the number of events in it."""
        queue = self._queue
        if not queue and not self._gap:
            return self._take_ping()
        assert queue is not None  # a gap is only ever recorded by a push
        frames: list[bytes] = []
        if self._gap:
            frames.append(_gap_frame(self._gap))
            self._gap = 0
        count = size = 0
        release = self._budget.release
        while queue and size < MAX_BATCH_BYTES:
            event = queue.popleft()
            release(event)
            frames.append(event.frame)
            size += len(event.frame)
            count += 1
        if not frames:
            return self._take_ping()
        self.ping_due = False
        return (frames[0] if len(frames) == 1 else b"".join(frames)), count

    def _take_ping(self) -> tuple[bytes, int] | None:
        if self.ping_due:
            self.ping_due = False
            return PING_FRAME, 0
        return None

    async def wait(self) -> None:
        """Sleep until there is something to send or the connection is closed."""
        if self._queue or self._gap or self.ping_due or self.close_reason is not None:
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiter = waiter
        try:
            await waiter
        finally:
            self._waiter = None

    def _writable_transport(self) -> asyncio.Transport | None:
        """The transport when the hub may write to it at once, else None: live, nothing
        queued, the writer parked (or detached), a direct transport neither paused nor
        closing."""
        waiter = self._waiter
        flow = self.flow
        transport = self.transport
        if (
            self.cursor is None  # catching up: events wait for go_live
            or self._queue  # earlier events first
            or self._gap
            or flow is None
            or transport is None
            or flow.write_paused
            or (self.body is None and (waiter is None or waiter.done()))  # the writer owns it
            or self.close_reason is not None
            or transport.is_closing()
        ):
            return None
        return transport

    def request_ping(self, now: float) -> None:
        """A heartbeat: written at once where an event could be (so a hub pinging
        thousands of streams wakes no writer task), else left to the writer. Nothing
        while events are queued: they are on their way."""
        if self._queue:
            return
        self.pinged_at = now
        transport = self._writable_transport()
        if transport is None:
            self.ping_due = True
            self._wake()
            return
        try:
            transport.write(PING_CHUNK)
        except Exception:  # the transport refused the write: treat the client as gone
            self.close(CloseReason.CLIENT_GONE)

    def close(self, reason: CloseReason) -> None:
        if self.close_reason is not None:
            return
        self.close_reason = reason
        transport = self.transport
        if transport is not None and (reason in ABORTED_CLOSES or _behind(transport, reason)):
            # Before waking the writer: by the time it runs, the server knows the
            # client is gone and its last write returns at once.
            abort_transport(transport)
        self._wake()
        if self.sending and self.writer is not None:
            self.writer.cancel()
        if self.body is not None and self.on_end is not None:
            # On the next iteration: the closer may be iterating a set the end changes.
            asyncio.get_running_loop().call_soon(self.on_end, self)

    # --- detached (design note 7) -------------------------------------------

    def detach(self, body: DetachedBody, on_end: Callable[[Connection], None]) -> None:
        """The server's protocol owns the body from now on; no writer task remains."""
        self.body = body
        self.flow = body
        self.send = None
        self.on_end = on_end

    def end_body(self, retry_ms: int) -> None:
        """Finish a detached stream that was closed: its farewell and last chunk unless it
        was aborted, then an abort if the client is behind (design note 6)."""
        body, self.body = self.body, None
        transport = self.transport
        if body is None or transport is None or transport.is_closing():
            return  # aborted by close(), or the client left: nothing more to write
        self.discard_queue()
        body.end(last_chunks(farewell(self, retry_ms)))
        if transport.get_write_buffer_size():
            abort_transport(transport)

    def body_lost(self) -> None:
        self.close(CloseReason.CLIENT_GONE)

    def body_shutdown(self) -> None:
        self.close(CloseReason.SHUTDOWN)

    def body_writable(self) -> None:
        """The paused transport drained: write what queued meanwhile, in a pass."""
        pending = self._queue or self._gap or self.ping_due
        if pending and not self.flush_pending and self.on_ready is not None:
            self.flush_pending = True
            self.on_ready(self)

    def _flush_detached(self, now: float, chunks: dict[bytes, bytes]) -> None:
        """Write everything queued, batch by batch, until the transport pauses; what is
        left waits for ``body_writable``."""
        body = self.body
        transport = self.transport
        assert body is not None and transport is not None
        while not body.write_paused and self.close_reason is None:
            if transport.is_closing():
                return  # the client is leaving: connection_lost follows
            item = self.take()
            if item is None:
                return
            payload, count = item
            chunk = chunks.get(payload)
            if chunk is None:
                chunk = frame_chunk(payload)
                if count == 1:  # one event's frame: the other streams share its chunk
                    chunks[payload] = chunk
            try:
                transport.write(chunk)
            except Exception:  # the transport refused the write: treat the client as gone
                self.close(CloseReason.CLIENT_GONE)
                return
            if count:
                self.delivered += count
                self.last_delivery = now

    def go_live(self, head: EventKey) -> None:
        """The replay covered everything up to ``head``: keep only what came after it."""
        queue = self._queue
        cursor = head
        if queue:
            release = self._budget.release
            kept: deque[Event] = deque()
            for event in queue:
                if event.key > cursor:
                    kept.append(event)
                    cursor = event.key
                else:
                    release(event)
            self._queue = kept
        self.cursor = cursor

    def discard_queue(self) -> None:
        """Let go of every queued event (the connection is being unregistered)."""
        release = self._budget.release
        queue = self._queue
        while queue:
            release(queue.popleft())
        self._gap = 0

    def _ready(self) -> None:
        """Something was queued: have it written, directly if the writer is parked."""
        if self.body is not None:
            # Detached: a pass writes it; while paused, body_writable schedules that pass.
            if not self.flush_pending and not self.body.write_paused and self.on_ready:
                self.flush_pending = True
                self.on_ready(self)
            return
        waiter = self._waiter
        if waiter is None or waiter.done():
            return  # the writer is busy and takes the queue itself when it comes back
        if self.on_ready is None or self.send is None:
            waiter.set_result(None)
        elif not self.flush_pending:
            self.flush_pending = True
            self.on_ready(self)

    def flush(self, now: float, chunks: dict[bytes, bytes]) -> None:
        """Write the queued batch from the caller (the hub's flush pass), leaving the writer
        task asleep; a write that must wait for the socket is handed to the writer.
        ``chunks`` is the pass's map from a shared frame to its framed chunk."""
        self.flush_pending = False
        if self.body is not None:
            self._flush_detached(now, chunks)
            return
        waiter = self._waiter
        send = self.send
        if send is None or waiter is None or waiter.done():
            return  # the writer is awake (or gone) and owns the queue
        queue = self._queue
        if queue is not None and len(queue) == 1 and not self._gap:
            # The common case of a hub that keeps up: one event, the frame as it is.
            event = queue.popleft()
            event.refs -= 1  # QueueBudget.release, inlined: this runs once per stream
            if not event.refs:
                self._budget.bytes -= len(event.frame)
            self.ping_due = False
            payload, count = event.frame, 1
        else:
            item = self.take()
            if item is None:
                return
            payload, count = item
        flow = self.flow
        transport = self.transport
        held: HeldWrite | None = None
        try:
            if (
                flow is not None
                and transport is not None
                and not flow.write_paused
                and not transport.is_closing()
            ):
                chunk = chunks.get(payload)
                if chunk is None:
                    chunk = frame_chunk(payload)
                    if count == 1:  # one event's frame: the other streams share its chunk
                        chunks[payload] = chunk
                transport.write(chunk)
            else:
                # No direct path, or paused or closing: uvicorn's send waits for the drain
                # (a write handed to the writer) or drops the write of a client that left.
                body = {"type": "http.response.body", "body": payload, "more_body": True}
                held = step(send(body))
        except Exception:  # the transport refused the write: treat the client as gone
            self.close(CloseReason.CLIENT_GONE)
            return
        if count:
            self.delivered += count
            self.last_delivery = now
        if held is not None:
            self.held_write = held
            waiter.set_result(None)

    def drop_held_write(self) -> None:
        """Abandon a write handed back but never resumed (the stream is ending)."""
        held, self.held_write = self.held_write, None
        if held is not None:
            held[0].close()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
