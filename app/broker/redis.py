"""``redis://`` / ``rediss://``: Redis Streams as the backplane for many workers and instances.

Design decisions (read before changing):

1. One event log for the deployment, ``<prefix>:log``: a stream every event is
   appended to, by one Lua script that also numbers it (``<prefix>:log:n``,
   ``INCR``) and appends it to its channel's stream ``<prefix>:{<channel>}``
   under the *same* entry id. Redis runs scripts one at a time, so the log's ids
   are one sequence for every channel: no two events share an id (before this,
   each channel stream numbered its own entries and events of two channels tied
   within a millisecond), and a single ``Last-Event-ID`` is an exact cursor for
   any set of channels. Entry id = SSE event id, so a cursor works on any worker
   of any instance, after restarts.
2. Channel streams are the replay index: ``XADD … MAXLEN ~ SSE_HISTORY_SIZE``
   trims each channel on its own, ``PEXPIRE`` (refreshed on every publish)
   drops idle ones, and a resume reads ``XRANGE (after +`` on the stream's
   channels only, so replay costs what is replayed, not all traffic. The log is
   trimmed to ``REDIS_LOG_SIZE``: it only has to cover how far a reader lags.
3. One reader per worker, on its own connection, reading the log from its last
   position (``XREAD BLOCK``) and fanning out the events of channels with local
   subscribers. One position means no per-channel cursors to keep in step: a
   channel subscribed, a reconnect or a worker restart never re-reads or skips
   anything, and subscribing is local (no round trip, no window between a
   channel being registered and the reader watching it). The price: every
   worker reads every event; an event for a channel nobody here watches costs a
   dict lookup. Never one Redis connection per client.
4. Gaps are detected, not assumed away: each log entry carries its number, and
   the reader checks it got ``n + 1`` after ``n``. A jump (the log was trimmed
   past a reader that lagged behind ``REDIS_LOG_SIZE`` events) or a counter that
   went back (Redis lost its data) means live delivery may have skipped events:
   the broker calls the hub's ``resync``, which closes every stream so clients
   resume from history with their ``Last-Event-ID``.
5. Unreachable Redis is a state, not a crash, at start-up as while running:
   ``connect`` does not fail, the worker serves; publishes raise
   ``BrokerUnavailableError`` (503), replays raise it too (streams wait, see
   ``app.sse.stream_response``); the reader retries with capped exponential backoff
   and continues from its position, so nothing still in the log is missed.
   Only a malformed URL fails, and settings validation catches it before any
   worker starts.
6. The reader's socket timeout is longer than its block time: with redis-py's
   defaults a socket timeout shorter than the block turns every quiet
   ``XREAD BLOCK`` into an error.
7. Events published locally are not delivered locally directly: they arrive
   through the reader like everyone else's, so every worker sees one order.
8. Replay reads the log's head and the channels' entries in one ``MULTI``:
   one snapshot, so ``head`` covers exactly what was returned. Whether trimming
   took something the client had not seen is known exactly: each channel entry
   carries the id of the channel's previous entry (``v``), so if the oldest
   entry after the client's id names a predecessor newer than that id, the
   predecessor is gone (``history_expired``). The first entry of a channel
   stream (new, or re-created after it expired) has no predecessor; then, as
   for a missing key, events of an expired stream can only be missed by an id
   older than the channel TTL before it.

9. Publishing is one script call for many events: a batch (``POST /events``)
   is one call, numbered with one ``INCRBY``, and single publishes from
   concurrent requests share calls too (``app.broker.publish_queue``). A keyed
   publish's record, ``<prefix>:idem:<key>``, is read and written by that call
   (``app.broker.idempotency``): every worker and instance on this Redis shares it.
10. An event on several channels is one log entry whose channel field lists
   them (newline-separated: no channel or topic holds a control character), appended to each
   channel's stream under its one id; channel entries carry the list too (only
   when there are several), so a replay merging channels keeps it once and
   knows all its channels (private visibility).

11. Replays go in pages when the hub asks (``PageLimit``, contract item 6 of
   ``app.broker.base``). The first page is read in the ``MULTI`` that reads the
   head (note 8), each source's ``XRANGE`` with a ``COUNT``; every later page is
   one ``MULTI`` of ``XRANGE (<last sent> <head> COUNT n`` per source, merged by
   id (``app.broker.pages``), with the same trim check as the first (the ``v`` of
   the oldest entry read, the log's oldest entry for a pattern replay) run from
   the last event sent: an event trimmed before its page was read is reported,
   and the stream resets. Events above the head are never read: they arrive
   live. Nothing is kept between pages but the cursor and the head.

Durability: an acknowledged publish is in Redis's memory; it survives a Redis
restart as far as Redis persistence goes (AOF with ``appendfsync always`` for
every acknowledged event, ``everysec`` loses up to a second on a crash).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable, Sequence
from typing import Any, Unpack, cast
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from app.broker.base import (
    UNBOUNDED_PAGE,
    BrokerUnavailableError,
    Draft,
    EventListener,
    PageLimit,
    Published,
    PublishKey,
    Replay,
    ReplayPages,
    ResyncListener,
)
from app.broker.capabilities import RedisAccess
from app.broker.packed_script import call_script
from app.broker.pages import ReadSize, cut_page
from app.broker.publish_queue import CallKey, CallResult
from app.broker.publish_script import (
    CONFLICTING,
    PUBLISH_SCRIPT,
    REPLAYED,
    KeyedRun,
    publish_arguments,
    split_reply,
)
from app.broker.redis_base import RedisBrokerBase, RedisOptions
from app.broker.redis_connections import (
    BACKOFF_INITIAL_SECONDS,
    BACKOFF_MAX_SECONDS,
    COMMAND_TIMEOUT_SECONDS,
    CONNECT_TIMEOUT_SECONDS,
    READ_BLOCK_MS,
    READER_SOCKET_TIMEOUT_SECONDS,
    READER_STOP_SECONDS,
)
from app.broker.redis_entries import (
    CHANNEL_FIELD,
    NUMBER_FIELD,
    channel_lost,
    channels_of,
    entry_event,
    key_of,
    log_lost,
)
from app.wire.encoding import encode_frame
from app.wire.event import Event
from app.wire.event_id import EARLIEST, EventKey, format_event_id, parse_event_id

__all__ = ["PUBLISH_SCRIPT", "RedisBroker", "redact_url"]

logger = logging.getLogger("herald.broker")

UNAVAILABLE = "the event backplane (Redis) is unavailable; retry later"


def redact_url(url: str) -> str:
    """``url`` without its password, for logs and stats."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username or ''}:***@{parts.hostname}"
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


