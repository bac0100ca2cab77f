"""The hub: local connections by channel, fan-out, and the housekeeping tasks.

Design decisions (read before changing):

1. One encoding per event. ``publish`` encodes the body once; the broker adds
   the id line once; every queue gets a reference to the same ``Event``.
2. Fan-out is synchronous and never awaits: the broker's listener pushes the
   event into each local queue in one pass. Overflow is decided right there
   (close the stream, or drop its oldest event and mark the gap), so a slow
   consumer never slows the others or the publisher.
3. Exactly once, in order, from the first byte. A stream is registered
   (``open``) *before* it asks the broker for its replay (``catch_up``); the
   replay returns every retained event after the client's id and ``head``, the
   broker's newest position at that snapshot, and every event after ``head``
   reaches the listener after that call began (the broker contract in
   ``app.broker.base``). So the stream queues live events while it catches up,
   then drops the queued ones at or below ``head`` (the replay had them) and
   from then on each event above its cursor: no gap (registration came first),
   no duplicate (the cursor), whatever the broker. A new stream is a replay of
   nothing: it starts at ``head`` and says so in its opening ``id:`` line, so a
   client cut before its first event resumes exactly. Because ids order all
   channels, one cursor serves a stream of many channels, and an event that
   reaches a stream twice (through two of its channels, or a re-read) is
   skipped by the same comparison.
4. Three tasks per worker, none per connection: a heartbeat, a reaper that closes connections with
   no event delivered for ``SSE_IDLE_TIMEOUT_SECONDS`` (heartbeats do not
   count: they reach the kernel even for a vanished client), and a shutdown
   watcher that closes every stream as soon as the server is asked to exit
   (uvicorn waits for open responses and never interrupts a stream itself).
   The heartbeat pings only quiet streams: it ticks every ``PING_TICK_SECONDS``
   (or a quarter of ``SSE_PING_SECONDS`` if that is shorter) and pings the
   streams that got neither an event nor a ping for ``SSE_PING_SECONDS`` minus
   one tick, so no stream is silent longer than ``SSE_PING_SECONDS``. A stream
   that gets events gets no pings (an event keeps a proxy's idle timer alive as
   well as a comment does), and the pings of streams opened at different times
   go out at different ticks instead of all at once: pinging 2,000 streams in
   one pass every 15 s would hold every event behind that pass and raise the
   latency tail (docs/performance.md, "Heartbeats only for quiet streams"). A
   ping is written directly where an event would be (``Connection.request_ping``),
   so it wakes no writer task.
5. ``open`` is an async context manager whose ``finally`` unregisters,
   releases queued events, tells the broker and logs the end exactly once,
   whatever ended the stream.
6. A broker that finds its live feed skipped events calls ``resync``: every
   stream is closed (``CloseReason.RESYNC``, gracefully) and clients resume from
   history with their ``Last-Event-ID`` — a reconnect instead of a silent gap.
7. One event, several channels: ``publish`` takes the channels an event is
   published on; fan-out pushes it once to each stream subscribed to any of
   them (a set union, only for multi-channel events), and the cursor would
   skip a second push anyway. A private one reaches a stream whose grants
   cover any of the event's channels it subscribes to.
8. Batches are drafts first: ``draft`` validates and encodes one event (and
   raises for it alone, so the API can name the bad item), ``publish_drafts``
   hands the lot to the broker, which numbers them consecutively, all or none.
   ``publish_drafts_once`` does the same under an idempotency key: the broker looks
   the key up as it numbers them (``app.broker.idempotency``), and a repeat within
   ``PUBLISH_IDEMPOTENCY_SECONDS`` is answered with the first publish's events.
9. Write passes: one per loop iteration at most, for every connection that
   got events, and a pass holds events back only when the hub is behind. When
   the first event after a pass arrives, the hub compares the time since that
   pass ended with the time the pass took. Longer (the loop keeps up: it was
   idle at least as long as it wrote): the pass runs at once, on the next
   iteration, so latency is one pass. Shorter (events arrive faster than passes
   complete, and writing each as it comes would use most of the loop): the
   next pass starts ``COALESCE_COST_FACTOR`` times the last pass's duration
   after it ended, at most ``SSE_WRITE_COALESCE_MS``, and carries everything
   published meanwhile in one write per stream — the throughput of a saturated
   hub. The hold never depends on the number of streams alone: 2,000 streams
   at 20 events/s keep up and are written at once. Pass times are read on the
   hub's clock (``Hub(clock=...)``), not the event loop's: uvloop's loop time
   counts whole milliseconds, which rounds a short pass to nothing or to a
   millisecond, and a test drives the clock instead of sleeping.
10. A stream's write in a pass is one ``transport.write`` of a chunk framed once
   per event (:mod:`app.sse.chunked_write`) where the server allows it, else a
   step of its ASGI ``send`` (:mod:`app.sse.direct_write`).
11. Pattern subscriptions (Mercure's URL patterns and ``*``) sit beside the exact
    channels: ``open(..., patterns=...)`` puts the stream in a ``PatternIndex``
    whose bounded cache makes matching cost once per distinct channel, not once
    per subscriber per event (``app.sse.patterns``). Such a stream replays every
    channel and keeps the events its patterns or channels match; the broker is
    told to deliver every channel to this process while one is open.
    ``private_channels`` is any container: a Mercure stream's answers ``in`` from
    its token's grants, so a private event's check stays one expression.
12. Writing inside the fan-out: when the hub keeps up (note 9's test, made once
    per event: no pass is due and the loop was idle at least as long as the last
    writes took), the fan-out itself writes the event to every stream that can
    take it at once — live, nothing queued, its writer parked, a direct transport
    neither paused nor closing — with one ``transport.write`` of the chunk framed
    once for all (``Connection.push_now``). No queue, no budget, no pass: per
    stream, what the raw floor hub pays plus a handful of checks (the
    queue-then-pass route costs well above the floor per stream: docs/performance.md,
    "Latency against a raw floor"). Any stream that
    cannot take it is queued as before, and a hub that is behind queues
    everything, so coalescing is unchanged where it matters. The fan-out's writes
    count as a pass for the next event's test, with one difference: events that
    arrived while one event was being written (four publishers sending at the
    same instant) are a burst, not a hub falling behind, so their pass runs at
    once instead of being held (holding them doubled latency at 2,000 streams).
13. Replays in pages (:mod:`app.sse.replays`): ``catch_up`` with a ``PageLimit``
    returns the first page and the head, and places the stream at that head at
    once, as for a whole replay: the pages that follow (``next_page``) hold only
    events at or below it, and everything above it queues live meanwhile under
    the usual queue bounds (overflow applies as to a slow client, and the client
    resumes exactly from the last event written). Each page is narrowed to what
    the stream may see the way a whole replay is.
14. A detached stream (:mod:`app.sse.chunked_write` design note 5) outlives its
    ``open``: the context manager sees ``connection.body`` set when the stream
    response returns and hands the stream over instead of releasing it (the
    per-client lease goes onto the connection). The hub then ends it when it is
    closed (``Connection.on_end``): the farewell and last chunk, unregistering
    and the log line at once, the broker's unsubscribes, the lease and the
    front's own ending (``Connection.ending``, e.g. Mercure's inactive
    subscription events) in one task per ending stream, which ``stop`` awaits.
    The bound methods every connection calls back are made once per hub and
    shared, not one per stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections import Counter
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Collection,
    Container,
    Iterable,
    Sequence,
)
from dataclasses import dataclass
from typing import overload

from app.broker.base import (
    Broker,
    BrokerUnavailableError,
    Draft,
    PageLimit,
    Published,
    PublishKey,
    Replay,
    ReplayPages,
)
from app.broker.idempotency import fingerprint
from app.core.config import Settings
from app.limits import ClientLimits, LimitExceededError, LocalClientLimits, StreamLease
from app.sse.chunked_write import frame_chunk
from app.sse.connection import (
    DROPPED_OLDEST,
    OVERFLOWED,
    CloseReason,
    Connection,
    QueueBudget,
)
from app.sse.patterns import PatternIndex, TopicPattern
from app.sse.replays import ReplayGate
from app.sse.shutdown import shutdown_requested
from app.wire.channels import event_channels, validate_channel
from app.wire.encoding import encode_body
from app.wire.event import Event
from app.wire.event_id import parse_event_id

__all__ = ["DEFAULT_RETRY_AFTER_SECONDS", "Hub", "StreamRefusedError"]

logger = logging.getLogger("herald.sse")

SHUTDOWN_POLL_SECONDS = 0.1
DEFAULT_RETRY_AFTER_SECONDS = 5
PING_TICK_SECONDS = 1.0
"""How often the heartbeat looks for quiet streams (design note 4)."""
COALESCE_COST_FACTOR = 2.0
"""A hub that is behind starts its next pass this many times the last pass's duration
after that pass ended (capped by SSE_WRITE_COALESCE_MS): passes then take at most about
a third of the loop's time (design note 9)."""


