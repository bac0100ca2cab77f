"""Publishing one event straight to a broker, as the hub does with a batch of one."""

from __future__ import annotations

from collections.abc import Sequence

from app.broker.base import Broker, Draft
from app.sse.event import Event

__all__ = ["publish_one"]


async def publish_one(
    broker: Broker, channels: str | Sequence[str], body: bytes, private: bool = False
) -> Event:
    names = (channels,) if isinstance(channels, str) else tuple(channels)
    (event,) = await broker.publish([Draft(names, body, private)])
    return event
