"""RedisBroker details that need no Herald process: stopping, keys, private entries."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from app.broker.redis import RedisBroker
from app.sse.event import Event
from tests.support.redis_server import RedisServer


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
    assert broker._channel_of(b"unit:{orders/42}") == "orders/42"


async def test_private_flag_travels_through_the_stream(broker: RedisBroker) -> None:
    await broker.subscribe("secret")
    await asyncio.sleep(0.1)
    published = await broker.publish("secret", b"data: x\n", private=True)
    public = await broker.publish("secret", b"data: y\n")
    for _ in range(100):
        if len(broker.received) >= 2:  # type: ignore[attr-defined]
            break
        await asyncio.sleep(0.02)
    received = broker.received  # type: ignore[attr-defined]
    assert [(e.id, e.private) for e in received] == [(published.id, True), (public.id, False)]
    replay = await broker.replay(["secret"], "0-1")
    assert [(e.id, e.private) for e in replay.events] == [(published.id, True), (public.id, False)]
