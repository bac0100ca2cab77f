"""Snapshots in Redis, shared by every worker of every instance on one backplane.

Keys (``<prefix>`` is ``REDIS_KEY_PREFIX``; channel streams are
``<prefix>:{<channel>}``, always with braces, so these never collide with one):

* ``<prefix>:workers:<worker id>`` — the snapshot, ``SET … PX <ttl>``.
* ``<prefix>:workers`` — a sorted set of worker ids, scored by the wall time of
  their last publish: the index ``collect`` reads.

Design decisions:

1. An index, not ``SCAN MATCH <prefix>:workers:*``. ``SCAN`` walks every key
   of the database, and every channel is a key, so a scrape would cost one
   round trip per thousand channels. With the index a collect is two round
   trips whatever the keyspace (``ZRANGE``, then ``MGET``).
2. Redis decides expiry, not clocks: a snapshot is alive while its key is
   (``PX``), so the hosts' clocks never need to agree. An id whose key has
   expired is simply skipped by ``MGET``.
3. The index is pruned on every publish of members whose score is older than
   :data:`INDEX_HORIZON_TTLS` TTLs (workers gone for good). The horizon is so
   far past the TTL that only a clock skew of minutes between hosts could
   prune a live worker, and its next publish would add it back.
4. The command client is the broker's (``RedisBroker.client``): a few commands
   every few seconds do not deserve a connection pool of their own.
"""

from __future__ import annotations

from typing import cast

from redis.exceptions import RedisError

from app.broker.capabilities import RedisAccess
from app.fleet.base import ExchangeUnavailableError, StatsExchange
from app.fleet.snapshot import WorkerSnapshot, decode_snapshot, encode_snapshot

__all__ = ["INDEX_HORIZON_TTLS", "RedisExchange"]

INDEX_HORIZON_TTLS = 20
"""Index members not refreshed for this many TTLs are pruned (5 minutes by default)."""
_MS = 1000


class RedisExchange(StatsExchange):
    kind = "redis"

    def __init__(self, broker: RedisAccess, worker: str, ttl_seconds: float) -> None:
        super().__init__(worker, ttl_seconds)
        self.broker = broker
        self.index_key = f"{broker.key_prefix}:workers"
        self.key = self.snapshot_key(worker)
        self._ttl_ms = max(1, int(ttl_seconds * _MS))
        self._horizon_ms = self._ttl_ms * INDEX_HORIZON_TTLS

    def snapshot_key(self, worker: str) -> str:
        return f"{self.index_key}:{worker}"

    async def publish(self, snapshot: WorkerSnapshot) -> None:
        now_ms = int(snapshot["at"] * _MS)
        try:
            async with self.broker.client.pipeline(transaction=False) as pipe:
                pipe.set(self.key, encode_snapshot(snapshot), px=self._ttl_ms)
                pipe.zadd(self.index_key, {self.worker: now_ms})
                pipe.zremrangebyscore(self.index_key, "-inf", now_ms - self._horizon_ms)
                pipe.pexpire(self.index_key, self._horizon_ms)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            raise ExchangeUnavailableError(f"cannot publish to Redis: {exc}") from None

    async def collect(self) -> list[WorkerSnapshot]:
        client = self.broker.client
        try:
            workers = cast(list[bytes], await client.zrange(self.index_key, 0, -1))
            if not workers:
                return []
            keys = [self.snapshot_key(worker.decode()) for worker in workers]
            values = cast(list[bytes | None], await client.mget(keys))
        except (RedisError, OSError) as exc:
            raise ExchangeUnavailableError(f"cannot read from Redis: {exc}") from None
        found: list[WorkerSnapshot] = []
        for raw in values:
            if raw is None:  # expired: that worker stopped publishing
                continue
            snapshot = decode_snapshot(raw)
            if snapshot is not None:
                found.append(snapshot)
        return found

    async def remove(self) -> None:
        try:
            async with self.broker.client.pipeline(transaction=False) as pipe:
                pipe.delete(self.key)
                pipe.zrem(self.index_key, self.worker)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            raise ExchangeUnavailableError(f"cannot remove from Redis: {exc}") from None
