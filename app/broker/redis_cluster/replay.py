"""Replay on ``redis+cluster://``: an exact head from per-shard snapshots, and replays read
in pages with a cursor per source.

Design decisions (read before changing):

1. **Replay** first reads every shard's log head (on its reader's node), then the
   stream's channels, one ``MULTI`` per shard (``XRANGE`` from ``REFERENCE_WINDOW_MS``
   before the cursor, so references to later home entries are found; per-channel trim
   detection through ``v`` as on ``redis://``), then the references' tokens. The head
   is just below the smallest frontier, and only events at or below it are replayed.
   Why that is exact with per-shard snapshots: positions are per shard, so each log
   head bounds what its shard has issued. An event at or below the head was in its
   shard's streams when they were read (its shard had issued it before the heads
   were read, and a reference precedes its home entry). An event above the head had
   not been delivered by any worker, since no reader's frontiers were all past it,
   and every worker's readers start at or below any head it will hand out (their start
   is the smallest frontier at boot): it arrives live after the stream registered. A
   reference whose home entry is not written yet stands for an event written after the
   heads were read: above the head, live too. A cursor above the head that some shard
   issued (a Mercure hub-wide cursor) is kept as the head; one at or past every
   frontier is ``unknown_id``.
2. **Paged replay** (contract item 6 of ``app.broker.base``) keeps that head and reads
   each source (a channel stream, or a shard's log for a pattern replay) with its own
   cursor: bounded ``XRANGE`` reads (``COUNT``) up to the head's last entry on that
   shard, the first from ``REFERENCE_WINDOW_MS`` before the client's id as above. What
   a read returns above the client's id waits in the replay's pool, references
   resolved to their home events; a page sends, in position order, the pooled events
   at or below the *bound*, the smallest position among the sources not read to their
   end, since every entry a source has not returned yet lies above its last one (a
   home entry lies above its references: ``publishing``). Only the sources at the
   bound are read again, each with its share of the page (``app.broker.pages``), so the
   pool holds about a page plus the references whose home events lie further on.
   Trimming between reads is caught from each source's own cursor: the oldest entry
   read names a predecessor (``v``) newer than the last entry read, or the log's oldest
   entry is newer than it (``history_expired``).
"""

from __future__ import annotations

import asyncio
import heapq
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, cast

from redis.exceptions import RedisError

from app.broker.base import (
    UNBOUNDED_PAGE,
    BrokerUnavailableError,
    PageLimit,
    Replay,
    ReplayPages,
)
from app.broker.pages import ReadSize
from app.broker.redis_cluster.nodes import Node
from app.broker.redis_cluster.publishing import REFERENCE_WINDOW_MS
from app.broker.redis_cluster.shards import UNAVAILABLE, Shard, ShardedBroker
from app.broker.redis_entries import (
    CHANNEL_FIELD,
    REFERENCE_FIELD,
    TICK_FIELD,
    channel_lost,
    channels_of,
    entry_event,
    log_lost,
)
from app.wire.event import Event
from app.wire.event_id import EARLIEST, EventKey, format_event_id, parse_event_id

__all__ = ["ClusterReplay"]

logger = logging.getLogger("herald.broker")


