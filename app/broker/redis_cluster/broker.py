"""``RedisClusterBroker``: the ``redis+cluster://`` broker, its concerns put together, and
its lifecycle.

Unreachable nodes are a state (as on ``redis://``): ``connect`` never fails, publishes
and replays raise ``BrokerUnavailableError``; MOVED refreshes the slot map and
retries, ASK retries once on the importing node after ``ASKING``, TRYAGAIN and
CLUSTERDOWN retry shortly within the command timeout (``nodes``).
"""

from __future__ import annotations

import asyncio
import logging

from redis.exceptions import RedisError

from app.broker.base import BrokerUnavailableError, EventListener, ResyncListener
from app.broker.redis_cluster.merge import ClusterMerge
from app.broker.redis_cluster.nodes import ClusterNodes
from app.broker.redis_cluster.publishing import ClusterPublishing
from app.broker.redis_cluster.replay import ClusterReplay
from app.broker.redis_connections import READER_STOP_SECONDS

__all__ = ["RedisClusterBroker"]

logger = logging.getLogger("herald.broker")


class RedisClusterBroker(ClusterPublishing, ClusterMerge, ClusterReplay):
    """The broker ``BROKER_URL=redis+cluster://…`` names; its constructor is
    ``ShardedBroker``'s (``shards``)."""

    async def connect(self, listener: EventListener, resync: ResyncListener | None = None) -> None:
        self._listener = listener
        self._resync = resync
        self._closing = False
        if self.nodes.closing:  # connected again after a disconnect
            self.nodes = ClusterNodes(
                self.parsed, {shard.slot for shard in self.shards}, self.max_connections
            )
        failure: BaseException | None = None
        try:
            await self.nodes.refresh(force=True)
            await asyncio.gather(*(self._tick(shard, (0, 0)) for shard in self.shards))
            await self._position_all()
        except (RedisError, OSError, BrokerUnavailableError) as exc:
            failure = exc
        self._connected(failure)
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

    def stats(self) -> dict[str, object]:
        return {
            "url": self.redacted_url,
            **super().stats(),
            "shards": self.shard_count,
            "shards_ok": sum(1 for s in self.shards if s.ok),
            "held_events": len(self._held),
            "ticks": self.ticks,
            "slot_map_refreshes": self.nodes.refreshes,
        }