class RedisBroker(RedisBrokerBase, RedisAccess):
    def __init__(
        self, url: str, *, block_ms: int = READ_BLOCK_MS, **options: Unpack[RedisOptions]
    ) -> None:
        super().__init__(
            url,
            kind="redis",
            redacted_url=redact_url(url),
            unavailable=UNAVAILABLE,
            block_ms=block_ms,
            **options,
        )
        self.log_key = f"{self.key_prefix}:log"
        self.counter_key = f"{self.key_prefix}:log:n"
        self._commands: aioredis.Redis | None = None
        self._reader: aioredis.Redis | None = None
        self._publish: Any = None  # redis-py's Script (EVALSHA, reloaded after a restart)
        # The reader's place in the log: the last entry it handled and its number.
        # None until the first successful read of the log's head.
        self._position: bytes | None = None
        self._number = 0
        self._verify_after_error = False
        self._task: asyncio.Task[None] | None = None

    # --- keys ------------------------------------------------------------

    def key(self, channel: str) -> str:
        return f"{self.key_prefix}:{{{channel}}}"

    def record_key(self, key: str) -> str:
        """Where a keyed publish's record lives (``app.broker.idempotency``)."""
        return f"{self.key_prefix}:idem:{key}"

    def supplied_id_key(self, supplied_id: str) -> str:
        # Expires with the channel TTL: it need only outlive the event's history.
        return f"{self.key_prefix}:id:{supplied_id}"

    @property
    def client(self) -> aioredis.Redis:
        """The command connection pool, for other parts of Herald that keep state in this Redis
        (``app.fleet.redis``); never the reader's connection, which is blocked in ``XREAD``."""
        if self._commands is None:
            raise RuntimeError("the Redis broker is not connected")
        return self._commands

    # --- lifecycle -------------------------------------------------------

    async def connect(self, listener: EventListener, resync: ResyncListener | None = None) -> None:
        self._listener = listener
        self._resync = resync
        self._closing = False
        options: dict[str, Any] = {
            "socket_connect_timeout": CONNECT_TIMEOUT_SECONDS,
            "health_check_interval": 30,
        }
        # Bounded and blocking: past max_connections a command waits for a free connection
        # (up to its timeout) rather than failing with "Too many connections".
        pool = aioredis.BlockingConnectionPool.from_url(
            self.url,
            max_connections=self.max_connections,
            timeout=COMMAND_TIMEOUT_SECONDS,
            socket_timeout=COMMAND_TIMEOUT_SECONDS,
            **options,
        )
        self._commands = aioredis.Redis.from_pool(pool)  # owns the pool: aclose() closes it
        self._reader = aioredis.from_url(
            self.url,
            socket_timeout=READER_SOCKET_TIMEOUT_SECONDS,
            single_connection_client=True,
            **options,
        )
        self._publish = self._commands.register_script(PUBLISH_SCRIPT)
        failure: BaseException | None = None
        try:
            await self._commands.ping()
            # Now rather than in the reader: a stream opened right after start-up
            # must not have to wait for the reader's first round trip.
            await self._find_position()
        except (RedisError, OSError) as exc:
            failure = exc  # transient by nature: the reader reconnects
        self._connected(failure)
        self._task = asyncio.create_task(self._read_loop(), name="herald redis reader")

    async def disconnect(self) -> None:
        self._closing = True
        await self._publishing.close(READER_STOP_SECONDS)
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.wait({task}, timeout=READER_STOP_SECONDS)
        for client in (self._reader, self._commands):
            if client is not None:
                with contextlib.suppress(Exception):
                    await client.aclose()
        if task is not None and not task.done():
            # Closing the connection fails the read; the loop then sees _closing.
            await asyncio.wait({task}, timeout=READER_STOP_SECONDS)
            if not task.done():
                logger.warning("redis reader did not stop in time; leaving it")
        self._reader = self._commands = None
        self._listener = self._resync = None
        self.state = "disconnected"

    # --- publish ---------------------------------------------------------

    async def publish(self, drafts: Sequence[Draft]) -> list[Event]:
        assert self._publish is not None, "connect() first"
        if not drafts:
            return []
        return _events(await self._publishing.publish(drafts), drafts)

    async def publish_once(self, drafts: Sequence[Draft], key: PublishKey) -> Published:
        assert self._publish is not None, "connect() first"
        entry_ids, replayed = await self._publishing.publish_once(drafts, key)
        return Published(_events(entry_ids, drafts), replayed)

    def script_arguments(
        self, drafts: Iterable[Draft], keys: Sequence[CallKey] = ()
    ) -> tuple[list[Any], list[Any]]:
        """The keys and arguments of one ``PUBLISH_SCRIPT`` call publishing ``drafts``, the
        keyed publishes among them named by ``keys``."""
        sizes = (self.log_size, self.history_size, self.channel_ttl_ms)
        parts = (
            (
                draft,
                [self.key(channel) for channel in draft.channels],
                [self.supplied_id_key(draft.event_id)] if draft.event_id else [],
                "",
            )
            for draft in drafts
        )
        runs = [
            KeyedRun(k.first, k.count, self.record_key(k.key.key), k.key.fingerprint.hex())
            for k in keys
        ]
        return publish_arguments(
            self.log_key, self.counter_key, sizes, parts, keyed=runs, window_ms=self.idempotency_ms
        )

    async def _write_call(self, drafts: list[Draft], keys: list[CallKey]) -> CallResult:
        script_keys, args = self.script_arguments(drafts, keys)
        assert self._publish is not None and self._commands is not None
        try:
            reply = await call_script(self._commands, self._publish, script_keys, args)
        except (RedisError, OSError) as exc:
            self._mark_down(exc)
            raise BrokerUnavailableError(UNAVAILABLE) from None
        if not keys:
            return CallResult(cast(list[bytes], reply))
        entry_ids, statuses = split_reply(cast(list[bytes], reply), len(keys))
        result = CallResult(entry_ids)
        for status, k in zip(statuses, keys, strict=True):
            if status == REPLAYED:
                result.replayed.update(range(k.first, k.first + k.count))
            elif status == CONFLICTING:
                result.conflicting.update(range(k.first, k.first + k.count))
        return result

    # --- the reader ------------------------------------------------------

    async def _read_loop(self) -> None:
        backoff = BACKOFF_INITIAL_SECONDS
        while not self._closing:
            try:
                assert self._reader is not None
                if self._position is None or self._verify_after_error:
                    await self._find_position()
                assert self._position is not None
                entries = await self._read_log(self._reader, self.log_key, self._position)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # RedisError and OSError are the expected ones; redis-py has also been seen
                # raising KeyError from its pool when a connection closed under a read.
                if self._closing:
                    return
                if not isinstance(exc, RedisError | OSError):
                    logger.warning("redis reader: unexpected %r; reconnecting", exc)
                self.read_errors += 1
                self._verify_after_error = self._position is not None
                self._mark_down(exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX_SECONDS)
                continue
            if self.state != "ok":
                self._reading_again()
            backoff = BACKOFF_INITIAL_SECONDS
            if entries:
                self._deliver(entries)

    async def _find_position(self) -> None:
        """Start at the log's head, or check the log is still the one we were reading."""
        assert self._reader is not None
        newest, number = await self._log_head(self._reader, self.log_key, self.counter_key)
        if self._position is not None and number < self._number:
            # The counter went back: Redis lost its data (restart without persistence).
            self._skipped(f"redis lost its data (event {number} after {self._number})")
            self._position = None
        if self._position is None:
            self._position = newest or b"0-0"
            self._number = number
        self._verify_after_error = False

    def _deliver(self, entries: list[Any]) -> None:
        listener = self._listener
        for entry_id, fields in entries:
            number = int(fields[NUMBER_FIELD])
            if number != self._number + 1:
                self._skipped(f"events {self._number + 1} to {number - 1} left the log unread")
            self._number = number
            self._position = entry_id
            if listener is not None:
                self._offer(listener, entry_id, fields)

    # --- replay ----------------------------------------------------------

    async def replay(
        self,
        channels: Sequence[str],
        last_event_id: str | None,
        *,
        every_channel: bool = False,
        page: PageLimit | None = None,
    ) -> Replay:
        if self._commands is None or self._position is None:
            # Until the reader holds a position, live delivery after a head is not assured.
            raise BrokerUnavailableError(UNAVAILABLE)
        exact = last_event_id != EARLIEST
        after: EventKey | None = None
        if last_event_id is not None:
            after = parse_event_id(last_event_id) if exact else (0, 0)
            if after is None:
                after = await self._resolve(last_event_id)
        # Each source: a channel's stream, or the log for a pattern subscription.
        sources = [self.log_key] if every_channel else [self.key(c) for c in channels]
        pages = _RedisPages(self, tuple(channels), sources, every_channel, page)
        reading = last_event_id is not None and after is not None
        low = f"({format_event_id(after)}" if exact and after is not None else "-"
        try:
            async with self._commands.pipeline(transaction=True) as pipe:
                pipe.time()
                pipe.xinfo_stream(self.log_key)
                if reading:
                    pages.queue_reads(pipe, low, "+")
                results = await pipe.execute(raise_on_error=False)
        except (RedisError, OSError) as exc:
            self._mark_down(exc)
            raise BrokerUnavailableError(UNAVAILABLE) from None
        if any(isinstance(r, Exception) and not isinstance(r, ResponseError) for r in results):
            raise BrokerUnavailableError(UNAVAILABLE)
        seconds, micros = results[0]
        now_ms = seconds * 1000 + micros // 1000
        log_info = results[1]
        if isinstance(log_info, dict):
            head_key = key_of(log_info["last-generated-id"])
        else:
            # No log yet: a position every future event (Redis time, later) is after.
            head_key = (now_ms - 1, 0)
        head = format_event_id(head_key)
        if last_event_id is None:
            return Replay(head=head)
        if after is None or after > head_key:
            return Replay(head=head, reset=True, reason="unknown_id")
        first_entry = log_info.get("first-entry") if isinstance(log_info, dict) else None
        events = pages.take(results[2:], after, head_key, now_ms, first_entry, exact=exact)
        if events is None:
            return Replay(head=head, reset=True, reason="history_expired")
        return Replay(head=head, events=events, rest=None if pages.done else pages)

    async def _read_page(self, pages: _RedisPages, after: EventKey, head: EventKey) -> list[Any]:
        """A later page's reads in one ``MULTI``: Redis time, the log's oldest entry (for a
        pattern replay's trim check), and each source's next entries up to ``head``."""
        if self._commands is None:
            raise BrokerUnavailableError(UNAVAILABLE)
        try:
            async with self._commands.pipeline(transaction=True) as pipe:
                pipe.time()
                pipe.xrange(self.log_key, count=1)
                pages.queue_reads(pipe, f"({format_event_id(after)}", format_event_id(head))
                results = await pipe.execute(raise_on_error=False)
        except (RedisError, OSError) as exc:
            self._mark_down(exc)
            raise BrokerUnavailableError(UNAVAILABLE) from None
        if any(isinstance(r, Exception) for r in results):
            raise BrokerUnavailableError(UNAVAILABLE)
        return results

    async def _resolve(self, supplied_id: str) -> EventKey | None:
        """The position of the event a publisher gave this id (while its key lives)."""
        assert self._commands is not None
        try:
            found = await self._commands.get(self.supplied_id_key(supplied_id))
        except (RedisError, OSError) as exc:
            self._mark_down(exc)
            raise BrokerUnavailableError(UNAVAILABLE) from None
        return key_of(found) if found else None

    def stats(self) -> dict[str, object]:
        return {
            "url": self.redacted_url,
            **super().stats(),
            "log_position": self._position.decode() if self._position else None,
        }


