"""RedisBroker against a real redis-server, no Herald process: one id order for every
channel, replay, gaps detected, stopping, keys, private entries."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest

from app.broker.base import Draft
from app.broker.redis import PUBLISH_SCRIPT, RedisBroker
from app.sse.event import Event
from tests.support.publishing import assert_serves_degraded, publish_one
from tests.support.redis_server import RedisServer
from tests.support.server import free_port


@pytest.fixture
async def broker(redis_server: RedisServer) -> Any:
    received: list[Event] = []
    broker = RedisBroker(
        redis_server.url, history_size=100, channel_ttl_seconds=60, key_prefix="unit", block_ms=200
    )
    await broker.connect(received.append)
    broker.received = received  # type: ignore[attr-defined]
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


async def test_private_flag_travels_through_the_stream(broker: RedisBroker) -> None:
    await broker.subscribe("secret")
    start = (await broker.replay(["secret"], None)).head
    published = await publish_one(broker, "secret", b"data: x\n", private=True)
    public = await publish_one(broker, "secret", b"data: y\n")
    for _ in range(100):
        if len(broker.received) >= 2:  # type: ignore[attr-defined]
            break
        await asyncio.sleep(0.02)
    received = broker.received  # type: ignore[attr-defined]
    assert [(e.id, e.private) for e in received] == [(published.id, True), (public.id, False)]
    replay = await broker.replay(["secret"], start)
    assert [(e.id, e.private) for e in replay.events] == [(published.id, True), (public.id, False)]


async def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


# --- one event order for all channels -----------------------------------------------


async def test_events_of_different_channels_never_share_an_id(broker: RedisBroker) -> None:
    # Regression: each channel stream numbered its own entries, so events of two
    # channels published in one millisecond both got `<ms>-0`.
    published = [await publish_one(broker, name, b"data: x\n") for name in "cdcdcdcd"]
    keys = [event.key for event in published]
    assert keys == sorted(set(keys))


async def test_a_resume_between_same_millisecond_events_of_two_channels_misses_none(
    broker: RedisBroker,
) -> None:
    """Regression: `chaos/c` and `chaos/d` both had `1796150510076-0`; a resume from the first
    skipped the second on a stream of both channels."""
    first = await publish_one(broker, "chaos/c", b"data: c\n")
    twin = await publish_one(broker, "chaos/d", b"data: d\n")
    replay = await broker.replay(["chaos/c", "chaos/d"], first.id)
    assert [event.id for event in replay.events] == [twin.id]
    assert replay.head == twin.id


async def test_the_reader_delivers_every_channel_in_one_id_order(broker: RedisBroker) -> None:
    for name in ("a", "b"):
        await broker.subscribe(name)
    published = [await publish_one(broker, name, b"data: x\n") for name in "abbaab"]
    received: list[Event] = broker.received  # type: ignore[attr-defined]
    await wait_for(lambda: len(received) == len(published))
    assert [e.id for e in received] == [e.id for e in published]


async def test_a_new_stream_gets_the_head_and_no_events(broker: RedisBroker) -> None:
    last = await publish_one(broker, "a", b"data: x\n")
    replay = await broker.replay(["a"], None)
    assert replay.head == last.id and replay.events == [] and not replay.reset


async def test_a_position_from_an_empty_log_replays_the_first_event(
    redis_server: RedisServer,
) -> None:
    fresh = RedisBroker(
        redis_server.url, history_size=100, channel_ttl_seconds=60, key_prefix="empty-log"
    )
    await fresh.connect(lambda event: None)
    try:
        await wait_for(lambda: fresh.stats()["log_position"] is not None)
        start = (await fresh.replay(["a"], None)).head
        first = await publish_one(fresh, "a", b"data: x\n")
        replay = await fresh.replay(["a"], start)
    finally:
        await fresh.disconnect()
    assert [event.id for event in replay.events] == [first.id] and not replay.reset


async def test_an_id_never_issued_resets_with_unknown_id(broker: RedisBroker) -> None:
    last = await publish_one(broker, "a", b"data: x\n")
    ms, seq = last.key
    for unknown in [f"{ms}-{seq + 1}", f"{ms + 60_000}-0", "garbage", "9" * 70]:
        replay = await broker.replay(["a"], unknown)
        assert replay.reset and replay.reason == "unknown_id", unknown
        assert replay.head == last.id


async def test_trimmed_history_resets_exactly_when_an_unseen_event_was_trimmed(
    redis_server: RedisServer,
) -> None:
    small = RedisBroker(redis_server.url, history_size=1, channel_ttl_seconds=60, key_prefix="trim")
    await small.connect(lambda event: None)
    try:
        events = [await publish_one(small, "a", f"data: {i}\n".encode()) for i in range(5)]
        # What MAXLEN ~ does in its own time, done exactly: events 0-2 are gone.
        await small.client.xtrim(small.key("a"), maxlen=2, approximate=False)
        missed_one = await small.replay(["a"], events[1].id)
        saw_the_last_trimmed = await small.replay(["a"], events[2].id)
    finally:
        await small.disconnect()
    assert missed_one.reset and missed_one.reason == "history_expired"
    assert not saw_the_last_trimmed.reset
    assert [e.id for e in saw_the_last_trimmed.events] == [e.id for e in events[3:]]


# --- gaps in the live feed are detected ---------------------------------------------


async def resynced_broker(redis_server: RedisServer, prefix: str) -> tuple[RedisBroker, list[str]]:
    reasons: list[str] = []
    watched = RedisBroker(
        redis_server.url, history_size=100, channel_ttl_seconds=60, key_prefix=prefix, block_ms=200
    )
    await watched.connect(lambda event: None, reasons.append)
    await watched.subscribe("a")
    await wait_for(lambda: watched.stats()["log_position"] is not None)
    return watched, reasons


async def test_events_trimmed_from_the_log_before_the_reader_got_them_cause_a_resync(
    redis_server: RedisServer,
) -> None:
    watched, reasons = await resynced_broker(redis_server, "gap")
    try:
        await publish_one(watched, "a", b"data: seen\n")
        await wait_for(lambda: watched.stats()["log_position"] is not None)
        # Three events and a trim in one transaction: the blocked reader wakes to find
        # only the last of them in the log, as a reader that lagged too far would.
        async with watched.client.pipeline(transaction=True) as pipe:
            for _ in range(3):
                keys, args = watched.script_arguments([Draft(("a",), b"data: x\n")])
                pipe.eval(PUBLISH_SCRIPT, len(keys), *keys, *args)
            pipe.xtrim(watched.log_key, maxlen=1, approximate=False)
            await pipe.execute()
        await wait_for(lambda: bool(reasons))
    finally:
        await watched.disconnect()
    assert "left the log unread" in reasons[0]


async def test_redis_losing_its_data_causes_a_resync(redis_server: RedisServer) -> None:
    watched, reasons = await resynced_broker(redis_server, "lost")
    try:
        for _ in range(3):
            await publish_one(watched, "a", b"data: x\n")
        await asyncio.sleep(0.3)
        await watched.client.delete(watched.log_key, watched.counter_key)  # as after FLUSHALL
        await publish_one(watched, "a", b"data: after the loss\n")
        await wait_for(lambda: bool(reasons))
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
    import redis.asyncio as aioredis

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
