"""Per-client limits, chosen to match the broker: in-process with ``memory://``,
shared through Redis with ``redis://`` (imported lazily, like the brokers)."""

from __future__ import annotations

from app.broker.base import Broker
from app.broker.capabilities import lends_redis
from app.core.config import Settings
from app.limits.base import (
    ClientLimits,
    LimitExceededError,
    LocalClientLimits,
    StreamLease,
    publisher_key,
)

__all__ = [
    "ClientLimits",
    "LimitExceededError",
    "LocalClientLimits",
    "StreamLease",
    "create_client_limits",
    "publisher_key",
]


def create_client_limits(settings: Settings, broker: Broker, worker: str) -> ClientLimits:
    """Counts shared through the broker's Redis when it lends one, else this process's own."""
    if lends_redis(broker):
        from app.limits.redis import RedisClientLimits

        return RedisClientLimits(settings, broker, worker)
    return LocalClientLimits(settings)
