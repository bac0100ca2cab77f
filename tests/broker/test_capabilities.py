"""Optional broker capabilities (app/broker/capabilities.py): which broker offers which, and
that finding one never reads what only exists once the broker is connected."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from app.broker.base import Broker
from app.broker.capabilities import BrokerHealth, ClusterTopology, lends_redis
from app.broker.memory import MemoryBroker
from app.broker.redis import RedisBroker
from app.broker.redis_cluster import RedisClusterBroker
from app.core.config import load_settings
from app.limits import LocalClientLimits, create_client_limits
from app.limits.redis import RedisClientLimits


def memory_broker() -> MemoryBroker:
    return MemoryBroker(
        history_size=10, history_max_bytes=1 << 20, history_max_channels=10, channel_ttl_seconds=60
    )


def redis_broker() -> RedisBroker:
    return RedisBroker("redis://127.0.0.1:1/0", history_size=10, channel_ttl_seconds=60)


def cluster_broker() -> RedisClusterBroker:
    return RedisClusterBroker(
        "redis+cluster://127.0.0.1:1", history_size=10, channel_ttl_seconds=60
    )


@pytest.mark.parametrize(
    ("make", "redis", "health", "topology"),
    [
        (memory_broker, False, False, False),
        (redis_broker, True, True, False),
        (cluster_broker, False, True, True),
    ],
    ids=["memory", "redis", "redis+cluster"],
)
def test_each_broker_offers_what_it_has(
    make: Callable[[], Broker], redis: bool, health: bool, topology: bool
) -> None:
    broker = make()
    assert lends_redis(broker) is redis
    assert isinstance(broker, BrokerHealth) is health
    assert isinstance(broker, ClusterTopology) is topology


def test_finding_redis_access_does_not_read_the_client_of_an_unconnected_broker() -> None:
    broker = redis_broker()
    with pytest.raises(RuntimeError, match="not connected"):
        _ = broker.client
    assert lends_redis(broker)


def test_client_limits_follow_the_capability_not_the_url(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)  # no stray .env
    settings = load_settings()
    shared = create_client_limits(settings, redis_broker(), "box:1")
    assert isinstance(shared, RedisClientLimits)
    for broker in (memory_broker(), cluster_broker()):
        assert isinstance(create_client_limits(settings, broker, "box:1"), LocalClientLimits)