class StreamRefusedError(Exception):
    """A new stream cannot be opened now (answered with ``status_code`` and ``Retry-After``:
    503 when the server is full, 429 when this client has too many streams open)."""

    def __init__(
        self,
        detail: str,
        retry_after: int = DEFAULT_RETRY_AFTER_SECONDS,
        status_code: int = 503,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.retry_after = retry_after
        self.status_code = status_code


@dataclass
class HubCounters:
    published: int = 0
    delivered: int = 0
    dropped: int = 0
    overflow_disconnects: int = 0
    reaped: int = 0
    opened: int = 0
    replayed_publishes: int = 0


class Hub:
    def __init__(
        self,
        settings: Settings,
        broker: Broker,
        *,
        clock: Callable[[], float] = time.monotonic,
        limits: ClientLimits | None = None,
    ) -> None:
        self.settings = settings
        self.broker = broker
        self.limits = limits or LocalClientLimits(settings)
        self.clock = clock
        self.started_at = clock()
        self.budget = QueueBudget(settings.sse_queue_max_bytes)
        self.counters = HubCounters()
        self.closed_by_reason: Counter[str] = Counter()
        self._channels: dict[str, set[Connection]] = {}
        self._patterns: PatternIndex[Connection] = PatternIndex(settings.sse_pattern_cache_size)
        self._patterns_of: dict[Connection, tuple[TopicPattern, ...]] = {}
        self._connections: set[Connection] = set()
        self._tasks: list[asyncio.Task[None]] = []
        # Set once the server drains: a stream that registers later (it was opening when
        # the shutdown's close swept the hub) is closed at once, or it would hold the
        # process until the client leaves.
        self._draining = False
        # Connections with events to write directly, flushed once per loop iteration
        # (each at most once: Connection.flush_pending); bounded by the connections.
        self._to_flush: list[Connection] = []
        self._coalesce_seconds = settings.sse_write_coalesce_ms / 1000
        # On self.clock, as every time below (design note 9).
        self._last_flush_end = float("-inf")
        self._last_flush_cost = 0.0
        self._next_pass_at = float("-inf")  # when the scheduled pass runs
        # The last writes were an event's, inside its fan-out (design note 12), not a pass.
        self._last_writes_in_fan_out = False
        # Replays in pages, SSE_REPLAY_CONCURRENCY at once (app.sse.replays).
        self.replays = ReplayGate(settings.sse_replay_concurrency)
        self.page_limit = PageLimit(
            events=settings.sse_replay_page_events, bytes=settings.sse_replay_page_kb * 1024
        )
        # Admission checks beyond the connection cap (the memory guard adds one), and those
        # that ask who is coming (the guard's back-off for the clients it just shed).
        self.admission_checks: list[Callable[[], StreamRefusedError | None]] = []
        self.client_checks: list[Callable[[str], StreamRefusedError | None]] = []
        # Made once and shared by every connection (design note 14).
        self._on_ready = self._schedule_flush
        self.on_detached_end: Callable[[Connection], None] = self._end_detached
        # Tasks finishing detached streams (broker, lease, the front's ending).
        self._endings: set[asyncio.Task[None]] = set()

    # --- lifecycle -------------------------------------------------------

    async def start(self) -> None:
        await self.broker.connect(self._fan_out, self._resync)
        await self.limits.start()
        self._tasks = [
            asyncio.create_task(self._every(self.ping_tick_seconds, self.heartbeat)),
            asyncio.create_task(
                self._every(self.settings.sse_cleanup_interval_seconds, self.cleanup)
            ),
            asyncio.create_task(self._watch_shutdown()),
        ]

    async def stop(self) -> None:
        self._draining = True
        self.close_all(CloseReason.SHUTDOWN)
        await asyncio.sleep(0)  # detached streams end on the next iteration
        if self._endings:
            await asyncio.gather(*self._endings, return_exceptions=True)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        await self.limits.stop()
        await self.broker.disconnect()

    async def _every(self, seconds: float, action: Callable[[], object]) -> None:
        while True:
            await asyncio.sleep(seconds)
            try:
                action()
            except Exception:  # a housekeeping bug must not stop housekeeping
                logger.exception("hub housekeeping failed")

    async def _watch_shutdown(self) -> None:
        # Polling, not an Event: the signal arrives as a flag on another object.
        while not shutdown_requested():  # noqa: ASYNC110
            await asyncio.sleep(SHUTDOWN_POLL_SECONDS)
        if self._connections:
            logger.info("shutdown: closing %d open streams", len(self._connections))
        self._draining = True
        self.close_all(CloseReason.SHUTDOWN)

    # --- publishing ------------------------------------------------------

    def draft(
        self,
        channels: str | Sequence[str],
        data: object,
        event: str | None = None,
        *,
        private: bool = False,
    ) -> Draft:
        """One event ready for ``publish_drafts``. Raises ``InvalidChannelError`` or
        ``EncodingError``."""
        names = event_channels(channels, self.settings.publish_max_channels)
        return Draft(names, encode_body(data, event), private)

    async def publish_drafts(self, drafts: Sequence[Draft]) -> list[Event]:
        """Publish ``drafts`` with consecutive ids, all or none. Raises
        ``BrokerUnavailableError``."""
        events = await self.broker.publish(drafts)
        self.counters.published += len(events)
        return events

    async def publish_drafts_once(self, drafts: Sequence[Draft], key: str) -> Published:
        """``publish_drafts`` at most once per ``key`` within ``PUBLISH_IDEMPOTENCY_SECONDS``
        (design note 8): a repeat with the same drafts is answered with the first publish's
        events and ``replayed``. With the window at 0 the key is ignored. Raises
        ``IdempotencyConflictError`` (the key was used with other drafts) or
        ``BrokerUnavailableError``."""
        if self.settings.publish_idempotency_seconds <= 0:
            return Published(await self.publish_drafts(drafts))
        published = await self.broker.publish_once(drafts, PublishKey(key, fingerprint(drafts)))
        if published.replayed:
            self.counters.replayed_publishes += 1
        else:
            self.counters.published += len(published.events)
        return published

    async def publish_frame(
        self,
        channels: str | Sequence[str],
        body: bytes,
        *,
        private: bool = False,
        event_id: str | None = None,
    ) -> str:
        """Publish an already encoded body (another protocol's front, which validated the
        channels and fields under its own rules) with an optional publisher-supplied id;
        returns the event id. Raises ``BrokerUnavailableError``."""
        names = (channels,) if isinstance(channels, str) else tuple(dict.fromkeys(channels))
        (published,) = await self.publish_drafts([Draft(names, body, private, event_id)])
        return published.id

    @overload
    async def publish(
        self,
        channels: str | Sequence[str],
        data: object,
        event: str | None = None,
        *,
        private: bool = False,
    ) -> str: ...

    @overload
    async def publish(
        self,
        channels: str | Sequence[str],
        data: object,
        event: str | None = None,
        *,
        private: bool = False,
        idempotency_key: str,
    ) -> Published: ...

    async def publish(
        self,
        channels: str | Sequence[str],
        data: object,
        event: str | None = None,
        *,
        private: bool = False,
        idempotency_key: str | None = None,
    ) -> str | Published:
        """Publish one event on ``channels`` (a name or several); returns its id. Raises
        ``EncodingError``, ``InvalidChannelError`` or ``BrokerUnavailableError``. A
        ``private`` event reaches only subscribers granted one of its channels. With an
        ``idempotency_key``, at most once per key (``publish_drafts_once``): returns the
        ``Published`` answer, whose ``replayed`` says whether this call published nothing
        and got the first call's id; raises ``IdempotencyConflictError`` as well."""
        draft = self.draft(channels, data, event, private=private)
        if idempotency_key is not None:
            return await self.publish_drafts_once([draft], idempotency_key)
        published = await self.publish_drafts([draft])
        return published[0].id

    # --- positions, for the fronts ----------------------------------------

    async def head_id(self) -> str | None:
        """The newest position of the sequence (what a new stream goes live after), or None
        while the broker cannot answer."""
        try:
            return (await self.broker.replay([], None)).head
        except BrokerUnavailableError:
            return None

    async def can_resume_after(self, event_id: str) -> bool | None:
        """Whether a stream can resume exactly after ``event_id``: a position this broker
        issued, or a publisher's own id while its event is retained. False when such a
        stream would be told ``reset`` instead (an unknown id, history gone); None while the
        broker cannot answer (the stream resolves the id itself once it can)."""
        try:
            replay = await self.broker.replay([], event_id)
        except BrokerUnavailableError:
            return None
        return not replay.reset

    def subscriber_count(self, channels: str | Sequence[str]) -> int:
        """Local streams subscribed to ``channels`` (a stream on several counts once)."""
        if isinstance(channels, str):
            return len(self._channels.get(channels, ()))
        if len(channels) == 1:
            return len(self._channels.get(channels[0], ()))
        return len(self._subscribers(channels))

    def _subscribers(self, channels: tuple[str, ...] | Sequence[str]) -> set[Connection]:
        found: set[Connection] = set()
        for channel in channels:
            subscribers = self._channels.get(channel)
            if subscribers:
                found |= subscribers
        return found

    def _fan_out(self, event: Event) -> None:
        channels = event.channels
        if len(channels) == 1:
            subscribers = self._channels.get(channels[0])
        else:
            # Rare path: a stream on several of the event's channels is pushed once.
            subscribers = self._subscribers(channels)
        patterns = self._patterns
        if not subscribers and not patterns:
            return
        clock = self.clock
        started = clock()
        # Keeping up (design note 12): write now, inside the fan-out, unless a pass is
        # already due or the hub is behind (design note 9), when the event is queued.
        keeping_up = not self._to_flush and started - self._last_flush_end >= self._last_flush_cost
        chunk = frame_chunk(event.frame) if keeping_up else None
        if subscribers:
            self._push(event, subscribers, chunk, started)
        if patterns:
            for channel in channels:
                for matched in patterns.subscribers_for(channel):
                    # A stream also subscribed exactly, by two patterns or through two of
                    # the event's channels gets it once: its cursor skips the second push.
                    self._push(event, matched, chunk, started)
        if keeping_up:
            # These writes were a pass: the next event measures itself against their cost.
            self._last_flush_end = clock()
            self._last_flush_cost = self._last_flush_end - started
            self._last_writes_in_fan_out = True

    def _push(
        self, event: Event, subscribers: set[Connection], chunk: bytes | None, now: float
    ) -> None:
        """Push ``event`` to ``subscribers``: written at once where each allows it when
        ``chunk`` (the event's frame as an HTTP chunk) is given, else queued for a pass.
        ``now``: when the fan-out began, the delivery time of what it writes."""
        counters = self.counters
        if event.private:
            # Rare path: the per-subscriber check costs only private events.
            subscribers = {c for c in subscribers if event.visible_to(c.private_channels)}
        if chunk is None:
            for connection in subscribers:
                outcome = connection.push(event)
                if outcome == DROPPED_OLDEST:
                    counters.dropped += 1
                elif outcome == OVERFLOWED:
                    counters.overflow_disconnects += 1
            return
        for connection in subscribers:
            outcome = connection.push_now(event, chunk, now)
            if outcome == DROPPED_OLDEST:
                counters.dropped += 1
            elif outcome == OVERFLOWED:
                counters.overflow_disconnects += 1

    def _resync(self, why: str) -> None:
        closed = self.close_all(CloseReason.RESYNC)
        logger.warning("resync (%s): closed %d streams to resume from history", why, closed)

    def _schedule_flush(self, connection: Connection) -> None:
        if not self._to_flush:
            loop = asyncio.get_running_loop()
            now = self.clock()
            # Hold only when behind (design note 9): the loop has been idle for less than
            # the last pass took, so events come faster than passes complete.
            cost = self._last_flush_cost
            # After one event's writes inside its fan-out, what arrived meanwhile is a burst,
            # not a hub falling behind: it goes in one pass at once (design note 12).
            if now - self._last_flush_end < cost and not self._last_writes_in_fan_out:
                hold = min(self._coalesce_seconds, COALESCE_COST_FACTOR * cost)
                self._next_pass_at = self._last_flush_end + hold
                # A delay, not loop.call_at: the deadline is on the hub's clock.
                loop.call_later(self._next_pass_at - now, self._flush)
            else:
                self._next_pass_at = now
                loop.call_soon(self._flush)
        self._to_flush.append(connection)

    def _flush(self) -> None:
        connections, self._to_flush = self._to_flush, []
        clock = self.clock
        started = clock()
        # A single event's framed chunk, shared by the streams that get only it.
        chunks: dict[bytes, bytes] = {}
        for connection in connections:
            connection.flush(started, chunks)
        self._last_flush_end = clock()
        self._last_flush_cost = self._last_flush_end - started
        self._last_writes_in_fan_out = False

    # --- subscribing -----------------------------------------------------

    @contextlib.asynccontextmanager
    async def open(
        self,
        channels: Iterable[str],
        client: str = "",
        private_channels: Container[str] = frozenset(),
        *,
        patterns: Iterable[TopicPattern] = (),
        validated: bool = False,
    ) -> AsyncIterator[Connection]:
        """Register a stream on ``channels`` and ``patterns``; it queues live events from
        here on, and writes them once ``catch_up`` has placed it. Private events are
        delivered (live and in replay) on ``private_channels`` only. ``validated``: the
        caller checked the names under its own rules. Raises ``StreamRefusedError``."""
        check = (lambda name: name) if validated else validate_channel
        names = tuple(dict.fromkeys(check(name) for name in channels))
        stream_patterns = tuple(dict.fromkeys(patterns))
        self._admit(client)
        lease = await self._lease(client)
        try:
            settings = self.settings
            connection = Connection(
                names,
                maxsize=settings.sse_queue_size,
                drop_oldest=settings.sse_overflow == "drop_oldest",
                budget=self.budget,
                now=self.clock(),
                client=client,
                private_channels=private_channels,  # type: ignore[arg-type, unused-ignore]
                on_ready=self._on_ready,
            )
            self._register(connection, stream_patterns)
            if self._draining:
                connection.close(CloseReason.SHUTDOWN)
            subscribed: list[str] = []
            watching = False
            try:
                if stream_patterns:
                    await self.broker.watch_every_channel()
                    watching = True
                for name in names:
                    await self.broker.subscribe(name)
                    subscribed.append(name)
                yield connection
            finally:
                if connection.body is not None:
                    # Detached: the stream goes on without this context (design note 14);
                    # everything above succeeded, so it holds every channel and its lease.
                    connection.lease, lease = lease, None
                else:
                    self._unregister(connection)
                    await self._release(subscribed, watching, None)
                    self._log_end(connection)
        finally:
            if lease is not None:
                await self.limits.release_stream(lease)

    async def _release(
        self, subscribed: Iterable[str], watching: bool, lease: StreamLease | None
    ) -> None:
        """What a stream held outside this process: the broker's interest, its lease."""
        for name in subscribed:
            with contextlib.suppress(Exception):
                await self.broker.unsubscribe(name)
        if watching:
            with contextlib.suppress(Exception):
                await self.broker.unwatch_every_channel()
        if lease is not None:
            await self.limits.release_stream(lease)

    def _end_detached(self, connection: Connection) -> None:
        """A detached stream was closed: finish its body and release it (design note 14)."""
        if connection.on_end is None:
            return  # ended already
        connection.on_end = None
        watching = connection in self._patterns_of
        try:
            connection.end_body(self.settings.sse_retry_ms)
        finally:
            self._unregister(connection)
            self._log_end(connection)
        lease, connection.lease = connection.lease, None
        ending, connection.ending = connection.ending, None
        task = asyncio.create_task(
            self._finish_detached(connection.channels, watching, lease, ending)
        )
        self._endings.add(task)
        task.add_done_callback(self._endings.discard)

    async def _finish_detached(
        self,
        channels: tuple[str, ...],
        watching: bool,
        lease: StreamLease | None,
        ending: Callable[[], Awaitable[None]] | None,
    ) -> None:
        try:
            if ending is not None:
                await ending()
        except Exception:  # the front's ending must not keep the broker's interest
            logger.exception("ending a detached stream failed")
        await self._release(channels, watching, lease)

    async def catch_up(
        self, connection: Connection, last_event_id: str | None, *, page: PageLimit | None = None
    ) -> Replay:
        """What ``connection`` must send before going live (events after ``last_event_id``,
        or nothing for a new stream) and the position it goes live after; the events it
        may not see are left out. ``page``: only the first page, the rest to read with
        ``next_page`` (design note 13). Raises ``BrokerUnavailableError``."""
        patterns = self._patterns_of.get(connection)
        replay = await self.broker.replay(
            connection.channels, last_event_id, every_channel=patterns is not None, page=page
        )
        head = parse_event_id(replay.head)
        assert head is not None, replay.head  # brokers issue well-formed positions
        connection.go_live(head)
        events = self._narrow(connection, replay.events)
        return replay if events is replay.events else dataclasses.replace(replay, events=events)

    async def next_page(self, connection: Connection, pages: ReplayPages) -> list[Event] | None:
        """The next page of ``connection``'s replay that holds something it may see: ``[]``
        once the replay is complete, None if history lost an event of it meanwhile.
        Raises ``BrokerUnavailableError``."""
        while True:
            events = await pages.next()
            if not events:
                return events
            kept = self._narrow(connection, events)
            if kept:
                return kept

    def _narrow(self, connection: Connection, events: list[Event]) -> list[Event]:
        """``events`` without those ``connection`` did not subscribe to (a pattern stream
        replays every channel) or may not see (private)."""
        patterns = self._patterns_of.get(connection)
        if patterns is not None:
            events = _matching(events, frozenset(connection.channels), patterns)
        return _visible(events, connection.private_channels)

    @contextlib.asynccontextmanager
    async def subscribe(
        self,
        channels: Iterable[str],
        last_event_id: str | None = None,
        client: str = "",
        private_channels: Container[str] = frozenset(),
    ) -> AsyncIterator[tuple[Connection, Replay]]:
        """``open`` and ``catch_up`` in one step, for consumers that need not wait out a
        broker outage; yields the connection and its replay."""
        async with self.open(channels, client, private_channels) as connection:
            yield connection, await self.catch_up(connection, last_event_id)

    def _admit(self, client: str) -> None:
        limit = self.settings.sse_max_connections
        if len(self._connections) >= limit:
            raise StreamRefusedError(f"too many open streams (limit {limit}); retry later")
        for check in self.admission_checks:
            refusal = check()
            if refusal is not None:
                raise refusal
        for client_check in self.client_checks:
            refusal = client_check(client)
            if refusal is not None:
                raise refusal

    async def _lease(self, client: str) -> StreamLease | None:
        if not client or not self.limits.streams_limited:
            return None
        try:
            return await self.limits.acquire_stream(client)
        except LimitExceededError as exc:
            raise StreamRefusedError(exc.detail, exc.retry_after, status_code=429) from None

    def _register(self, connection: Connection, patterns: tuple[TopicPattern, ...]) -> None:
        self._connections.add(connection)
        for name in connection.channels:
            self._channels.setdefault(name, set()).add(connection)
        if patterns:
            self._patterns_of[connection] = patterns
            for pattern in patterns:
                self._patterns.add(pattern, connection)
        self.counters.opened += 1

    def _unregister(self, connection: Connection) -> None:
        if connection.close_reason is None:
            # Ended without anyone closing it: the writer stopped because the
            # client went away (or the request task was cancelled).
            connection.close_reason = CloseReason.CLIENT_GONE
        self._connections.discard(connection)
        for name in connection.channels:
            subscribers = self._channels.get(name)
            if subscribers is not None:
                subscribers.discard(connection)
                if not subscribers:
                    del self._channels[name]
        for pattern in self._patterns_of.pop(connection, ()):
            self._patterns.discard(pattern, connection)
        connection.discard_queue()
        self.counters.delivered += connection.delivered

    def _log_end(self, connection: Connection) -> None:
        reason = connection.close_reason or CloseReason.CLIENT_GONE
        self.closed_by_reason[reason] += 1
        logger.info(
            "stream closed: reason=%s duration=%.1fs delivered=%d channels=%s client=%s",
            reason,
            self.clock() - connection.opened_at,
            connection.delivered,
            ",".join(connection.channels),
            connection.client,
        )

    # --- housekeeping ----------------------------------------------------

    @property
    def ping_tick_seconds(self) -> float:
        return min(PING_TICK_SECONDS, self.settings.sse_ping_seconds / 4)

    def heartbeat(self) -> None:
        """Ping the streams quiet for a ping interval (less one tick: design note 4)."""
        now = self.clock()
        quiet_since = now - self.settings.sse_ping_seconds + self.ping_tick_seconds
        for connection in self._connections:
            if connection.last_delivery <= quiet_since and connection.pinged_at <= quiet_since:
                connection.request_ping(now)

    def reap_idle(self) -> int:
        deadline = self.clock() - self.settings.sse_idle_timeout_seconds
        idle = [c for c in self._connections if c.last_delivery < deadline and not c.closed]
        for connection in idle:
            connection.close(CloseReason.IDLE)
        self.counters.reaped += len(idle)
        return len(idle)

    def cleanup(self) -> None:
        reaped = self.reap_idle()
        dropped = self.broker.sweep(self.clock())
        if reaped or dropped:
            logger.info(
                "cleanup: reaped %d idle streams, dropped %d idle channels", reaped, dropped
            )

    def close_where(
        self,
        matches: Callable[[Connection], bool],
        reason: CloseReason,
        retry_ms: Callable[[], int] | None = None,
    ) -> int:
        """Close the open streams ``matches`` selects; each one's last frame is
        ``retry: retry_ms()`` (called per stream, so the caller can jitter it)."""
        chosen = [c for c in self._connections if not c.closed and matches(c)]
        for connection in chosen:
            if retry_ms is not None:
                connection.farewell_retry_ms = retry_ms()
            connection.close(reason)
        return len(chosen)

    def close_all(self, reason: CloseReason) -> int:
        open_connections = [c for c in self._connections if not c.closed]
        for connection in open_connections:
            connection.close(reason)
        return len(open_connections)

    # --- introspection ---------------------------------------------------

    @property
    def connections(self) -> Collection[Connection]:
        """The open streams, read-only (the memory guard weighs them to shed)."""
        return self._connections

    @property
    def draining(self) -> bool:
        """The server is on its way out: every stream has been told to close."""
        return self._draining

    @property
    def connection_count(self) -> int:
        return len(self._connections)

    @property
    def channel_count(self) -> int:
        return len(self._channels)

    def broker_stats(self) -> dict[str, object]:
        """The broker's own figures: its URL (credentials redacted) and ``state``."""
        return self.broker.stats()

    def stats(self) -> dict[str, object]:
        counters = self.counters
        live_delivered = sum(c.delivered for c in self._connections)
        return {
            "connections": len(self._connections),
            "channels": len(self._channels),
            "patterns": self._patterns.stats(),
            "queued": sum(c.queued for c in self._connections),
            "queued_bytes": self.budget.bytes,
            "queued_bytes_limit": self.budget.limit,
            "published": counters.published,
            "replayed_publishes": counters.replayed_publishes,
            "delivered": counters.delivered + live_delivered,
            "dropped": counters.dropped,
            "overflow_disconnects": counters.overflow_disconnects,
            "reaped": counters.reaped,
            "opened": counters.opened,
            "closed": dict(self.closed_by_reason),
            "replays": self.replays.stats(),
            "broker": self.broker.stats(),
            "client_limits": self.limits.stats(),
        }


def _matching(
    events: list[Event], channels: frozenset[str], patterns: tuple[TopicPattern, ...]
) -> list[Event]:
    """Events of every channel narrowed to what a pattern stream subscribed to."""
    return [
        e
        for e in events
        if not channels.isdisjoint(e.channels)
        or any(p.matches(channel) for p in patterns for channel in e.channels)
    ]


def _visible(events: list[Event], private_channels: Container[str]) -> list[Event]:
    """Events without the private ones this subscriber may not see."""
    if not any(event.private for event in events):
        return events
    return [event for event in events if event.visible_to(private_channels)]
