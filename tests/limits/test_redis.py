"""Limits counted in a real Redis: shared by workers, leases that outlive no worker,
buckets shared by every process, and per-worker fallback while Redis is away."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from app.broker.redis import RedisBroker
from app.core.config import Settings
from app.limits import LimitExceededError
from app.limits.redis import RedisClientLimits
from tests.support.redis_server import RedisServer

MakeLimits = Callable[..., Awaitable[RedisClientLimits]]


@pytest.fixture
async def make_limits(redis_server: RedisServer) -> AsyncIterator[MakeLimits]:
    """Limits for several 'workers' sharing one Redis and one key prefix."""
    prefix = f"lim{uuid.uuid4().hex[:8]}"
    made: list[tuple[RedisBroker, RedisClientLimits]] = []

    async def make(
        worker: str, lease_seconds: float = 60, renew_seconds: float = 20, **overrides: object
    ) -> RedisClientLimits:
        settings = Settings(**overrides)  # type: ignore[arg-type]
        broker = RedisBroker(
            redis_server.url, history_size=10, channel_ttl_seconds=60, key_prefix=prefix
        )
        await broker.connect(lambda event: None)
        limits = RedisClientLimits(
            settings, broker, worker, lease_seconds=lease_seconds, renew_seconds=renew_seconds
        )
        await limits.start()
        made.append((broker, limits))
        return limits

    yield make
    for broker, limits in made:
        await limits.stop()
        await broker.disconnect()


async def test_the_stream_limit_holds_across_workers(make_limits: MakeLimits) -> None:
    first = await make_limits("w1", sse_max_connections_per_ip=3)
    second = await make_limits("w2", sse_max_connections_per_ip=3)
    leases = [
        await first.acquire_stream("203.0.113.9"),
        await second.acquire_stream("203.0.113.9"),
        await second.acquire_stream("203.0.113.9"),
    ]
    for limits in (first, second):
        with pytest.raises(LimitExceededError, match=r"\(3, limit 3\)"):
            await limits.acquire_stream("203.0.113.9")
    assert await first.acquire_stream("203.0.113.10") is not None
    lease = leases[0]
    assert lease is not None
    await first.release_stream(lease)
    assert await second.acquire_stream("203.0.113.9") is not None


async def test_a_dead_workers_streams_stop_counting_when_their_lease_runs_out(
    make_limits: MakeLimits,
) -> None:
    dying = await make_limits(
        "dying", lease_seconds=0.5, renew_seconds=60, sse_max_connections_per_ip=1
    )
    alive = await make_limits("alive", lease_seconds=0.5, sse_max_connections_per_ip=1)
    await dying.acquire_stream("198.51.100.1")
    dying._closing.set()  # the worker dies without releasing (no stop(), no renewal)
    with pytest.raises(LimitExceededError):
        await alive.acquire_stream("198.51.100.1")
    await asyncio.sleep(0.7)
    assert await alive.acquire_stream("198.51.100.1") is not None


async def test_a_live_worker_renews_its_leases(make_limits: MakeLimits) -> None:
    holder = await make_limits(
        "holder", lease_seconds=0.6, renew_seconds=0.15, sse_max_connections_per_ip=1
    )
    other = await make_limits("other", lease_seconds=0.6, sse_max_connections_per_ip=1)
    await holder.acquire_stream("198.51.100.2")
    await asyncio.sleep(1.5)  # well past the lease: only renewal keeps it counted
    with pytest.raises(LimitExceededError):
        await other.acquire_stream("198.51.100.2")


async def test_stop_releases_what_the_worker_still_holds(make_limits: MakeLimits) -> None:
    leaving = await make_limits("leaving", sse_max_connections_per_ip=1)
    staying = await make_limits("staying", sse_max_connections_per_ip=1)
    await leaving.acquire_stream("198.51.100.3")
    await leaving.stop()
    assert await staying.acquire_stream("198.51.100.3") is not None


async def test_one_publish_bucket_is_shared_by_every_worker(make_limits: MakeLimits) -> None:
    first = await make_limits("w1", publish_rate_per_second=1, publish_burst=4)
    second = await make_limits("w2", publish_rate_per_second=1, publish_burst=4)
    for limits in (first, second, first, second):
        await limits.take_publish("token:abc")
    with pytest.raises(LimitExceededError) as refused:
        await second.take_publish("token:abc")
    assert refused.value.retry_after == 1
    await first.take_publish("token:other")  # another key, another bucket
    await asyncio.sleep(1.1)
    await first.take_publish("token:abc")


async def test_redis_keys_never_hold_the_publisher_key(
    make_limits: MakeLimits, redis_server: RedisServer
) -> None:
    limits = await make_limits("w1", publish_rate_per_second=5)
    await limits.take_publish("address:2001:db8::1")
    keys = await limits.broker.client.keys(f"{limits.prefix}:publish:*")
    assert len(keys) == 1
    assert b"2001:db8" not in keys[0]
    ttl = await limits.broker.client.pttl(keys[0])
    assert 0 < ttl <= 60 * 1000 // 5 + 1000  # gone once the bucket would be full again


async def test_without_redis_each_worker_counts_its_own() -> None:
    own = RedisServer().start()  # its own server, so killing it disturbs no other test
    broker = RedisBroker(own.url, history_size=10, channel_ttl_seconds=60, key_prefix="down")
    await broker.connect(lambda event: None)
    settings = Settings(sse_max_connections_per_ip=1, publish_rate_per_second=1, publish_burst=1)
    limits = RedisClientLimits(settings, broker, "w1")
    await limits.start()
    try:
        own.kill()
        lease = await limits.acquire_stream("192.0.2.1")
        assert lease is not None and not lease.shared_key
        with pytest.raises(LimitExceededError):
            await limits.acquire_stream("192.0.2.1")
        await limits.release_stream(lease)
        assert await limits.acquire_stream("192.0.2.1") is not None
        await limits.take_publish("k")
        with pytest.raises(LimitExceededError):
            await limits.take_publish("k")
        assert limits.stats()["degraded"] is True
    finally:
        await limits.stop()
        await broker.disconnect()
        own.close()
