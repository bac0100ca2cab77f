"""Per-client limits counted in Redis, so they hold across every worker and instance.

Keys (``<prefix>`` is ``REDIS_KEY_PREFIX``):

* ``<prefix>:limits:streams:<client>`` — a sorted set with one member per open
  stream of that client (``<worker id>:<n>``), scored by the Redis time at
  which its lease runs out.
* ``<prefix>:limits:publish:<key>`` — a token bucket (``tokens``, ``at``).

Design decisions (read before changing):

1. Leases, not counters. A plain ``INCR``/``DECR`` counter leaks forever when a
   worker dies holding streams. Here each stream is a member whose score is a
   lease end; every worker renews its own members every
   :data:`STREAM_LEASE_RENEW_SECONDS`, so a dead worker's streams stop counting
   :data:`STREAM_LEASE_SECONDS` later. The acquire script drops expired
   members before counting.
2. Redis's clock (``TIME`` inside the scripts), never the workers': hosts'
   clocks need not agree.
3. Renewal uses ``ZADD XX``: it never brings back a member that a release (on
   another pooled connection, maybe a moment earlier) removed. After Redis has
   lost its data, open streams therefore stop counting until they reconnect:
   lenient, never a false refusal.
4. Redis down: fail open to this worker's own counts and buckets (the limits
   still hold per worker) and say so once in the log; a rate limiter is not
   worth refusing traffic over.
5. The command client is the broker's (``RedisBroker.client``), as for the
   metrics exchange.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import logging
from typing import Any

from redis.exceptions import RedisError

from app.broker.capabilities import RedisAccess
from app.core.config import Settings
from app.limits.base import LocalClientLimits, StreamLease

__all__ = ["STREAM_LEASE_RENEW_SECONDS", "STREAM_LEASE_SECONDS", "RedisClientLimits"]

logger = logging.getLogger("herald.limits")

STREAM_LEASE_SECONDS = 60.0
STREAM_LEASE_RENEW_SECONDS = 20.0
RENEW_BATCH = 500
STOP_WAIT_SECONDS = 2.0

# KEYS[1] stream set; ARGV limit, lease ms, member. Returns -1 when admitted,
# else the number of streams the client already has open.
ACQUIRE_STREAM = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local open = redis.call('ZCARD', KEYS[1])
if open >= tonumber(ARGV[1]) then return open end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return -1
"""

# KEYS stream sets; ARGV[1] lease ms, ARGV[i + 1] this worker's member in KEYS[i].
RENEW_STREAMS = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = tonumber(ARGV[1])
for i, key in ipairs(KEYS) do
  redis.call('ZADD', key, 'XX', now + lease, ARGV[i + 1])
  redis.call('PEXPIRE', key, lease)
end
return #KEYS
"""

# KEYS[1] bucket; ARGV rate per second, burst. Returns 0 when allowed, else the
# milliseconds until a token is available.
TAKE_TOKEN = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1]) or burst
local at = tonumber(state[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - at) * rate / 1000)
local ttl = math.ceil(burst * 1000 / rate) + 1000
if tokens < 1 then
  redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', now)
  redis.call('PEXPIRE', KEYS[1], ttl)
  return math.ceil((1 - tokens) * 1000 / rate)
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens - 1), 'at', now)
redis.call('PEXPIRE', KEYS[1], ttl)
return 0
"""


def bucket_name(key: str) -> str:
    # Keys may hold a token digest or an IPv6 address; hash them to a fixed size.
    return hashlib.sha256(key.encode()).hexdigest()[:32]


