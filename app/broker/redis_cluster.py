"""``redis+cluster://`` / ``rediss+cluster://``: Herald's event log spread over a Redis Cluster.

Design decisions (read before changing):

1. **Log shards.** ``REDIS_CLUSTER_SHARDS`` (S) logs, shard k under the hash tag
   ``{<prefix>:s<k>}``: its log ``…:log``, its counter ``…:log:n``, the streams of
   its channels ``…:c:<channel>`` and its publisher-id keys ``…:id:<id>``. Channel c
   belongs to shard ``crc32(c) mod S``, so a channel's slot (and master) is its
   shard's, and one Lua script (``PUBLISH_SCRIPT``, the one ``redis://`` runs) writes
   a shard's part of a call atomically: Redis Cluster refuses cross-slot scripts.
2. **One order across shards.** Shard k's log entry ``<ms>-<n>`` (id assigned by its
   master) is the event at position ``(ms, n*S + k)``, wire id ``<ms>-<n*S+k>``: the
   two-part id format and ``EventKey`` stay, and an id decodes back to its shard and
   entry. Each worker merges the S logs by position: an event is delivered only once
   every shard's *frontier* (the smallest position its next entry can have, from the
   last entry read: ``(ms, (n+1)*S + k)``, monotonic since stream ids are) is past it.
   Every worker reads every shard, so all deliver one order.
3. **Ticks.** An idle shard would hold the merge back for ever, so a reader that holds
   an event back because shard j's frontier is behind it runs ``TICK_SCRIPT`` on j:
   it appends a ``t`` entry (an entry of the log, trimmed like it, never an event)
   with an id past the held event, unless j's log already is past it (so N workers
   waiting on one shard write one tick). At most one tick per shard in flight per
   worker, and none within ``TICK_INTERVAL_SECONDS`` of the last. Cost: an event on a
   quiet deployment waits one round trip to each idle shard's master (plus the
   replication to its replica, note 6) and costs up to S - 1 tick writes; under steady
   traffic on every shard, no ticks. Every empty shard gets one tick at start-up, so
   every log has a head.
4. **Readers.** One reader task and connection per shard (not per master, not per
   client): ``XREAD`` cannot span slots in a cluster (CROSSSLOT, even on one node), so
   waking at once for every shard needs one blocking read per shard key; the
   alternatives poll or wait out a block on another shard's key. S is bounded by the
   setting (16 by default: 16 connections per worker, whatever the clients), and a
   per-shard task follows its slot by itself through failovers and migrations.
   A worker places all its readers at one start (see ``_position_all``).
   Gaps are detected per shard as on ``redis://``: events carry their number, ticks
   the number of the last event before them; a jump (trimmed unread) or a number
   that went back (a failover lost entries the reader had, data lost) → resync.
5. **Held events are bounded** by ``REDIS_CLUSTER_HELD_EVENTS`` per worker. Every event
   read is held until the merge passes it, wanted or not (a stream that subscribes
   later is owed every event above its replay's head, note 8; interest is decided at
   release), as raw entries (no Event built for a channel nobody here watches). Ticks
   for events a local stream wants go at most every ``TICK_INTERVAL_SECONDS`` per shard,
   for the others every ``TICK_IDLE_INTERVAL_SECONDS``; one tick goes past the newest
   held event. A shard that cannot be read (a master down until its replica is
   promoted) holds every delivery back: past the bound the reader lets the held events
   go and resyncs, and replays wait (503 to streams, which wait) until every frontier
   is past what was let go, so no head is ever handed out below a dropped event.
6. **Durability.** After each shard's script, ``WAIT <REDIS_CLUSTER_WAIT_REPLICAS>
   <timeout>`` in the same pipeline (one round trip, on the connection that wrote:
   WAIT counts the replication of that connection's writes, which is also why the
   broker routes its own commands instead of using redis-py's ``RedisCluster``, whose
   keyless WAIT would go to any node; ``app.broker.cluster_nodes`` reads ``CLUSTER SLOTS``
   itself). Fewer
   replicas → not acknowledged (503). Readers and replays read each shard from its
   replica (``READONLY``; the master only when the shard has no replica in sync): an
   entry delivered from a master and lost in a failover would let the new master give
   its number and id to another event, shifting every stream's cursor past events it
   never got. A reader stays on its node while it answers (an old master back as a
   replica first serves its own stale data), and replays read where the reader reads.
7. **Multi-shard events: one event, one id.** An event whose channels span shards is
   written once, on its home shard (its first channel's): its log entry, its home
   channels' streams, and a reference key ``…:ref:<token>`` → its entry id. *Before*
   that, each other shard involved gets a reference: an entry in each of its channels'
   streams carrying the token (``r``), with a tick in its log so channel ids stay log
   ids. Live, every worker delivers the home log entry, once. A replay of a channel
   finds references in its stream and looks the token up on the home shard. So: one
   id for every subscriber, the publisher's answer included (the lead's first design,
   one copy per shard all carrying the home key, let a copy written after its home copy
   land behind heads already handed out; copies with their own positions, tried next,
   gave one event several ids). Cost: two round trips for a multi-shard publish. A
   publish is acknowledged only when every part succeeded; no all-or-nothing across
   shards exists, so a failed one (503) may have landed (references alone are never
   delivered). A worker's publishes keep their order across shards: each call's first
   event is placed above the newest position the worker was answered (the floor of
   ``PUBLISH_SCRIPT``), so a client that publishes A, then B once A is answered, has
   every stream see A first. Across workers, and within one call (a batch spanning
   shards), events follow their positions (one order for every stream: the master
   clocks, ticks 10 ms ahead, a shard's place in the millisecond), not the request.
8. **Replay** first reads every shard's log head (on its reader's node), then the
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
9. Unreachable nodes are a state (as on ``redis://``): ``connect`` never fails, publishes
   and replays raise ``BrokerUnavailableError``; MOVED refreshes the slot map and
   retries, ASK retries once on the importing node after ``ASKING``, TRYAGAIN and
   CLUSTERDOWN retry shortly within the command timeout. A publish whose connection
   failed is not retried (it may have run): 503.
10. **Paged replay** (contract item 6 of ``app.broker.base``) keeps note 8's
   head and reads each source (a channel stream, or a shard's log for a pattern
   replay) with its own cursor: bounded ``XRANGE`` reads (``COUNT``) up to the
   head's last entry on that shard, the first from ``REFERENCE_WINDOW_MS`` before
   the client's id as in note 8. What a read returns above the client's id waits
   in the replay's pool, references resolved to their home events; a page sends,
   in position order, the pooled events at or below the *bound*, the smallest
   position among the sources not read to their end, since every entry a source
   has not returned yet lies above its last one (note 11 makes that hold for
   references too). Only the sources at the bound are read again, each with its
   share of the page (``app.broker.pages``), so the pool holds about a page plus
   the references whose home events lie further on. Trimming between reads is
   caught from each source's own cursor: the oldest entry read names a
   predecessor (``v``) newer than the last entry read, or the log's oldest entry
   is newer than it (``history_expired``).
11. **A home entry lies above its references.** After a multi-shard publish's
   references are written, the worker's floor (note 7) is raised to their
   positions, so the home entries of that call go above them. A channel stream's
   entries then name events at or after their own position, which note 10's
   bound needs; without it, a master whose clock lags would place an event below
   a reference already passed.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import heapq
import logging
import time
import uuid
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, cast

import redis.asyncio as aioredis
from redis.crc import key_slot
from redis.exceptions import (
    AskError,
    MovedError,
    RedisError,
)

from app.broker.base import (
    UNBOUNDED_PAGE,
    BrokerUnavailableError,
    Draft,
    EventListener,
    PageLimit,
    Replay,
    ReplayPages,
    ResyncListener,
)
from app.broker.cluster_nodes import ClusterNodes, Node
from app.broker.cluster_url import ClusterURL, parse_cluster_url
from app.broker.pages import ReadSize
from app.broker.publish_queue import CallResult
from app.broker.publish_script import PUBLISH_SCRIPT, publish_arguments
from app.broker.redis_base import RedisBrokerBase
from app.broker.redis_connections import (
    BACKOFF_INITIAL_SECONDS,
    BACKOFF_MAX_SECONDS,
    DEFAULT_MAX_CONNECTIONS,
    READ_COUNT,
    READER_STOP_SECONDS,
)
from app.broker.redis_entries import (
    CHANNEL_FIELD,
    NUMBER_FIELD,
    REFERENCE_FIELD,
    TICK_FIELD,
    channel_lost,
    channels_of,
    draft_fields,
    entry_event,
    key_of,
    log_lost,
)
from app.sse.event import Event
from app.sse.event_id import EARLIEST, EventKey, format_event_id, parse_event_id

__all__ = ["TICK_SCRIPT", "RedisClusterBroker", "shard_of"]

logger = logging.getLogger("herald.broker")

DEFAULT_SHARDS = 16
READ_BLOCK_MS = 2000  # short: a reader on a slot that moved away learns it within this
READER_SOCKET_TIMEOUT_SECONDS = READ_BLOCK_MS / 1000 + 10
TICK_INTERVAL_SECONDS = 0.005
# A tick puts its shard this far ahead of the event it passes, so the events of the next
# few milliseconds need no tick of their own (measured: 15 ticks per event otherwise).
TICK_AHEAD_MS = 10
# Ticks for held events nobody here waits for: they only keep the held events bounded.
TICK_IDLE_INTERVAL_SECONDS = 0.1
UNAVAILABLE = "the event backplane (Redis Cluster) is unavailable; retry later"
# A multi-shard event's home entry is written at most this long after its references
# (else the publish fails), and replays read channel streams this much further back to
# find references whose event is after the cursor (note 8).
REFERENCE_WRITE_SECONDS = 10.0
REFERENCE_WINDOW_MS = 15_000

# KEYS: log, counter. ARGV: log size, shard count S, shard k, the position (ms, seq) to
# get past, and how far past (ms). Appends a tick unless the log's frontier is already
# past the position; its id is `ms + ahead` (or `*` on an empty log: a first head).
# Returns the log's last entry id.
TICK_SCRIPT = """
local S, k = tonumber(ARGV[2]), tonumber(ARGV[3])
local ms, seq, ahead = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)[1]
if last then
  local dash = string.find(last[1], '-', 1, true)
  local lms = tonumber(string.sub(last[1], 1, dash - 1))
  local ln = tonumber(string.sub(last[1], dash + 1))
  if lms > ms or (lms == ms and (ln + 1) * S + k > seq) then
    return last[1]
  end