class ClusterReplay(ShardedBroker):
    """``replay``: the head, the first page, and the pages after it (``_ClusterPages``)."""

    async def replay(
        self,
        channels: Sequence[str],
        last_event_id: str | None,
        *,
        every_channel: bool = False,
        page: PageLimit | None = None,
    ) -> Replay:
        if self._listener is None or any(s.position is None for s in self.shards):
            raise BrokerUnavailableError(UNAVAILABLE)
        if self._dropped_upto is not None:
            if min(s.frontier for s in self.shards) <= self._dropped_upto:
                raise BrokerUnavailableError(UNAVAILABLE)  # until the merge is past it (``merge``)
            self._dropped_upto = None
        exact = last_event_id != EARLIEST
        after: EventKey | None = None
        try:
            if last_event_id is not None:
                after = parse_event_id(last_event_id) if exact else (0, 0)
                if after is None:
                    after = await self._resolve(last_event_id, channels)
            # First every log's head, then the channels (note 1: the order matters).
            frontiers = await self._heads()
            low = min(frontiers)
            head_key = (low[0], low[1] - 1)
            head = format_event_id(head_key)
            if last_event_id is None:
                return Replay(head=head)
            if after is None or (exact and after >= max(frontiers)):
                return Replay(head=head, reset=True, reason="unknown_id")
            if after > head_key:
                # A cursor some shard issued past this head: kept as the head (note 1).
                return Replay(head=format_event_id(after))
            pages = _ClusterPages(
                self, None if every_channel else channels, after, head_key, page, exact=exact
            )
            events = await pages.next()
            while page is None and events is not None and not pages.done:
                more = await pages.next()  # one replay in one answer: every page at once
                events = None if more is None else events + more
        except (RedisError, OSError) as exc:
            self.nodes.refresh_soon()
            logger.debug("cluster replay failed: %s", exc)
            raise BrokerUnavailableError(UNAVAILABLE) from None
        if events is None:
            return Replay(head=head, reset=True, reason="history_expired")
        return Replay(head=head, events=events, rest=None if pages.done else pages)

    async def _heads(self) -> list[EventKey]:
        """Every shard's frontier where its reader reads: one pipeline per node."""
        by_node: dict[tuple[Node, bool], list[Shard]] = {}
        for shard in self.shards:
            by_node.setdefault(self._read_target(shard), []).append(shard)

        async def read(target: tuple[Node, bool], shards: list[Shard]) -> list[Any]:
            async with self.nodes.client(*target).pipeline(transaction=False) as pipe:
                for shard in shards:
                    pipe.xrevrange(shard.log_key, count=1)
                return await pipe.execute()

        targets = list(by_node)
        answers = await asyncio.gather(*(read(t, by_node[t]) for t in targets))
        frontiers: dict[int, EventKey] = {}
        for target, newest_of in zip(targets, answers, strict=True):
            for shard, newest in zip(by_node[target], newest_of, strict=True):
                frontiers[shard.index] = (
                    self._frontier(shard.index, cast(bytes, newest[0][0]))
                    if newest
                    else (0, self.shard_count + shard.index)
                )
        return [frontiers[shard.index] for shard in self.shards]

    async def _referenced(self, references: Sequence[_Reference]) -> list[Event]:
        """The events that references point to, at their home positions; a reference whose
        home entry is not there yet is left out (that event arrives live: note 1)."""
        wanted: dict[int, dict[str, _Reference]] = {}
        for item in references:
            wanted.setdefault(item.home, {})[item.token] = item
        if not wanted:
            return []
        homes = list(wanted)
        answers = await asyncio.gather(
            *(self._get_references(self.shards[h], list(wanted[h])) for h in homes)
        )
        events = []
        for home, entry_ids in zip(homes, answers, strict=True):
            for reference, entry_id in zip(wanted[home].values(), entry_ids, strict=True):
                if entry_id:
                    position = self.position(home, entry_id)
                    fields = reference.fields
                    events.append(entry_event(entry_id, reference.channels, fields, position))
        return events

    async def _get_references(self, shard: Shard, tokens: list[str]) -> list[bytes | None]:
        node, readonly = self._read_target(shard)
        keys = [self.reference_key(shard.index, token) for token in tokens]
        async with self.nodes.client(node, readonly).pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.get(key)
            return cast(list[bytes | None], await pipe.execute())

    async def _resolve(self, supplied_id: str, channels: Sequence[str]) -> EventKey | None:
        """The position of the copy a stream on ``channels`` takes of the event a publisher
        gave this id: the lowest of its channels' shards holding the id, else the smallest
        position any shard holds (an id from other channels: any copy is as good)."""
        wanted = sorted({self.shard_of(c) for c in channels})
        others = [k for k in range(self.shard_count) if k not in wanted]
        for group in (wanted, others):
            try:
                found = await asyncio.gather(*(self._get_supplied(k, supplied_id) for k in group))
            except (RedisError, OSError):
                self.nodes.refresh_soon()
                raise BrokerUnavailableError(UNAVAILABLE) from None
            keys = [self.position(k, entry) for k, entry in zip(group, found, strict=True) if entry]
            if keys:
                return keys[0] if group is wanted else min(keys)
        return None

    async def _get_supplied(self, k: int, supplied_id: str) -> bytes | None:
        node, readonly = self._read_target(self.shards[k])
        found = await self.nodes.client(node, readonly).get(self.supplied_id_key(k, supplied_id))
        return cast(bytes | None, found)


@dataclass(frozen=True, slots=True)
class _Reference:
    """A channel entry standing for a multi-shard event homed on another shard."""

    home: int
    token: str
    channels: tuple[str, ...]
    fields: dict[bytes, bytes]


@dataclass(slots=True)
class _Source:
    """One ordered source of a paged replay: a channel stream, or a shard's log."""

    shard: Shard
    key: str
    channel: str | None  # None: the shard's log (a pattern replay)
    start: str  # the next XRANGE's low end: inclusive at first, then after the last read
    last: EventKey | None = None  # the position of the last entry read
    done: bool = False