class RedisClientLimits(LocalClientLimits):
    def __init__(
        self,
        settings: Settings,
        broker: RedisAccess,
        worker: str,
        *,
        lease_seconds: float = STREAM_LEASE_SECONDS,
        renew_seconds: float = STREAM_LEASE_RENEW_SECONDS,
    ) -> None:
        super().__init__(settings)
        self.broker = broker
        self.worker = worker
        self.prefix = f"{broker.key_prefix}:limits"
        self.lease_ms = max(1, int(lease_seconds * 1000))
        self.renew_seconds = renew_seconds
        self._numbers = itertools.count(1)
        # member -> key for every stream this worker counts in Redis (bounded by
        # its open streams).
        self._held: dict[str, str] = {}
        self._degraded = False
        self._closing = asyncio.Event()
        self._renewer: asyncio.Task[None] | None = None
        self._scripts: dict[str, Any] = {}

    def streams_key(self, client: str) -> str:
        return f"{self.prefix}:streams:{client}"

    def publish_key(self, key: str) -> str:
        return f"{self.prefix}:publish:{bucket_name(key)}"

    # --- lifecycle -------------------------------------------------------

    async def start(self) -> None:
        client = self.broker.client
        self._scripts = {
            "acquire": client.register_script(ACQUIRE_STREAM),
            "renew": client.register_script(RENEW_STREAMS),
            "take": client.register_script(TAKE_TOKEN),
        }
        self._closing.clear()
        if self.streams_limited:
            self._renewer = asyncio.create_task(self._renew_forever(), name="herald lease renewer")

    async def stop(self) -> None:
        # A flag and a bounded wait rather than cancel(): redis-py's socket I/O
        # runs under asyncio.wait_for, which can swallow a cancellation on
        # Python 3.11 (CPython gh-86296).
        self._closing.set()
        if self._renewer is not None:
            _, pending = await asyncio.wait({self._renewer}, timeout=STOP_WAIT_SECONDS)
            for task in pending:
                task.cancel()
            self._renewer = None
        if self._held:
            with contextlib.suppress(RedisError, OSError):
                async with self.broker.client.pipeline(transaction=False) as pipe:
                    for member, key in self._held.items():
                        pipe.zrem(key, member)
                    await pipe.execute()
            self._held.clear()

    async def _renew_forever(self) -> None:
        while not self._closing.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), self.renew_seconds)
            if not self._closing.is_set():
                await self.renew()

    async def renew(self) -> int:
        """Extend the lease of every stream this worker holds; returns how many."""
        held = list(self._held.items())
        try:
            for start in range(0, len(held), RENEW_BATCH):
                batch = held[start : start + RENEW_BATCH]
                await self._scripts["renew"](
                    keys=[key for _, key in batch],
                    args=[self.lease_ms, *(member for member, _ in batch)],
                )
        except (RedisError, OSError) as exc:
            self._fall_back(exc)
            return 0
        return len(held)

    # --- streams ---------------------------------------------------------

    async def acquire_stream(self, client: str) -> StreamLease | None:
        if not self.streams_limited:
            return None
        key = self.streams_key(client)
        member = f"{self.worker}:{next(self._numbers)}"
        try:
            open_streams = int(
                await self._scripts["acquire"](
                    keys=[key], args=[self.max_streams_per_client, self.lease_ms, member]
                )
            )
        except (RedisError, OSError) as exc:
            self._fall_back(exc)
            return self.acquire_local(client)
        self._recovered()
        if open_streams >= 0:
            self.streams_refused += 1
            raise self._streams_refused(client, open_streams)
        self._held[member] = key
        return StreamLease(client, key, member)

    async def release_stream(self, lease: StreamLease) -> None:
        if not lease.shared_key:
            self.release_local(lease)
            return
        self._held.pop(lease.member, None)
        # If this fails the lease simply runs out.
        with contextlib.suppress(RedisError, OSError):
            await self.broker.client.zrem(lease.shared_key, lease.member)

    # --- publishing ------------------------------------------------------

    async def take_publish(self, key: str) -> None:
        if not self.publishes_limited:
            return
        try:
            wait_ms = int(
                await self._scripts["take"](
                    keys=[self.publish_key(key)], args=[self.publish_rate, self.publish_burst]
                )
            )
        except (RedisError, OSError) as exc:
            self._fall_back(exc)
            self.take_local(key)
            return
        self._recovered()
        if wait_ms > 0:
            self.publishes_refused += 1
            raise self._publish_refused(wait_ms / 1000)

    # --- degraded mode ---------------------------------------------------

    def _fall_back(self, exc: BaseException) -> None:
        if not self._degraded:
            self._degraded = True
            logger.warning("client limits: Redis unavailable (%s); counting per worker", exc)

    def _recovered(self) -> None:
        if self._degraded:
            self._degraded = False
            logger.info("client limits: Redis is back; counting across workers again")

    def stats(self) -> dict[str, object]:
        return {
            **super().stats(),
            "kind": "redis",
            "degraded": self._degraded,
            "shared_leases": len(self._held),
        }
