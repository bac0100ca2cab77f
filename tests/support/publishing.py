"""Publishing one event straight to a broker, as the hub does with a batch of one."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from app.broker.base import Broker, BrokerUnavailableError, Draft
from app.wire.event import Event

__all__ = ["assert_serves_degraded", "publish_one"]


async def publish_one(
    broker: Broker, channels: str | Sequence[str], body: bytes, private: bool = False
) -> Event:
    names = (channels,) if isinstance(channels, str) else tuple(channels)
    (event,) = await broker.publish([Draft(names, body, private)])
    return event


async def assert_serves_degraded(broker: Broker) -> None:
    """``broker`` points at nothing: it connects without raising, reports itself down, and
    refuses replays and publishes with ``BrokerUnavailableError``; then it is disconnected."""
    await broker.connect(lambda event: None)  # does not raise: degraded
    try:
        assert broker.stats()["state"] == "down"
        with pytest.raises(BrokerUnavailableError):
            await broker.replay(["a"], None)
        with pytest.raises(BrokerUnavailableError):
            await publish_one(broker, "a", b"data: x\n")
    finally:
        await broker.disconnect()