class _ClusterPages(ReplayPages):
    """A replay's cursors over the shards (note 2)."""

    def __init__(
        self,
        broker: ClusterReplay,
        channels: Sequence[str] | None,
        after: EventKey,
        head: EventKey,
        limit: PageLimit | None,
        *,
        exact: bool,
    ) -> None:
        self._broker = broker
        self._from = after  # the client's cursor: events at or below it were had
        self._after = after  # the last event returned
        self._head = head
        self._limit = limit or UNBOUNDED_PAGE
        self._exact = exact
        self._pool: list[tuple[EventKey, int, Event]] = []
        self._order = 0
        shards = broker.shards
        if channels is None:
            self._sources = [
                _Source(shard, shard.log_key, None, broker._range_start(shard.index, after))
                for shard in shards
            ]
        else:
            window = (max(0, after[0] - REFERENCE_WINDOW_MS), 0)
            self._sources = [
                _Source(shard, broker.key(channel), channel, broker._range_start(k, window))
                for channel in dict.fromkeys(channels)
                for k in [broker.shard_of(channel)]
                for shard in [shards[k]]
            ]
        self._size = ReadSize(self._limit, len(self._sources), broker.recent_largest.largest())
        self.done = False

    async def next(self) -> list[Event] | None:
        if self.done:
            return []
        limit = self._limit
        page: list[Event] = []
        size = 0
        while True:
            active = [source for source in self._sources if not source.done]
            unread = [source for source in active if source.last is None]
            bound = None if unread else min((s.last for s in active if s.last), default=None)
            pool = self._pool
            while pool and (not active or (bound is not None and pool[0][0] <= bound)):
                key, _, event = pool[0]
                if key <= self._after:  # the same event through another source
                    heapq.heappop(pool)
                    continue
                if page and (len(page) >= limit.events or size + len(event.frame) > limit.bytes):
                    return page
                heapq.heappop(pool)
                page.append(event)
                size += len(event.frame)
                self._after = key
            if not active and not pool:
                self.done = True
                return page
            if page:
                return page
            # Nothing can go yet: read the sources holding the bound back.
            behind = unread or [s for s in active if s.last == bound]
            # Every read ends before the call does, and an unreachable node is
            # BrokerUnavailableError (contract item 6: the stream waits and calls again); a
            # read left running would move its source on under that next call.
            reads = await asyncio.gather(
                *(self._read(source) for source in behind), return_exceptions=True
            )
            for outcome in reads:
                if isinstance(outcome, RedisError | OSError):
                    self._broker.nodes.refresh_soon()
                    raise BrokerUnavailableError(UNAVAILABLE) from outcome
                if isinstance(outcome, BaseException):
                    raise outcome
            if any(lost for lost in reads):
                return None

    async def _read(self, source: _Source) -> bool:
        """One bounded read of ``source`` into the pool; True if history lost an event
        after the replay's cursor and this source's own."""
        broker, k = self._broker, source.shard.index
        count = self._size.count
        node, readonly = broker._read_target(source.shard)
        high = broker._range_end(k, self._head)
        async with broker.nodes.client(node, readonly).pipeline(transaction=True) as pipe:
            pipe.time()
            pipe.exists(source.key)
            if source.channel is None:
                pipe.xrange(source.key, count=1)  # the log's oldest entry
            pipe.xrange(source.key, min=source.start, max=high, count=count)
            results = await pipe.execute()
        seconds, micros = results[0]
        now_ms = seconds * 1000 + micros // 1000
        entries = results[-1]
        checked = self._from if source.last is None else max(self._from, source.last)
        if self._exact or source.last is not None:
            position_of = partial(broker.position, k)
            if source.channel is None:
                oldest = results[2][0] if results[2] else None
                if log_lost(checked, oldest, position_of):
                    return True
            elif channel_lost(
                checked, bool(results[1]), entries, now_ms, broker.channel_ttl_ms, position_of
            ):
                return True
        found: list[Event] = []
        references: list[_Reference] = []
        for entry_id, fields in entries:
            if source.channel is None:
                if TICK_FIELD in fields:
                    continue
                names: tuple[str, ...] = channels_of(fields[CHANNEL_FIELD])
            else:
                raw = fields.get(CHANNEL_FIELD)
                names = channels_of(raw) if raw else (source.channel,)
                reference = fields.get(REFERENCE_FIELD)
                if reference is not None:
                    home, _, token = reference.decode().partition(":")
                    references.append(_Reference(int(home), token, names, fields))
                    continue
            position = broker.position(k, entry_id)
            if position > self._from:
                found.append(entry_event(entry_id, names, fields, position))
        if references:
            found += await broker._referenced(references)
        if entries:
            last_id = cast(bytes, entries[-1][0])
            source.last = broker.position(k, last_id)
            source.start = "(" + last_id.decode()
        source.done = len(entries) < count
        self._size.saw(found)
        for event in found:
            if self._from < event.key <= self._head:
                self._order += 1
                heapq.heappush(self._pool, (event.key, self._order, event))
        return False
