"""The shards of the ``redis+cluster://`` event log, where an event's position comes from,
and ``ShardedBroker``: the state and arithmetic every concern of the broker shares.

Design decisions (read before changing):

1. **Log shards.** ``REDIS_CLUSTER_SHARDS`` (S) logs, shard k under the hash tag
   ``{<prefix>:s<k>}``: its log ``…:log``, its counter ``…:log:n``, the streams of
   its channels ``…:c:<channel>``, its publisher-id keys ``…:id:<id>`` and its
   reference keys ``…:ref:<token>``. Channel c belongs to shard ``crc32(c) mod S``,
   so a channel's slot (and master) is its shard's, and one Lua script
   (``app.broker.publish_script``, the one ``redis://`` runs) writes a shard's part
   of a call atomically: Redis Cluster refuses cross-slot scripts.
2. **One order across shards.** Shard k's log entry ``<ms>-<n>`` (id assigned by its
   master) is the event at position ``(ms, n*S + k)``, wire id ``<ms>-<n*S+k>``: the
   two-part id format and ``EventKey`` stay, and an id decodes back to its shard and
   entry. A shard's *frontier* is the smallest position its next entry can have, from
   the last entry read: ``(ms, (n+1)*S + k)``, monotonic since stream ids are. Each
   worker merges the S logs by position (``merge``).
"""

from __future__ import annotations

import asyncio
import zlib
from dataclasses import dataclass
from typing import Unpack

import redis.asyncio as aioredis
from redis.crc import key_slot

from app.broker.capabilities import ClusterTopology
from app.broker.redis_base import RedisBrokerBase, RedisOptions
from app.broker.redis_cluster.nodes import ClusterNodes, Node
from app.broker.redis_entries import key_of
from app.core.cluster_url import ClusterURL, parse_cluster_url
from app.wire.event_id import EventKey

__all__ = [
    "DEFAULT_READ_BLOCK_MS",
    "DEFAULT_SHARDS",
    "UNAVAILABLE",
    "Shard",
    "ShardedBroker",
    "shard_of",
]

DEFAULT_SHARDS = 16
DEFAULT_READ_BLOCK_MS = 2000  # short: a reader on a slot that moved away learns it within this
UNAVAILABLE = "the event backplane (Redis Cluster) is unavailable; retry later"


def shard_of(channel: str, shards: int) -> int:
    return zlib.crc32(channel.encode()) % shards


@dataclass(slots=True)
class Shard:
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
    # Ticks: the position to get past, the task writing it, when the last was written, and
    # how long to leave between two (set with tick_wanted).
    tick_wanted: EventKey | None = None
    tick_task: asyncio.Task[None] | None = None
    tick_at: float = 0.0
    tick_interval: float = 0.0

    @property
    def log_key(self) -> str:
        return f"{self.tag}:log"

    @property
    def counter_key(self) -> str:
        return f"{self.tag}:log:n"


class ShardedBroker(RedisBrokerBase, ClusterTopology):
    """The settings, the shards, the nodes and the state of the merge, and the keys and
    positions of the shards: what ``publishing``, ``merge`` and ``replay`` build on."""

    def __init__(
        self,
        url: str,
        *,
        shards: int = DEFAULT_SHARDS,
        wait_replicas: int = 1,
        wait_timeout_ms: int = 1000,
        held_events: int = 10_000,
        block_ms: int = DEFAULT_READ_BLOCK_MS,
        **options: Unpack[RedisOptions],
    ) -> None:
        self.parsed: ClusterURL = parse_cluster_url(url)
        super().__init__(
            url,
            kind="redis cluster",
            redacted_url=self.parsed.redacted(),
            unavailable=UNAVAILABLE,
            block_ms=block_ms,
            **options,
        )
        self.shard_count = max(1, shards)
        self.wait_replicas = wait_replicas
        self.wait_timeout_ms = wait_timeout_ms
        self.held_limit = held_events
        self.shards = [
            Shard(k, tag, key_slot(tag.encode()))
            for k in range(self.shard_count)
            for tag in [f"{{{self.key_prefix}:s{k}}}"]
        ]
        self.ticks = 0
        self.nodes = ClusterNodes(
            self.parsed, {shard.slot for shard in self.shards}, self.max_connections
        )
        self._positioning = asyncio.Lock()
        # The newest position this worker's publishes got: the next ones go above it.
        self._floor: EventKey = (0, 0)
        # Entries held back until every frontier is past them (``merge``): (frontier, order,
        # shard, entry id, fields, wanted when read); how many were wanted; the newest
        # position given up past the bound (``merge``, held events are bounded).
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

    # --- where a shard is read -------------------------------------------

    def _read_target(self, shard: Shard) -> tuple[Node, bool]:
        """Where replays and position checks read a shard: where its reader reads, so a
        snapshot holds at least what the reader has delivered (``replay``: why its head
        is exact)."""
        if shard.reader_node is not None:
            return shard.reader_node, shard.reader_readonly
        return self.nodes.read_node(shard.slot)

    def _shard_down(self, shard: Shard, exc: BaseException) -> None:
        shard.ok = False
        self._mark_down(exc, f" (shard {shard.index})")