def _events(entry_ids: list[bytes], drafts: Sequence[Draft]) -> list[Event]:
    """What entry_event would make of the entries just written, built from the drafts
    without the entries' field maps (this runs once per published event)."""
    events = []
    for entry_id, draft in zip(entry_ids, drafts, strict=True):
        event_id = draft.event_id if draft.event_id is not None else entry_id.decode()
        frame = encode_frame(event_id, draft.body)
        events.append(Event(key_of(entry_id), event_id, draft.channels, frame, draft.private))
    return events


class _RedisPages(ReplayPages):
    """A replay's cursor over Redis (design note 11): each page is one ``MULTI`` of bounded
    ``XRANGE`` reads from the last event returned up to the head, merged in id order."""

    def __init__(
        self,
        broker: RedisBroker,
        channels: tuple[str, ...],
        sources: list[str],
        every_channel: bool,
        limit: PageLimit | None,
    ) -> None:
        self._broker = broker
        self._channels = channels
        self._sources = sources
        self._every_channel = every_channel
        self._limit = limit or UNBOUNDED_PAGE
        self._size = ReadSize(self._limit, len(sources), broker.recent_largest.largest())
        self._after: EventKey = (0, 0)
        self._head: EventKey = (0, 0)
        self.done = False

    def queue_reads(self, pipe: Any, low: str, high: str) -> None:
        count = self._size.count
        for source in self._sources:
            pipe.exists(source)
            pipe.xrange(source, min=low, max=high, count=count)

    def take(
        self,
        results: Sequence[Any],
        after: EventKey,
        head: EventKey,
        now_ms: int,
        first_entry: Any,
        *,
        exact: bool = True,
    ) -> list[Event] | None:
        """The page in ``results`` (each source's EXISTS and XRANGE), or None if history
        lost an event after ``after``; moves the cursor past it."""
        broker = self._broker
        count = self._size.count
        runs: list[tuple[Sequence[Event], bool]] = []
        for index in range(len(self._sources)):
            exists, entries = results[2 * index], results[2 * index + 1]
            if isinstance(entries, Exception):
                raise BrokerUnavailableError(UNAVAILABLE)
            if self._every_channel:
                if exact and log_lost(after, first_entry):
                    return None
                run = [
                    entry_event(entry_id, channels_of(fields[CHANNEL_FIELD]), fields)
                    for entry_id, fields in entries
                ]
            else:
                if exact and channel_lost(
                    after, bool(exists), entries, now_ms, broker.channel_ttl_ms
                ):
                    return None
                alone = (self._channels[index],)
                run = []
                for entry_id, fields in entries:
                    names = fields.get(CHANNEL_FIELD)
                    run.append(
                        entry_event(entry_id, channels_of(names) if names else alone, fields)
                    )
            self._size.saw(run)
            runs.append((run, len(entries) >= count))
        events, more = cut_page(runs, self._limit)
        self._after = events[-1].key if events else after
        self._head = head
        self.done = not more
        return events

    async def next(self) -> list[Event] | None:
        if self.done:
            return []
        results = await self._broker._read_page(self, self._after, self._head)
        seconds, micros = results[0]
        now_ms = seconds * 1000 + micros // 1000
        first = results[1][0] if results[1] else None
        return self.take(results[2:], self._after, self._head, now_ms, first)
