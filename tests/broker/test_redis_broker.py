"""RedisBroker against a real redis-server, no Herald process, beyond the broker contract
(tests/broker/test_contract.py): stopping, keys, gaps in the live feed detected, an
unreachable Redis, a Redis that forgot the publish script."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from app.broker.base import Draft, PageLimit
from app.broker.redis import PUBLISH_SCRIPT, RedisBroker
from tests.support.publishing import assert_serves_degraded, publish_one
from tests.support.redis_server import RedisServer
from tests.support.server import free_port
from tests.support.waiting import wait_until


@pytest.fixture
async def broker(redis_server: RedisServer) -> AsyncIterator[RedisBroker]:
    broker = RedisBroker(
        redis_server.url, history_size=100, channel_ttl_seconds=60, key_prefix="unit", block_ms=200
    )
    await broker.connect(lambda event: None)
    yield broker
    await broker.disconnect()


async def test_disconnect_is_bounded_even_if_the_reader_swallows_its_cancellation(
    broker: RedisBroker,
) -> None:
    """Regression (CPython gh-86296): redis-py's wait_for can eat a cancellation."""
    assert broker._reader is not None

    async def swallowing_xread(*args: object, **kwargs: object) -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            return None  # what a lost cancellation looks like from the loop

    broker._reader.xread = swallowing_xread  # type: ignore[method-assign]
    await broker.subscribe("stop-me")
    await asyncio.sleep(0.1)
    started = time.monotonic()
    await broker.disconnect()
    assert time.monotonic() - started < 3


async def test_keys_share_one_hash_slot_per_channel(broker: RedisBroker) -> None:
    assert broker.key("orders/42") == "unit:{orders/42}"


async def test_a_replay_of_large_events_asks_redis_for_a_page_of_them_from_its_first_read(
    redis_server: RedisServer,
) -> None:
    """What the worker asks for is what it holds: Redis's slow log (every command, with its
    arguments) shows each XRANGE's COUNT."""
    broker = RedisBroker(
        redis_server.url,
        history_size=100,
        channel_ttl_seconds=60,
        key_prefix="largeread",
        block_ms=200,
        max_event_bytes=1_000_000,
    )
    await broker.connect(lambda event: None)
    admin = aioredis.from_url(redis_server.url)
    threshold = (await admin.config_get("slowlog-log-slower-than"))["slowlog-log-slower-than"]
    try:
        body = b"data: " + b"x" * 60_000 + b"\n"
        first = await publish_one(broker, "big", body)
        for _ in range(19):
            await publish_one(broker, "big", body)
        await wait_until(lambda: broker.recent_largest.largest() < 100_000, what="reader saw")
        await admin.config_set("slowlog-log-slower-than", 0)
        await admin.slowlog_reset()
        page = PageLimit(events=100, bytes=256 * 1024)
        replay = await broker.replay(["big"], first.id, page=page)
        assert 1 <= len(replay.events) <= 4
        counts = [
            int(entry["command"].split()[-1])
            for entry in await admin.slowlog_get(128)
            if entry["command"].startswith(b"XRANGE largeread:{big}")
        ]
        assert counts and max(counts) <= 4, counts
    finally:
        await admin.config_set("slowlog-log-slower-than", threshold)
        await admin.aclose()
        await broker.disconnect()


# --- gaps in the live feed are detected ---------------------------------------------


async def resynced_broker(redis_server: RedisServer, prefix: str) -> tuple[RedisBroker, list[str]]:
    reasons: list[str] = []
    watched = RedisBroker(
        redis_server.url, history_size=100, channel_ttl_seconds=60, key_prefix=prefix, block_ms=200
    )
    await watched.connect(lambda event: None, reasons.append)
    await watched.subscribe("a")
    await wait_until(lambda: watched.stats()["log_position"] is not None, what="a log position")
    return watched, reasons


async def test_events_trimmed_from_the_log_before_the_reader_got_them_cause_a_resync(
    redis_server: RedisServer,
) -> None:
    watched, reasons = await resynced_broker(redis_server, "gap")
    try:
        seen = await publish_one(watched, "a", b"data: seen\n")
        await wait_until(lambda: watched.stats()["log_position"] == seen.id, what="the reader")
        # Three events and a trim in one transaction: the blocked reader wakes to find
        # only the last of them in the log, as a reader that lagged too far would.
        async with watched.client.pipeline(transaction=True) as pipe:
            for _ in range(3):
                keys, args = watched.script_arguments([Draft(("a",), b"data: x\n")])
                pipe.eval(PUBLISH_SCRIPT, len(keys), *keys, *args)
            pipe.xtrim(watched.log_key, maxlen=1, approximate=False)
            await pipe.execute()
        await wait_until(lambda: bool(reasons), what="a resync")
    finally:
        await watched.disconnect()
    assert "left the log unread" in reasons[0]


async def test_redis_losing_its_data_causes_a_resync(redis_server: RedisServer) -> None:
    watched, reasons = await resynced_broker(redis_server, "lost")
    try:
        for _ in range(3):
            last = await publish_one(watched, "a", b"data: x\n")
        await wait_until(lambda: watched.stats()["log_position"] == last.id, what="the reader")
        # Past the last entry's millisecond, as a restart is: a log re-created within it
        # would number its first entry below the reader's position.
        await asyncio.sleep(0.01)
        await watched.client.delete(watched.log_key, watched.counter_key)  # as after FLUSHALL
        await publish_one(watched, "a", b"data: after the loss\n")
        await wait_until(lambda: bool(reasons), what="a resync")
    finally:
        await watched.disconnect()
    assert watched.resyncs == 1


async def test_a_broker_that_cannot_reach_redis_raises_on_replay_and_publish() -> None:
    unreachable = RedisBroker(
        f"redis://127.0.0.1:{free_port()}/0", history_size=10, channel_ttl_seconds=60
    )
    await assert_serves_degraded(unreachable)


async def test_a_redis_that_forgot_the_publish_script_gets_it_again(
    broker: RedisBroker, redis_server: RedisServer
) -> None:
    # The script is called by its SHA with a C-packed command (app/broker/packed_script.py);
    # a Redis that restarted has no script cache, and the publish must load it and go on.
    client = aioredis.from_url(redis_server.url)
    try:
        first = await publish_one(broker, "again", b"data: 1\n")
        await client.script_flush()
        second = await publish_one(broker, "again", b"data: 2\n")
        assert second.key > first.key
        replayed = await broker.replay(["again"], first.id)
        assert [event.id for event in replayed.events] == [second.id]
        assert broker._publish is not None
        assert await client.script_exists(broker._publish.sha) == [True]
    finally:
        await client.aclose()
