from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from app.broker.memory import MemoryBroker
from app.core.config import load_settings
from app.sse.hub import Hub
from tests.responses.producers.fake_upstream import FakeUpstream
from tests.support.redis_cluster import REDIS_CLI, RedisCluster
from tests.support.redis_server import REDIS_SERVER, RedisServer
from tests.support.server import ServerProcess

# Short timers so behaviour that takes minutes in production shows in a second.
FAST_TIMERS = {
    "SSE_PING_SECONDS": "0.3",
    "SSE_CLEANUP_INTERVAL_SECONDS": "0.2",
    "LOG_LEVEL": "info",
}


@pytest.fixture
def server_factory() -> Iterator[Callable[..., ServerProcess]]:
    """Start Herald processes with extra environment; all are stopped after the test."""
    started: list[ServerProcess] = []

    def start(*, healthy: bool = True, **env: str) -> ServerProcess:
        server = ServerProcess({**FAST_TIMERS, **env}).start(healthy=healthy)
        started.append(server)
        return server

    yield start
    for server in started:
        server.close()


@pytest.fixture(scope="module")
def herald() -> Iterator[ServerProcess]:
    """One shared server per test module; tests use their own channel names."""
    server = ServerProcess(dict(FAST_TIMERS)).start()
    yield server
    server.close()


@pytest.fixture(scope="session")
def _upstream_server() -> Iterator[FakeUpstream]:
    with FakeUpstream() as server:
        yield server


@pytest.fixture
def upstream(_upstream_server: FakeUpstream) -> Iterator[FakeUpstream]:
    """A real fake OpenAI-compatible upstream (one per session), reset for each test."""
    _upstream_server.reset()
    yield _upstream_server
    _upstream_server.reset()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One real redis-server for the session; each Herald process gets its own key prefix."""
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server; .ci/run does)")
    server = RedisServer().start()
    yield server
    server.close()


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisCluster]:
    """One real 3-master, 3-replica Redis Cluster for the session (tests that kill or move
    nodes start their own); each broker or Herald process gets its own key prefix."""
    if REDIS_SERVER is None or REDIS_CLI is None:
        pytest.skip("redis-server / redis-cli are not installed (.ci/run installs them)")
    cluster = RedisCluster().start()
    yield cluster
    cluster.close()


@pytest.fixture(scope="module", params=["memory", "redis", "cluster"])
def broker_env(request: pytest.FixtureRequest) -> Callable[[], dict[str, str]]:
    """Environment selecting each broker in turn, for the suites that must hold on all."""
    if request.param == "memory":
        return lambda: {"BROKER_URL": "memory://"}
    if request.param == "cluster":
        cluster: RedisCluster = request.getfixturevalue("redis_cluster")
        return lambda: {
            "BROKER_URL": cluster.url,
            "REDIS_KEY_PREFIX": f"t{uuid.uuid4().hex[:12]}",
        }
    redis: RedisServer = request.getfixturevalue("redis_server")
    # A fresh key prefix per server process: tests share one Redis, not each other's history.
    return lambda: {"BROKER_URL": redis.url, "REDIS_KEY_PREFIX": f"t{uuid.uuid4().hex[:12]}"}


@pytest.fixture(params=["memory", "redis", "cluster"])
def broker_url(request: pytest.FixtureRequest) -> str:
    """Each broker's URL in turn, for the in-process suites that must hold on all (each
    test picks its own key prefix)."""
    if request.param == "memory":
        return "memory://"
    if request.param == "cluster":
        cluster: RedisCluster = request.getfixturevalue("redis_cluster")
        return cluster.url
    redis: RedisServer = request.getfixturevalue("redis_server")
    return redis.url


MakeHub = Callable[..., Awaitable[Hub]]


@pytest.fixture
async def make_hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> AsyncIterator[MakeHub]:
    """Hubs on the memory broker with these settings overrides (``clock=``: the hub's and
    the broker's clock), started here and stopped after the test; no stray .env is read."""
    monkeypatch.chdir(tmp_path)
    hubs: list[Hub] = []

    async def make(
        broker_class: type[MemoryBroker] = MemoryBroker,
        *,
        clock: Callable[[], float] | None = None,
        **overrides: object,
    ) -> Hub:
        settings = load_settings(**overrides)
        clocked: dict[str, Callable[[], float]] = {} if clock is None else {"clock": clock}
        broker = broker_class(
            history_size=settings.sse_history_size,
            history_max_bytes=settings.sse_history_max_bytes,
            history_max_channels=settings.sse_history_max_channels,
            channel_ttl_seconds=settings.sse_channel_ttl_seconds,
            idempotency_seconds=settings.publish_idempotency_seconds,
            idempotency_max_keys=settings.publish_idempotency_max_keys,
            **clocked,
        )
        hub = Hub(settings, broker, **clocked)
        await hub.start()
        hubs.append(hub)
        return hub

    yield make
    for hub in hubs:
        await hub.stop()
