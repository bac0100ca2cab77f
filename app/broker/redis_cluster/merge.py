"""The merge on ``redis+cluster://``: one reader per shard, the shards' logs merged into one
order, ticks that move idle shards on, and a bound on what the merge holds back.

Design decisions (read before changing):

1. **The merge.** An event is delivered only once every shard's frontier (``shards``)
   is past it. Every worker reads every shard, so all deliver one order.
2. **Ticks.** An idle shard would hold the merge back for ever, so a reader that holds
   an event back because shard j's frontier is behind it runs ``TICK_SCRIPT`` on j:
   it appends a ``t`` entry (an entry of the log, trimmed like it, never an event)
   with an id past the held event, unless j's log already is past it (so N workers
   waiting on one shard write one tick). At most one tick per shard in flight per
   worker, and none within ``TICK_INTERVAL_SECONDS`` of the last. Cost: an event on a
   quiet deployment waits one round trip to each idle shard's master (plus the
   replication to its replica, note 4) and costs up to S - 1 tick writes; under steady
   traffic on every shard, no ticks. Every empty shard gets one tick at start-up, so
   every log has a head.
3. **Readers.** One reader task and connection per shard (not per master, not per
   client): ``XREAD`` cannot span slots in a cluster (CROSSSLOT, even on one node), so
   waking at once for every shard needs one blocking read per shard key; the
   alternatives poll or wait out a block on another shard's key. S is bounded by the
   setting (16 by default: 16 connections per worker, whatever the clients), and a
   per-shard task follows its slot by itself through failovers and migrations.
   A worker places all its readers at one start (see ``_position_all``).
   Gaps are detected per shard as on ``redis://``: events carry their number, ticks
   the number of the last event before them; a jump (trimmed unread) or a number
   that went back (a failover lost entries the reader had, data lost) → resync.
   A reader's task also releases what the merge passes, so it runs the listener (the
   hub's fan-out): a listener that raises is a resync too (``redis_base``), never the
   end of the task, since the merge would wait for that shard's frontier for ever and
   the event being delivered would reach only some streams.
4. **Readers read replicas.** Readers (and replays, ``replay``) read each shard from
   its replica (``READONLY``; the master only when the shard has no replica in sync):
   an entry delivered from a master and lost in a failover would let the new master
   give its number and id to another event, shifting every stream's cursor past
   events it never got. A reader stays on its node while it answers (an old master
   back as a replica first serves its own stale data), and replays read where the
   reader reads.
5. **Held events are bounded** by ``REDIS_CLUSTER_HELD_EVENTS`` per worker. Every event
   read is held until the merge passes it, wanted or not (a stream that subscribes
   later is owed every event above its replay's head, see ``replay``; interest is
   decided at release), as raw entries (no Event built for a channel nobody here
   watches). Ticks for events a local stream wants go at most every
   ``TICK_INTERVAL_SECONDS`` per shard, for the others every
   ``TICK_IDLE_INTERVAL_SECONDS``; one tick goes past the newest held event. A shard
   that cannot be read (a master down until its replica is promoted) holds every
   delivery back: past the bound the reader lets the held events go and resyncs, and
   replays wait (503 to streams, which wait) until every frontier is past what was let
   go, so no head is ever handed out below a dropped event.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import heapq
import logging
import time
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import AskError, MovedError, RedisError

from app.broker.base import BrokerUnavailableError
from app.broker.redis_cluster.shards import DEFAULT_READ_BLOCK_MS, Shard, ShardedBroker
from app.broker.redis_connections import (
    BACKOFF_INITIAL_SECONDS,
    BACKOFF_MAX_SECONDS,
)
from app.broker.redis_entries import CHANNEL_FIELD, NUMBER_FIELD, TICK_FIELD
from app.wire.event_id import EventKey

__all__ = ["TICK_SCRIPT", "ClusterMerge"]

logger = logging.getLogger("herald.broker")

READER_SOCKET_TIMEOUT_SECONDS = DEFAULT_READ_BLOCK_MS / 1000 + 10
TICK_INTERVAL_SECONDS = 0.005
# A tick puts its shard this far ahead of the event it passes, so the events of the next
# few milliseconds need no tick of their own.
TICK_AHEAD_MS = 10
# Ticks for held events nobody here waits for: they only keep the held events bounded.
TICK_IDLE_INTERVAL_SECONDS = 0.1

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

TICK_SHA = hashlib.sha1(TICK_SCRIPT.encode()).hexdigest()


class ClusterMerge(ShardedBroker):
    """The readers, the merge of what they read, and the ticks it asks for."""

    # --- ticks -----------------------------------------------------------

    async def _tick(self, shard: Shard, past: EventKey) -> None:
        command = ("EVALSHA", TICK_SHA, 2, shard.log_key, shard.counter_key)
        ahead = TICK_AHEAD_MS if past[0] else 1
        args = (self.log_size, self.shard_count, shard.index, past[0], past[1], ahead)
        await self.nodes.on_master(shard.slot, [(*command, *args)], (TICK_SHA, TICK_SCRIPT))
        self.ticks += 1

    def _want_tick(self, shard: Shard, past: EventKey, interval: float) -> None:
        if shard.tick_wanted is None or shard.tick_wanted < past:
            shard.tick_wanted = past
        shard.tick_interval = interval
        if shard.tick_task is None and not self._closing:
            shard.tick_task = asyncio.create_task(self._ticker(shard))

    async def _ticker(self, shard: Shard) -> None:
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

    async def _reader_for(self, shard: Shard) -> aioredis.Redis:
        """The shard's reader connection. It stays on its node while the node answers, even
        if the slot map changes: an old master returning as a replica first serves its own
        stale (possibly divergent) data until its sync completes (note 4)."""
        if shard.reader is not None:
            return shard.reader
        node, readonly = self.nodes.read_node(shard.slot)
        if readonly and not await self.nodes.replica_in_sync(node):
            node, readonly = self.nodes.route(shard.slot)[0], False
        reader = self.nodes.new_client(node, readonly, READER_SOCKET_TIMEOUT_SECONDS)
        shard.reader, shard.reader_node, shard.reader_readonly = reader, node, readonly
        return reader

    async def _drop_reader(self, shard: Shard) -> None:
        reader, shard.reader, shard.reader_node = shard.reader, None, None
        shard.reader_readonly = False
        if reader is not None:
            with contextlib.suppress(Exception):
                await reader.aclose(close_connection_pool=True)

    async def _read_loop(self, shard: Shard) -> None:
        backoff = BACKOFF_INITIAL_SECONDS
        while not self._closing:
            try:
                if not self.nodes.routes:
                    await self.nodes.refresh()
                if shard.position is None:
                    await self._position_all()
                elif shard.verify:
                    await self._find_position(shard)
                assert shard.position is not None
                reader = await self._reader_for(shard)
                entries = await self._read_log(reader, shard.log_key, shard.position)
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
                    self._reading_again()
            backoff = BACKOFF_INITIAL_SECONDS
            if entries:
                self._take(shard, entries)

    async def _find_position(self, shard: Shard) -> None:
        """After a read error: check the shard's log is still the one being read."""
        reader = await self._reader_for(shard)
        newest, number = await self._log_head(reader, shard.log_key, shard.counter_key)
        if shard.position is not None and number < shard.number:
            self._skipped(f"shard {shard.index} lost events (event {number} after {shard.number})")
            shard.position = newest or b"0-0"
            shard.number = number
            shard.frontier = self._frontier(shard.index, shard.position)
        shard.verify = False
        shard.ok = True

    async def _position_all(self) -> None:
        """Place every shard's reader at one start position: just after the smallest frontier
        less one, the lowest head any replay can return from now on. Starting each shard at
        its own head instead would skip the events between that head and a lower replay
        head: a replay leaves those to live delivery (``replay``: why its head is exact),
        which never read them."""
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
                shard.renumber = True  # the first entry read sets the count (note 3)
                shard.frontier = (ms, first * self.shard_count + shard.index)
                shard.verify = False
                shard.ok = True

    async def _start_of(self, shard: Shard) -> tuple[EventKey, int]:
        reader = await self._reader_for(shard)
        newest, counter = await self._log_head(reader, shard.log_key, shard.counter_key)
        if newest is None:
            return (0, self.shard_count + shard.index), counter
        return self._frontier(shard.index, newest), counter

    def _take(self, shard: Shard, entries: list[Any]) -> None:
        """Entries of one shard, in its order: check numbers, move its frontier, hold every
        event, then deliver what every frontier has passed.

        Every event is held, not only those a local stream wants now: a stream that
        subscribes later counts on every event above its replay's head reaching the
        listener after its subscription, and interest is decided at release (``replay``:
        why its head is exact)."""
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
