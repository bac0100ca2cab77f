"""Per-client limits, chosen to match the broker: in-process with ``memory://``,
shared through Redis with ``redis://`` (imported lazily, like the brokers)."""

from __future__ import annotations

from urllib.parse import urlsplit

from app.broker.base import Broker
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
    """Counts shared through the broker's Redis when there is one, else this process's own."""
    if urlsplit(settings.broker_url).scheme in ("redis", "rediss"):
        from app.broker.redis import RedisBroker
        from app.limits.redis import RedisClientLimits

        if not isinstance(broker, RedisBroker):
            raise TypeError("a redis:// BROKER_URL must come with a RedisBroker")
        return RedisClientLimits(settings, broker, worker)
    return LocalClientLimits(settings)
