"""Brokers, chosen by URL scheme and imported lazily (an optional backend's
dependencies are needed only when it is used)."""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from app.broker.base import Broker, BrokerUnavailableError, EventListener, Replay
from app.core.config import Settings

if TYPE_CHECKING:
    from app.broker.redis_base import RedisOptions

__all__ = ["Broker", "BrokerUnavailableError", "EventListener", "Replay", "create_broker"]


def create_broker(settings: Settings) -> Broker:
    scheme = urlsplit(settings.broker_url).scheme
    if scheme == "memory":
        from app.broker.memory import MemoryBroker

        return MemoryBroker(
            history_size=settings.sse_history_size,
            history_max_bytes=settings.sse_history_max_bytes,
            history_max_channels=settings.sse_history_max_channels,
            channel_ttl_seconds=settings.sse_channel_ttl_seconds,
            idempotency_seconds=settings.publish_idempotency_seconds,
            idempotency_max_keys=settings.publish_idempotency_max_keys,
        )
    redis: RedisOptions = {
        "history_size": settings.sse_history_size,
        "channel_ttl_seconds": settings.sse_channel_ttl_seconds,
        "key_prefix": settings.redis_key_prefix,
        "log_size": settings.redis_log_size,
        "max_connections": settings.redis_max_connections,
        "idempotency_seconds": settings.publish_idempotency_seconds,
        "max_event_bytes": settings.max_event_bytes,
    }
    if scheme in ("redis", "rediss"):
        from app.broker.redis import RedisBroker

        return RedisBroker(settings.broker_url, **redis)
    if scheme in ("redis+cluster", "rediss+cluster"):
        from app.broker.redis_cluster import RedisClusterBroker

        return RedisClusterBroker(
            settings.broker_url,
            **redis,
            shards=settings.redis_cluster_shards,
            wait_replicas=settings.redis_cluster_wait_replicas,
            wait_timeout_ms=settings.redis_cluster_wait_timeout_ms,
            held_events=settings.redis_cluster_held_events,
        )
    raise ValueError(f"BROKER_URL: unsupported scheme {scheme!r}")