end
local number = redis.call('GET', KEYS[2]) or '0'
local id = '*'
if last or ms > 0 then
  id = tostring(ms + ahead) .. '-*'
end
return redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], id, 't', '1', 'n', number)
"""

PUBLISH_SHA = hashlib.sha1(PUBLISH_SCRIPT.encode()).hexdigest()
TICK_SHA = hashlib.sha1(TICK_SCRIPT.encode()).hexdigest()


def shard_of(channel: str, shards: int) -> int:
    return zlib.crc32(channel.encode()) % shards


@dataclass(slots=True)
class _Shard:
    index: int
    tag: str
    slot: int
    # The reader's place: the last entry read, the number of the last event, the frontier.
    position: bytes | None = None
    number: int = 0
    frontier: EventKey = (0, 0)
    verify: bool = False
    renumber: bool = False
    reader: aioredis.Redis | None = None
    reader_node: Node | None = None
    reader_readonly: bool = False
    task: asyncio.Task[None] | None = None
    ok: bool = False
    # Ticks: the position to get past, the task writing it, when the last was written.
    tick_wanted: EventKey | None = None
    tick_task: asyncio.Task[None] | None = None
    tick_at: float = 0.0
    tick_interval: float = TICK_INTERVAL_SECONDS
    scripts_loaded: set[Node] = field(default_factory=set)

    @property
    def log_key(self) -> str:
        return f"{self.tag}:log"

    @property
    def counter_key(self) -> str:
        return f"{self.tag}:log:n"


class RedisClusterBroker(RedisBrokerBase):
    def __init__(
        self,
        url: str,
        *,
        history_size: int,
        channel_ttl_seconds: float,
        key_prefix: str = "herald",
        log_size: int = 10_000,
        shards: int = DEFAULT_SHARDS,
        wait_replicas: int = 1,
        wait_timeout_ms: int = 1000,
        held_events: int = 10_000,
        block_ms: int = READ_BLOCK_MS,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
    ) -> None:
        self.parsed: ClusterURL = parse_cluster_url(url)
        super().__init__(
            url,
            history_size=history_size,
            channel_ttl_seconds=channel_ttl_seconds,
            key_prefix=key_prefix,
            log_size=log_size,
            block_ms=block_ms,
            max_connections=max_connections,
            name="cluster",
            where=f"redis cluster at {self.parsed.redacted()}",
            unavailable=UNAVAILABLE,
        )
        self.shard_count = max(1, shards)
        self.wait_replicas = wait_replicas
        self.wait_timeout_ms = wait_timeout_ms
        self.held_limit = held_events
        self.shards = [
            _Shard(k, tag, key_slot(tag.encode()))
            for k in range(self.shard_count)
            for tag in [f"{{{key_prefix}:s{k}}}"]
        ]
        self.ticks = 0
        self.nodes = ClusterNodes(
            self.parsed, {shard.slot for shard in self.shards}, self.max_connections
        )
        self._positioning = asyncio.Lock()
        # The newest position this worker's publishes got: the next ones go above it.
        self._floor: EventKey = (0, 0)
        # Entries held back until every frontier is past them (note 2): (frontier, order,
        # shard, entry id, fields, wanted when read); how many were wanted; the newest
        # position given up past the bound (note 5).
        self._held: list[tuple[EventKey, int, int, bytes, dict[bytes, bytes], bool]] = []
        self._held_order = 0
        self._held_wanted = 0
        self._held_newest: EventKey = (0, 0)  # the largest frontier among them
        self._dropped_upto: EventKey | None = None

    # --- keys and positions ----------------------------------------------

    def shard_of(self, channel: str) -> int:
        return shard_of(channel, self.shard_count)

    def key(self, channel: str) -> str:
        return f"{self.shards[self.shard_of(channel)].tag}:c:{channel}"

    def supplied_id_key(self, shard: int, supplied_id: str) -> str:
        return f"{self.shards[shard].tag}:id:{supplied_id}"

    def reference_key(self, shard: int, token: str) -> str:
        """The home entry id of a multi-shard event, found by its references' token."""
        return f"{self.shards[shard].tag}:ref:{token}"

    def position(self, shard: int, entry_id: bytes | str) -> EventKey:
        ms, n = key_of(entry_id)
        return ms, n * self.shard_count + shard

    def _frontier(self, shard: int, entry_id: bytes | str) -> EventKey:
        ms, n = key_of(entry_id)
        return ms, (n + 1) * self.shard_count + shard

    def _range_start(self, shard: int, after: EventKey) -> str:
        """The first entry id of ``shard`` whose position is above ``after`` (inclusive)."""
        ms, seq = after
        return f"{ms}-{max(0, (seq - shard) // self.shard_count + 1)}"

    def _range_end(self, shard: int, head: EventKey) -> str:
        """The last entry id of ``shard`` whose position is at or below ``head`` (inclusive)."""
        ms, seq = head
        if seq < shard:
            return f"{ms - 1}-{2**64 - 1}" if ms else "0-0"
        return f"{ms}-{(seq - shard) // self.shard_count}"

    # --- lifecycle -------------------------------------------------------

    async def connect(self, listener: EventListener, resync: ResyncListener | None = None) -> None:
        self._listener = listener
        self._resync = resync
        self._closing = False
        if self.nodes.closing:  # connected again after a disconnect
            self.nodes = ClusterNodes(
                self.parsed, {shard.slot for shard in self.shards}, self.max_connections
            )
        try:
            await self.nodes.refresh(force=True)
            await asyncio.gather(*(self._tick(shard, (0, 0)) for shard in self.shards))
            await self._position_all()
        except (RedisError, OSError, BrokerUnavailableError) as exc:
            logger.warning(
                "redis cluster unreachable at %s: %s; serving degraded until it is back",
                self.parsed.redacted(),
                exc,
            )
            self.state = "down"
        else:
            self.state = "ok"
        for shard in self.shards:
            shard.task = asyncio.create_task(
                self._read_loop(shard), name=f"herald cluster reader {shard.index}"
            )

    async def disconnect(self) -> None:
        self._closing = True
        await self._publishing.close(READER_STOP_SECONDS)
        tasks = {s.task for s in self.shards if s.task is not None}
        tasks |= {s.tick_task for s in self.shards if s.tick_task is not None}
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=READER_STOP_SECONDS)
        for shard in self.shards:
            await self._drop_reader(shard)
            shard.task = shard.tick_task = None
        await self.nodes.close()
        self._listener = self._resync = None
        self.state = "disconnected"

    # --- publish ---------------------------------------------------------

    async def publish(self, drafts: Sequence[Draft]) -> list[Event]:
        if not drafts:
            return []
        if self._closing or self._listener is None:
            raise BrokerUnavailableError(UNAVAILABLE)
        entry_ids = await self._publishing.publish(drafts)
        events = []
        for entry_id, draft in zip(entry_ids, drafts, strict=True):
            home = self.shard_of(draft.channels[0])
            key = self.position(home, entry_id)
            events.append(entry_event(entry_id, draft.channels, draft_fields(draft), key))
        return events

    def shard_parts(
        self, drafts: Sequence[Draft]
    ) -> tuple[dict[int, list[_Part]], dict[int, list[_Part]]]:
        """Each shard's part of a call, in request order: the events whose home it is
        (first channel's shard), and the references to events homed elsewhere (note 7)."""
        homes: dict[int, list[_Part]] = {}
        references: dict[int, list[_Part]] = {}
        for index, draft in enumerate(drafts):
            by_shard: dict[int, list[str]] = {}
            for channel in draft.channels:
                by_shard.setdefault(self.shard_of(channel), []).append(self.key(channel))
            home = self.shard_of(draft.channels[0])
            token = uuid.uuid4().hex if len(by_shard) > 1 else ""
            aliases = [self.supplied_id_key(home, draft.event_id)] if draft.event_id else []
            if token:
                aliases.append(self.reference_key(home, token))
                for k, keys in by_shard.items():
                    if k != home:
                        part = _Part(index, draft, keys, [], f"{home}:{token}")
                        references.setdefault(k, []).append(part)
            homes.setdefault(home, []).append(_Part(index, draft, by_shard[home], aliases, ""))
        return homes, references

    async def _write_call(self, drafts: list[Draft]) -> CallResult:
        """References first, then the events on their home shards: each phase one round
        trip per shard involved, concurrently (note 7). The home entry ids in order, and
        the indexes of the drafts that failed: a request is answered with its ids if every
        shard its events touch took its part, else 503, so a shard that fails fails only
        the requests that touch it."""
        homes, references = self.shard_parts(drafts)
        failed: set[int] = set()
        started = time.monotonic()
        if references:
            placed: dict[int, list[bytes]] = {}
            failed |= await self._all_shards(references, placed)
            # Each event's home entry goes above its references (paged replay, note 11).
            for k, entry_ids in placed.items():
                self._floor = max(self._floor, self.position(k, entry_ids[-1]))
            if time.monotonic() - started > REFERENCE_WRITE_SECONDS:
                # Replays look this far back for references (note 8): too late to write.
                return [b""] * len(drafts), set(range(len(drafts)))
            # An event whose references did not all land is not written at home.
            homes = {
                k: [p for p in part if p.index not in failed]
                for k, part in homes.items()
                if any(p.index not in failed for p in part)
            }
        written: dict[int, list[bytes]] = {}
        failed |= await self._all_shards(homes, written)
        home_ids: list[bytes] = [b""] * len(drafts)
        for k, entry_ids in written.items():
            for part, entry_id in zip(homes[k], entry_ids, strict=True):
                home_ids[part.index] = entry_id
            # What this worker publishes next goes after this, on any shard (note 7).
            self._floor = max(self._floor, self.position(k, entry_ids[-1]))
        return home_ids, failed

    async def _all_shards(
        self, parts: dict[int, list[_Part]], written: dict[int, list[bytes]]
    ) -> set[int]:
        """Every shard's part at once; fills ``written`` with what succeeded and returns the
        indexes of the drafts of the shards that failed."""
        shards = list(parts)
        results = await asyncio.gather(
            *(self._write_shard(self.shards[k], parts[k]) for k in shards),
            return_exceptions=True,
        )
        failed: set[int] = set()
        for k, outcome in zip(shards, results, strict=True):
            if isinstance(outcome, BaseException):
                if isinstance(outcome, asyncio.CancelledError):
                    raise outcome
                if isinstance(outcome, RedisError | OSError):
                    self.nodes.refresh_soon()
                elif not isinstance(outcome, BrokerUnavailableError):
                    logger.error("cluster publish on shard %d failed: %r", k, outcome)
                failed.update(p.index for p in parts[k])
            else:
                written[k] = outcome
        return failed

    async def _write_shard(self, shard: _Shard, part: list[_Part]) -> list[bytes]:
        sizes = (self.log_size, self.history_size, self.channel_ttl_ms)
        keys, args = publish_arguments(
            shard.log_key,
            shard.counter_key,
            sizes,
            ((p.draft, p.channel_keys, p.aliases, p.reference) for p in part),
            (self.shard_count, shard.index, *self._floor),
        )
        commands: list[tuple[Any, ...]] = [("EVALSHA", PUBLISH_SHA, len(keys), *keys, *args)]
        if self.wait_replicas:
            commands.append(("WAIT", self.wait_replicas, self.wait_timeout_ms))
        results = await self.nodes.on_master(shard.slot, commands, (PUBLISH_SHA, PUBLISH_SCRIPT))
        if self.wait_replicas and int(results[1]) < self.wait_replicas:
            # Written on the master only: a failover could lose it, so not acknowledged.
            raise BrokerUnavailableError(UNAVAILABLE)
        return cast(list[bytes], results[0])

    # --- ticks -----------------------------------------------------------

    async def _tick(self, shard: _Shard, past: EventKey) -> None:
        command = ("EVALSHA", TICK_SHA, 2, shard.log_key, shard.counter_key)
        ahead = TICK_AHEAD_MS if past[0] else 1
        args = (self.log_size, self.shard_count, shard.index, past[0], past[1], ahead)
        await self.nodes.on_master(shard.slot, [(*command, *args)], (TICK_SHA, TICK_SCRIPT))
        self.ticks += 1

    def _want_tick(self, shard: _Shard, past: EventKey, interval: float) -> None:
        if shard.tick_wanted is None or shard.tick_wanted < past:
            shard.tick_wanted = past
        shard.tick_interval = interval
        if shard.tick_task is None and not self._closing:
            shard.tick_task = asyncio.create_task(self._ticker(shard))

    async def _ticker(self, shard: _Shard) -> None:
        try:
            while shard.tick_wanted is not None and shard.frontier <= shard.tick_wanted:
                pause = shard.tick_at + shard.tick_interval - time.monotonic()
                if pause > 0:
                    await asyncio.sleep(pause)
                past = shard.tick_wanted
                if shard.frontier > past:
                    break
                shard.tick_at = time.monotonic()
                try:
                    await self._tick(shard, past)
                except (RedisError, OSError, BrokerUnavailableError):
                    # The shard is down or moving: its reader will find it; try again later.
                    self.nodes.refresh_soon()
                    await asyncio.sleep(BACKOFF_INITIAL_SECONDS)
                # The reader sees the tick on the replica; wait for it before another.
                for _ in range(20):
                    if shard.frontier > past:
                        break
                    await asyncio.sleep(TICK_INTERVAL_SECONDS)
        finally:
            shard.tick_task = None
            if shard.tick_wanted is not None and shard.frontier > shard.tick_wanted:
                shard.tick_wanted = None

    # --- the readers -----------------------------------------------------

    async def _reader_for(self, shard: _Shard) -> aioredis.Redis:
        """The shard's reader connection. It stays on its node while the node answers, even
        if the slot map changes: an old master returning as a replica first serves its own
        stale (possibly divergent) data until its sync completes (note 6)."""
        if shard.reader is not None:
            return shard.reader
        node, readonly = self.nodes.read_node(shard.slot)
        if readonly and not await self.nodes.replica_in_sync(node):
            node, readonly = self.nodes.route(shard.slot)[0], False
        reader = self.nodes.new_client(node, readonly, READER_SOCKET_TIMEOUT_SECONDS)
        shard.reader, shard.reader_node, shard.reader_readonly = reader, node, readonly
        return reader

    def _read_target(self, shard: _Shard) -> tuple[Node, bool]:
        """Where replays and position checks read a shard: where its reader reads, so a
        snapshot holds at least what the reader has delivered (note 8)."""
        if shard.reader_node is not None:
            return shard.reader_node, shard.reader_readonly
        return self.nodes.read_node(shard.slot)

    async def _drop_reader(self, shard: _Shard) -> None:
        reader, shard.reader, shard.reader_node = shard.reader, None, None
        shard.reader_readonly = False
        if reader is not None:
            with contextlib.suppress(Exception):
                await reader.aclose(close_connection_pool=True)

    async def _read_loop(self, shard: _Shard) -> None:
        backoff = BACKOFF_INITIAL_SECONDS
        while not self._closing:
            try:
                if not self.nodes.routes:
                    await self.nodes.refresh()
                if shard.position is None:
                    await self._position_all()
                elif shard.verify:
                    await self._find_position(shard)
                reader = await self._reader_for(shard)
                response = await reader.xread(
                    {shard.log_key: shard.position},  # type: ignore[dict-item, unused-ignore]
                    count=READ_COUNT,
                    block=self.block_ms,
                )
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self._closing:
                    return
                if isinstance(exc, MovedError | AskError):
                    # The slot moved (a migration, a failover): follow it at once.
                    await self._drop_reader(shard)
                    with contextlib.suppress(RedisError, OSError):
                        await self.nodes.refresh(force=True)
                    continue
                if not isinstance(exc, RedisError | OSError | BrokerUnavailableError):
                    logger.warning("cluster reader %d: unexpected %r", shard.index, exc)
                self.read_errors += 1
                shard.verify = shard.position is not None
                self._shard_down(shard, exc)
                await self._drop_reader(shard)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX_SECONDS)
                with contextlib.suppress(RedisError, OSError):
                    await self.nodes.refresh()
                continue
            if not shard.ok:
                shard.ok = True
                if all(s.ok for s in self.shards) and self.state != "ok":
                    logger.info("redis cluster reader reconnected to %s", self.parsed.redacted())
                    self.reconnects += 1
                    self.state = "ok"
            backoff = BACKOFF_INITIAL_SECONDS
            if response:
                self._take(shard, cast(list[Any], response)[0][1])

    async def _find_position(self, shard: _Shard) -> None:
        """After a read error: check the shard's log is still the one being read."""
        async with (await self._reader_for(shard)).pipeline(transaction=True) as pipe:
            pipe.xrevrange(shard.log_key, count=1)
            pipe.get(shard.counter_key)
            newest, counter = await pipe.execute()
        number = int(counter or 0)
        if shard.position is not None and number < shard.number:
            self._skipped(f"shard {shard.index} lost events (event {number} after {shard.number})")
            shard.position = cast(bytes, newest[0][0]) if newest else b"0-0"
            shard.number = number
            shard.frontier = self._frontier(shard.index, shard.position)
        shard.verify = False
        shard.ok = True

    async def _position_all(self) -> None:
        """Place every shard's reader at one start position: just after the smallest frontier
        less one, the lowest head any replay can return from now on. Starting each shard at
        its own head instead would skip the events between that head and a lower replay
        head: a replay leaves those to live delivery (note 8), which never read them."""
        async with self._positioning:
            if all(shard.position is not None for shard in self.shards):
                return
            for shard in self.shards:
                await self._reader_for(shard)
            heads = await asyncio.gather(*(self._start_of(shard) for shard in self.shards))
            low = min(frontier for frontier, _ in heads)
            start = (low[0], low[1] - 1)
            for shard, (_, counter) in zip(self.shards, heads, strict=True):
                if shard.position is not None:
                    continue
                ms, seq = start
                first = max(0, (seq - shard.index) // self.shard_count + 1)
                # XREAD reads after its id: the id just before (ms, first).
                shard.position = (
                    f"{ms}-{first - 1}" if first else f"{max(0, ms - 1)}-{2**64 - 1}"
                ).encode()
                shard.number = counter
                shard.renumber = True  # the first entry read sets the count (note 4)
                shard.frontier = (ms, first * self.shard_count + shard.index)
                shard.verify = False
                shard.ok = True

    async def _start_of(self, shard: _Shard) -> tuple[EventKey, int]:
        async with (await self._reader_for(shard)).pipeline(transaction=True) as pipe:
            pipe.xrevrange(shard.log_key, count=1)
            pipe.get(shard.counter_key)
            newest, counter = await pipe.execute()
        if not newest:
            return (0, self.shard_count + shard.index), int(counter or 0)
        return self._frontier(shard.index, cast(bytes, newest[0][0])), int(counter or 0)

    def _take(self, shard: _Shard, entries: list[Any]) -> None:
        """Entries of one shard, in its order: check numbers, move its frontier, hold every
        event, then deliver what every frontier has passed.

        Every event is held, not only those a local stream wants now: a stream that
        subscribes later counts on every event above its replay's head reaching the
        listener after its subscription, and interest is decided at release (note 8)."""
        k = shard.index
        held = self._held
        for entry_id, fields in entries:
            number = int(fields[NUMBER_FIELD])
            tick = TICK_FIELD in fields
            if shard.renumber:
                shard.renumber = False
                shard.number = number if tick else number - 1
            expected = shard.number if tick else shard.number + 1
            if number > expected:
                self._skipped(
                    f"shard {k}: events {shard.number + 1} to {number - 1} left the log unread"
                )
            elif number < expected:
                self._skipped(f"shard {k}: event {number} after {shard.number} (entries lost)")
            shard.number = number
            shard.position = entry_id
            shard.frontier = self._frontier(k, entry_id)
            if tick:
                continue
            wanted = self._wants(fields[CHANNEL_FIELD])
            self._held_wanted += wanted
            self._held_order += 1
            heapq.heappush(held, (shard.frontier, self._held_order, k, entry_id, fields, wanted))
            self._held_newest = max(self._held_newest, shard.frontier)
        self._release()

    def _release(self) -> None:
        held = self._held
        if not held:
            return
        passed = min(shard.frontier for shard in self.shards)
        listener = self._listener
        shards = self.shard_count
        # Entries are keyed by their frontier, (ms, (n+1)*S + k): the position plus S.
        while held and (held[0][0][0], held[0][0][1] - shards) < passed:
            _, _, k, entry_id, fields, wanted = heapq.heappop(held)
            self._held_wanted -= wanted
            if listener is not None:
                self._offer(listener, entry_id, fields, self.position(k, entry_id))
        if not held:
            return
        if len(held) > self.held_limit:
            # Let them go; replays wait until every frontier is past them (note 5).
            newest = max(entry[0] for entry in held)
            self._dropped_upto = max(self._dropped_upto or newest, newest)
            count = len(held)
            self._held = []
            self._held_wanted = 0
            self._skipped(f"{count} events held back past REDIS_CLUSTER_HELD_EVENTS")
            return
        oldest_frontier = held[0][0]
        oldest = (oldest_frontier[0], oldest_frontier[1] - shards)
        # One tick past the newest held event releases them all (its id is past it).
        newest = (self._held_newest[0], self._held_newest[1] - shards)
        # Quick ticks for what a local stream waits for; slow ones only bound the heap.
        interval = TICK_INTERVAL_SECONDS if self._held_wanted else TICK_IDLE_INTERVAL_SECONDS
        for shard in self.shards:
            if shard.frontier <= oldest:
                self._want_tick(shard, newest, interval)

    def _shard_down(self, shard: _Shard, exc: BaseException) -> None:
        shard.ok = False
        self._mark_down(exc, f"redis cluster shard {shard.index}")

    # --- replay ----------------------------------------------------------

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
                raise BrokerUnavailableError(UNAVAILABLE)  # until the merge is past (note 5)
            self._dropped_upto = None
        exact = last_event_id != EARLIEST
        after: EventKey | None = None
        try:
            if last_event_id is not None:
                after = parse_event_id(last_event_id) if exact else (0, 0)
                if after is None:
                    after = await self._resolve(last_event_id, channels)
            # First every log's head, then the channels (note 8: the order matters).
            frontiers = await self._heads()
            low = min(frontiers)
            head_key = (low[0], low[1] - 1)
            head = format_event_id(head_key)
            if last_event_id is None:
                return Replay(head=head)
            if after is None or (exact and after >= max(frontiers)):
                return Replay(head=head, reset=True, reason="unknown_id")
            if after > head_key:
                # A cursor some shard issued past this head: kept as the head (note 8).
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
        by_node: dict[tuple[Node, bool], list[_Shard]] = {}
        for shard in self.shards:
            by_node.setdefault(self._read_target(shard), []).append(shard)

        async def read(target: tuple[Node, bool], shards: list[_Shard]) -> list[Any]:
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
        home entry is not there yet is left out (that event arrives live: note 8)."""
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

    async def _get_references(self, shard: _Shard, tokens: list[str]) -> list[bytes | None]:
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

    def stats(self) -> dict[str, object]:
        return {
            "url": self.parsed.redacted(),
            **super().stats(),
            "shards": self.shard_count,
            "shards_ok": sum(1 for s in self.shards if s.ok),
            "held_events": len(self._held),
            "ticks": self.ticks,
            "slot_map_refreshes": self.nodes.refreshes,
        }


@dataclass(frozen=True, slots=True)
class _Part:
    """One draft in one shard's script call."""

    index: int
    draft: Draft
    channel_keys: list[str]
    aliases: list[str]
    reference: str  # '<home shard>:<token>' for a reference, '' for the event itself


_Parts = dict[int, list["_Part"]]


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

    shard: _Shard
    key: str
    channel: str | None  # None: the shard's log (a pattern replay)
    start: str  # the next XRANGE's low end: inclusive at first, then after the last read
    last: EventKey | None = None  # the position of the last entry read
    done: bool = False


class _ClusterPages(ReplayPages):
    """A replay's cursors over the shards (note 10)."""

    def __init__(
        self,
        broker: RedisClusterBroker,
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
        self._size = ReadSize(self._limit, len(self._sources))
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
            reads = await asyncio.gather(*(self._read(source) for source in behind))
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
