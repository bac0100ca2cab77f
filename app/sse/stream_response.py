"""The streaming response: sse-starlette's ``EventSourceResponse``, driven by the hub.

Design decisions (read before changing):

1. We keep sse-starlette's headers (``Cache-Control: no-store``,
   ``X-Accel-Buffering: no``, ``Connection: keep-alive``), validation and HEAD
   handling, but replace its per-connection task group (stream, ping, exit
   listener, disconnect listener). The hub already owns heartbeats (one timer)
   and shutdown (one watcher), so each stream runs just its writer, in the
   request's own task, plus one small task waiting for ``http.disconnect``:
   uvicorn silently drops writes to a vanished client, so only ``receive``
   tells us it left.
2. The subscription (registration, replay, unregistration) lives inside
   ``__call__``, so it spans exactly the life of the response and is released
   by the same ``finally`` whatever ends it. Refusals (connection cap, memory
   guard) happen there too, before any byte is sent, as a 503 JSON response.
3. The first write carries ``retry:``, the replay (or a ``reset``) and an
   ``id:`` line with the position the stream goes live after — with no data,
   so a browser sets ``lastEventId`` without dispatching an event, and a client
   cut before its first event resumes exactly. After that the writer sends
   whatever has queued in one write (batches), or a heartbeat comment.
4. The broker unreachable when a stream opens (Redis restarting): the stream
   opens anyway, sends ``retry:`` and heartbeats, and retries the catch-up with
   backoff for up to ``SSE_REPLAY_WAIT_SECONDS``; live events queue meanwhile.
   Past that it ends without ``reset`` (the client retries with the same id):
   ``reset`` means only that history does not reach back.
5. A stream closed by the server for shutdown (or by an operator) ends the
   chunked body cleanly so the browser reconnects; on shutdown the last frame
   is a jittered ``retry:`` so a crowd of clients does not come back in one
   instant (an operator's close or drain, ``app.admin``, sets its own jittered
   value).
   If the client stopped reading, that last write is bounded by
   ``FINAL_WRITE_TIMEOUT_SECONDS`` rather than awaited forever, and a last
   write the socket could not take (it stays in the transport's buffer) ends
   in an abort: uvicorn's close would wait for that buffer to drain, and a
   draining worker would hold its memory, and the box, until the client
   reads. Overflow and idle closes abort the connection at once
   (``Connection.close``): the browser reconnects after a reset just as
   after a clean end.
6. At stream open the socket's send buffer and the transport's write buffer
   are capped (:mod:`app.sse.stream_socket`), before the first byte is sent.
7. A resume replays in pages (:mod:`app.sse.replays`): it waits for a turn
   (``retry:`` and heartbeats meanwhile, as in note 4), reads the first page with
   the head, writes it through ``send`` like any other write, and only then reads
   the next, so a client that does not read holds one page, not its history.
   The last frame is the ``id:`` of the head, unless the last event was it.
   A broker unreachable between pages is waited out as in note 4, from the last
   page written; past ``SSE_REPLAY_WAIT_SECONDS`` the stream ends without
   ``reset`` and the client resumes exactly from the last event it got. History
   that let go of an event before its page was read is a ``reset`` from there
   (``history_expired``), after which the stream is live from the head.
8. A stream refused because the server is full or low on memory (503) is
   answered as its client survives it. ``EventSource`` treats any status but
   200 as fatal and never retries, so a browser (``Accept: text/event-stream``)
   gets a 200 whose whole body is a comment naming the reason and a jittered
   ``retry:`` (the refusal's wait plus up to as much again), with no ``id:``,
   so it comes back by itself later with the same ``Last-Event-ID``; the
   connection closes with it, so a refused crowd holds no sockets. Other
   clients get the 503 JSON with ``Retry-After``; a 429 (this client has too
   many streams) stays a 429 for everyone: coming back would not help it.
9. Detaching (:mod:`app.sse.chunked_write` design note 5). Where the server
   offers it, the writer hands the stream over the first time it would park:
   live, the opening frames and replay written, nothing queued or held, the
   direct path allowed. The server's protocol takes the body
   (``herald.detach_body``), the connection becomes the stream
   (:meth:`Connection.detach`), the disconnect watcher is cancelled and
   ``__call__`` returns: the ASGI task, its frames and this response object are
   freed, and the hub ends the stream when it is closed (``app.sse.hub``,
   design note 14). Refused (paused, pipelined, no such server), the writer
   keeps the stream and parks as before, and tries again the next time.
   ``_stream`` answers whether it detached, so a front that wraps it (Mercure)
   leaves its own ending to the stream's end.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Container,
    Iterable,
    Iterator,
)
from typing import TypeVar

from sse_starlette import EventSourceResponse
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from app.broker.base import BrokerUnavailableError, Replay
from app.core.config import Settings
from app.sse.chunked_write import (
    BodyOwner,
    DetachedBody,
    WriteFlow,
    body_detacher,
    chunked_body_flow,
)
from app.sse.connection import MAX_BATCH_BYTES, CloseReason, Connection, farewell
from app.sse.direct_write import resume
from app.sse.hub import Hub, StreamRefusedError
from app.sse.patterns import TopicPattern
from app.sse.stream_socket import abort_transport, open_stream_transport
from app.wire.encoding import PING_FRAME, encode_position, encode_retry
from app.wire.event import Event
from app.wire.event_id import MAX_EVENT_ID_LENGTH

__all__ = [
    "DEFERRED_HEADER",
    "FINAL_WRITE_TIMEOUT_SECONDS",
    "HeraldStreamResponse",
    "accepts_event_stream",
    "deferral_retry_ms",
    "refusal_response",
    "reset_frame",
]

FINAL_WRITE_TIMEOUT_SECONDS = 1.0
SERVICE_UNAVAILABLE = 503
DEFERRED_HEADER = "X-Herald-Deferred"
"""Marks a refusal answered as a deferral (a 200 that only says when to come back)."""
# Catch-up retries while the broker is unreachable: backoff from the first to the last.
CATCH_UP_RETRY_SECONDS = (0.05, 1.0)
_Read = TypeVar("_Read")
_Detach = Callable[[BodyOwner], DetachedBody | None]


class _NoContent:
    """An async iterable with nothing in it, shared by every response: the hub supplies
    the content, and a per-response iterator would be one more object per idle stream."""

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        raise StopAsyncIteration


_NO_CONTENT = _NoContent()


def reset_frame(replay: Replay, last_event_id: str) -> bytes:
    data = json.dumps(
        {"reason": replay.reason, "last_event_id": last_event_id[:MAX_EVENT_ID_LENGTH]},
        separators=(",", ":"),
    ).encode()
    return b"id: " + replay.head.encode("ascii") + b"\nevent: reset\ndata: " + data + b"\n\n"


def opening_frames(retry_ms: int | None, replay: Replay, last_event_id: str | None) -> list[bytes]:
    """``retry:`` (unless already sent), then the replay or ``reset``, then the position."""
    frames = [] if retry_ms is None else [encode_retry(retry_ms)]
    if replay.reset:
        frames.append(reset_frame(replay, last_event_id or ""))
        return frames
    frames.extend(event.frame for event in replay.events)
    if not replay.events or replay.events[-1].id != replay.head:
        frames.append(encode_position(replay.head))
    return frames


def _body(send: Send, body: bytes) -> Awaitable[None]:
    return send({"type": "http.response.body", "body": body, "more_body": True})


class _Keepalive:
    """What a stream sends while it waits before or during its replay (for a turn, for
    the broker): ``retry:`` first, then a heartbeat every ``SSE_PING_SECONDS``."""

    __slots__ = ("clock", "lost", "next_ping", "ping_seconds", "retry_ms")

    def __init__(self, settings: Settings, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.retry_ms: int | None = settings.sse_retry_ms  # None once sent
        self.ping_seconds = settings.sse_ping_seconds
        self.next_ping = clock() + self.ping_seconds
        self.lost = False  # the last read found history had lost events

    def due(self) -> bytes | None:
        now = self.clock()
        if self.retry_ms is None and now < self.next_ping:
            return None
        frame = encode_retry(self.retry_ms) if self.retry_ms is not None else PING_FRAME
        self.retry_ms, self.next_ping = None, now + self.ping_seconds
        return frame


def _batches(frames: Iterable[bytes]) -> Iterator[bytes]:
    batch: list[bytes] = []
    size = 0
    for frame in frames:
        batch.append(frame)
        size += len(frame)
        if size >= MAX_BATCH_BYTES:
            yield b"".join(batch)
            batch, size = [], 0
    if batch:
        yield b"".join(batch)


def accepts_event_stream(scope: Scope) -> bool:
    """The client asked for an event stream (``EventSource`` always sends this Accept)."""
    for name, value in scope.get("headers", ()):
        if name == b"accept" and b"text/event-stream" in value:
            return True
    return False


def deferral_retry_ms(retry_after_seconds: int) -> int:
    """When a deferred client should come back: the refusal's wait plus up to as much again,
    so a refused crowd spreads out instead of returning in one instant."""
    wait_ms = retry_after_seconds * 1000
    return wait_ms + int(random.random() * wait_ms)


def refusal_response(scope: Scope, refusal: StreamRefusedError) -> Response:
    """A refused stream, answered so that its client survives it (design note 8)."""
    if refusal.status_code == SERVICE_UNAVAILABLE and accepts_event_stream(scope):
        comment = refusal.detail.replace("\n", " ").replace("\r", " ")
        body = (
            b": " + comment.encode() + b"\n" + encode_retry(deferral_retry_ms(refusal.retry_after))
        )
        return Response(
            body,
            media_type="text/event-stream",
            # Closing the connection gives its descriptor and buffers back at once.
            headers={"Cache-Control": "no-store", "Connection": "close", DEFERRED_HEADER: "1"},
        )
    return JSONResponse(
        {"detail": refusal.detail},
        status_code=refusal.status_code,
        headers={"Retry-After": str(refusal.retry_after)},
    )


class HeraldStreamResponse(EventSourceResponse):
    def __init__(
        self,
        hub: Hub,
        channels: tuple[str, ...],
        *,
        last_event_id: str | None = None,
        client: str = "",
        private_channels: Container[str] = frozenset(),
        headers: dict[str, str] | None = None,
        patterns: tuple[TopicPattern, ...] = (),
        validated: bool = False,
    ) -> None:
        super().__init__(_NO_CONTENT, ping=0, headers=headers)
        # Never used: __call__ below replaces the machinery the lock guards, and an
        # idle stream should not carry a lock with its waiter deque (~0.8 KB).
        del self._send_lock
        self._hub = hub
        self._channels = channels
        self._last_event_id = last_event_id
        self._client = client
        self._private_channels = private_channels
        # Another protocol's front (app.mercure): patterns, and names it validated itself.
        self._patterns = patterns
        self._validated = validated

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"].upper() == "HEAD":
            await super().__call__(scope, receive, send)
            return
        try:
            async with self._hub.open(
                self._channels,
                self._client,
                self._private_channels,
                patterns=self._patterns,
                validated=self._validated,
            ) as connection:
                connection.transport = open_stream_transport(scope, self._hub.settings)
                await self._stream(connection, scope, receive, send)
        except StreamRefusedError as refusal:
            await refusal_response(scope, refusal)(scope, receive, send)

    async def _stream(
        self, connection: Connection, scope: Scope, receive: Receive, send: Send
    ) -> bool:
        """Serve the stream; True when it was detached (design note 9) and goes on."""
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        # Asked once the headers are out, when the server knows how it frames the body.
        flow = chunked_body_flow(scope) if connection.transport is not None else None
        detach = body_detacher(scope) if flow is not None else None
        watcher = asyncio.create_task(self._watch_disconnect(connection, receive))
        connection.writer = asyncio.current_task()
        try:
            if await self._catch_up(connection, send) and await self._pump(
                connection, send, flow, detach
            ):
                return True
            await self._finish(connection, send)
            return False
        finally:
            connection.writer = None
            watcher.cancel()

    async def _catch_up(self, connection: Connection, send: Send) -> bool:
        """Write the opening frames and the replay, page by page; False if the stream ended
        first (closed, or the broker stayed unreachable for SSE_REPLAY_WAIT_SECONDS)."""
        hub = self._hub
        keepalive = _Keepalive(hub.settings, hub.clock)
        # A new stream has nothing to replay: no turn (app.sse.replays, design note 3).
        turn = hub.replays.turn() if self._last_event_id is not None else None
        try:
            if turn is not None and not await self._wait_turn(connection, send, turn, keepalive):
                return False
            return await self._replay(connection, send, keepalive)
        finally:
            if turn is not None:
                hub.replays.leave(turn)

    async def _wait_turn(
        self,
        connection: Connection,
        send: Send,
        turn: asyncio.Future[None],
        keepalive: _Keepalive,
    ) -> bool:
        """Wait for a replay turn with ``retry:`` and heartbeats; False if the stream ended."""
        clock = self._hub.clock
        while not turn.done():
            if not await self._keep_alive(connection, send, keepalive) or connection.closed:
                return False
            wait = min(keepalive.next_ping - clock(), CATCH_UP_RETRY_SECONDS[1])
            await asyncio.wait({turn}, timeout=max(0.0, wait))
        return True

    async def _replay(self, connection: Connection, send: Send, keepalive: _Keepalive) -> bool:
        hub = self._hub
        replay = await self._broker_retries(
            connection,
            send,
            keepalive,
            lambda: hub.catch_up(connection, self._last_event_id, page=hub.page_limit),
        )
        if replay is None:
            return False
        retry_ms, keepalive.retry_ms = keepalive.retry_ms, None
        if replay.reset or replay.rest is None:
            frames = opening_frames(retry_ms, replay, self._last_event_id)
            return await self._write_page(connection, send, frames, len(replay.events))
        # Paged: each page is written before the next is read (design note 7).
        frames = [] if retry_ms is None else [encode_retry(retry_ms)]
        events: list[Event] = replay.events
        rest = replay.rest
        last_id: str | None = None  # of the last event written
        while True:
            frames.extend(event.frame for event in events)
            if not await self._write_page(connection, send, frames, len(events)):
                return False
            if events:
                last_id = events[-1].id
            found = await self._broker_retries(
                connection, send, keepalive, lambda: hub.next_page(connection, rest)
            )
            if found is None:
                if connection.closed or not keepalive.lost:
                    return False  # the stream ended, or the broker stayed unreachable
                # History let go of an event before its page was read: as for a replay
                # that does not reach back, from the last event the client has.
                lost = Replay(head=replay.head, reset=True, reason="history_expired")
                resumed_from = last_id or self._last_event_id or ""
                return await self._write(connection, _body(send, reset_frame(lost, resumed_from)))
            if not found:
                break
            events, frames = found, []
        if last_id == replay.head:
            return True
        return await self._write(connection, _body(send, encode_position(replay.head)))

    async def _broker_retries(
        self,
        connection: Connection,
        send: Send,
        keepalive: _Keepalive,
        read: Callable[[], Awaitable[_Read]],
    ) -> _Read | None:
        """``read()``, again with backoff while the broker is unreachable, with ``retry:``
        and heartbeats (design note 4); None if the stream ended or the wait ran out.
        A read that answers None (history lost events) sets ``keepalive.lost``."""
        hub = self._hub
        deadline = hub.clock() + hub.settings.sse_replay_wait_seconds
        pause = CATCH_UP_RETRY_SECONDS[0]
        while True:
            try:
                found = await read()
            except BrokerUnavailableError:
                pass
            else:
                keepalive.lost = found is None
                return found
            if not await self._keep_alive(connection, send, keepalive):
                return None
            now = hub.clock()
            if connection.closed or now >= deadline:
                return None
            await asyncio.sleep(min(pause, deadline - now))
            pause = min(pause * 2, CATCH_UP_RETRY_SECONDS[1])

    async def _keep_alive(self, connection: Connection, send: Send, keepalive: _Keepalive) -> bool:
        """Send ``retry:`` (first) or a heartbeat if one is due; False if the stream ended."""
        frame = keepalive.due()
        if frame is None:
            return True
        return await self._write(connection, _body(send, frame))

    async def _write_page(
        self, connection: Connection, send: Send, frames: list[bytes], count: int
    ) -> bool:
        """Write a page's frames, counted in the hub's page bytes until written."""
        replays = self._hub.replays
        size = sum(len(frame) for frame in frames)
        replays.hold(size)
        try:
            for chunk in _batches(frames):
                if not await self._write(connection, _body(send, chunk)):
                    return False
        finally:
            replays.release(size)
        connection.delivered += count
        if count:
            connection.last_delivery = self._hub.clock()
        return True

    async def _pump(
        self, connection: Connection, send: Send, flow: WriteFlow | None, detach: _Detach | None
    ) -> bool:
        """Write until the stream is closed (False) or detached (True)."""
        clock = self._hub.clock
        # From here on the hub may write directly: to the transport where the server
        # allows it (chunked_write), else by stepping send (direct_write).
        connection.send = send
        connection.flow = flow
        try:
            while not connection.closed:
                held = connection.held_write
                if held is not None:
                    # A direct write found the socket full: finish it here, as if awaited.
                    connection.held_write = None
                    if not await self._write(connection, resume(held)):
                        return False
                    continue
                item = connection.take()
                if item is None:
                    if detach is not None and self._detach(connection, detach):
                        return True
                    await connection.wait()
                    continue
                payload, count = item
                chunk = send({"type": "http.response.body", "body": payload, "more_body": True})
                if not await self._write(connection, chunk):
                    return False
                if count:
                    connection.delivered += count
                    connection.last_delivery = clock()
            return False
        finally:
            if connection.body is None:
                connection.send = None
                connection.flow = None
            connection.drop_held_write()

    def _detach(self, connection: Connection, detach: _Detach) -> bool:
        """Hand the stream to the server's protocol and the hub, if the server takes it now
        (design note 9); nothing is queued or held when this is asked."""
        if connection.closed:
            return False
        body = detach(connection)
        if body is None:
            return False
        connection.detach(body, self._hub.on_detached_end)
        return True

    @staticmethod
    async def _write(connection: Connection, write: Awaitable[None]) -> bool:
        """Await one chunk's write; False if the connection was closed while it waited."""
        connection.sending = True
        try:
            await write
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if connection.closed and task is not None:
                task.uncancel()  # our own close() cancelled a write stuck on a slow client
                return False
            raise
        finally:
            connection.sending = False
        return True

    async def _finish(self, connection: Connection, send: Send) -> None:
        body = farewell(connection, self._hub.settings.sse_retry_ms)
        final = send({"type": "http.response.body", "body": body, "more_body": False})
        # If the client stopped reading this times out; uvicorn closes the socket when we return.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(final, FINAL_WRITE_TIMEOUT_SECONDS)
        transport = connection.transport
        if transport is not None and transport.get_write_buffer_size():
            abort_transport(transport)

    @staticmethod
    async def _watch_disconnect(connection: Connection, receive: Receive) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                connection.close(CloseReason.CLIENT_GONE)
                return
