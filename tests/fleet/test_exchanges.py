"""The exchanges' contract, on a shared directory and on a real Redis; then what each adds.

One suite runs on both media (``files``, ``redis``). Expiry is driven by a fake
clock for files (their staleness is judged by the reader) and by real time for
Redis (which expires keys itself).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from app.broker.redis import RedisBroker
from app.core.config import load_settings
from app.fleet import create_exchange
from app.fleet.base import ExchangeUnavailableError, StatsExchange
from app.fleet.files import FileExchange
from app.fleet.local import LocalExchange
from app.fleet.redis import INDEX_HORIZON_TTLS, RedisExchange
from app.fleet.snapshot import WorkerSnapshot
from app.wire.event import Event
from tests.support.clock import FakeClock
from tests.support.publishing import publish_one
from tests.support.redis_server import REDIS_SERVER, RedisServer
from tests.support.server import REPO_ROOT
from tests.support.snapshots import make_snapshot


def _ignore(event: Event) -> None:
    return None


async def connected_broker(url: str) -> RedisBroker:
    broker = RedisBroker(
        url, history_size=10, channel_ttl_seconds=60, key_prefix=f"t{uuid.uuid4().hex[:12]}"
    )
    await broker.connect(_ignore)
    return broker


class Medium:
    """Where exchanges meet, and how time passes there."""

    ttl = 0.5

    def make(self, pid: int) -> StatsExchange:
        raise NotImplementedError

    def now(self) -> float:
        return time.time()

    async def pass_time(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    def snapshot(self, pid: int, **fields: Any) -> WorkerSnapshot:
        return make_snapshot(pid=pid, at=self.now(), **fields)


class FilesMedium(Medium):
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.clock = FakeClock(time.time())

    def make(self, pid: int) -> StatsExchange:
        return FileExchange(self.directory, f"box:{pid}", self.ttl, clock=self.clock)

    def now(self) -> float:
        return self.clock.now

    async def pass_time(self, seconds: float) -> None:
        self.clock.advance(seconds)


class RedisMedium(Medium):
    def __init__(self, broker: RedisBroker) -> None:
        self.broker = broker

    def make(self, pid: int) -> StatsExchange:
        return RedisExchange(self.broker, f"box:{pid}", self.ttl)


@pytest.fixture(params=["files", "redis"])
async def medium(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Medium]:
    if request.param == "files":
        yield FilesMedium(tmp_path / "stats")
        return
    redis_server: RedisServer = request.getfixturevalue("redis_server")
    broker = await connected_broker(redis_server.url)
    yield RedisMedium(broker)
    await broker.disconnect()


def pids(snapshots: list[WorkerSnapshot]) -> list[int]:
    return sorted(snapshot["pid"] for snapshot in snapshots)


# --- the contract, on both media ----------------------------------------------------------


async def test_every_worker_sees_every_live_worker(medium: Medium) -> None:
    one, two = medium.make(1), medium.make(2)
    assert await one.collect() == []
    await one.publish(medium.snapshot(1, connections=13))
    await two.publish(medium.snapshot(2, connections=17))
    for exchange in (one, two):
        found = await exchange.collect()
        assert pids(found) == [1, 2]
        assert sum(snapshot["connections"] for snapshot in found) == 30


async def test_publishing_again_replaces_the_snapshot(medium: Medium) -> None:
    one = medium.make(1)
    await one.publish(medium.snapshot(1, connections=1))
    await one.publish(medium.snapshot(1, connections=2))
    found = await one.collect()
    assert [(s["pid"], s["connections"]) for s in found] == [(1, 2)]


async def test_a_worker_that_stops_publishing_expires_after_its_ttl(medium: Medium) -> None:
    silent, alive = medium.make(1), medium.make(2)
    await silent.publish(medium.snapshot(1))
    await medium.pass_time(medium.ttl * 0.6)
    await alive.publish(medium.snapshot(2))
    assert pids(await alive.collect()) == [1, 2]  # within its TTL: still counted
    await medium.pass_time(medium.ttl * 0.6)
    assert pids(await alive.collect()) == [2]


async def test_publishing_keeps_a_worker_alive_past_its_first_ttl(medium: Medium) -> None:
    one = medium.make(1)
    for _ in range(3):
        await one.publish(medium.snapshot(1))
        await medium.pass_time(medium.ttl * 0.6)
    assert pids(await one.collect()) == [1]


async def test_remove_takes_away_only_this_workers_snapshot(medium: Medium) -> None:
    one, two = medium.make(1), medium.make(2)
    await one.publish(medium.snapshot(1))
    await two.publish(medium.snapshot(2))
    await one.remove()
    assert pids(await two.collect()) == [2]
    await one.remove()  # twice, or before any publish: harmless
    await medium.make(3).remove()
    assert pids(await two.collect()) == [2]


# --- files ---------------------------------------------------------------------------


WRITER = """
import asyncio, sys
from app.fleet.files import FileExchange
from tests.support.snapshots import make_snapshot

async def main() -> None:
    exchange = FileExchange(sys.argv[1], "box:1", 3600)
    count = 0
    while True:
        count += 1
        await exchange.publish(make_snapshot(pid=1, connections=count))
        if count == 1:
            print("ready", flush=True)

asyncio.run(main())
"""


@pytest.fixture
def busy_writer(tmp_path: Path) -> Iterator[Path]:
    """Another process rewriting its snapshot in ``tmp_path`` as fast as it can."""
    with subprocess.Popen(
        [sys.executable, "-c", WRITER, str(tmp_path)],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        text=True,
    ) as writer:
        try:
            assert writer.stdout is not None and writer.stdout.readline() == "ready\n"
            yield tmp_path
        finally:
            writer.kill()


async def test_a_reader_never_sees_a_half_written_snapshot(busy_writer: Path) -> None:
    reader = FileExchange(busy_writer, "box:2", 3600)
    seen: set[int] = set()
    # Until the writer has been seen mid-rewrite-loop often enough (a busy machine slows
    # it down: count rewrites seen, not seconds), with a generous cap.
    deadline = time.monotonic() + 30
    reads = 0
    while len(seen) <= 100 and time.monotonic() < deadline:
        found = await reader.collect()
        reads += 1
        assert pids(found) == [1], f"read {reads} found {found}"
        seen.add(found[0]["connections"])
    assert len(seen) > 100, "the writer was rewriting all along"


def names(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.iterdir())


async def test_stale_files_are_deleted_by_whoever_finds_them(tmp_path: Path) -> None:
    clock = FakeClock(time.time())
    dead = FileExchange(tmp_path, "box:1", 1.0, clock=clock)
    reader = FileExchange(tmp_path, "box:2", 1.0, clock=clock)
    await dead.publish(make_snapshot(pid=1, at=clock.now))
    clock.advance(1.5)
    assert await reader.collect() == []
    assert not dead.path.exists()


async def test_what_is_not_a_snapshot_is_skipped_and_left_alone(tmp_path: Path) -> None:
    exchange = FileExchange(tmp_path, "box:1", 60)
    await exchange.publish(make_snapshot(pid=1))
    foreign = {
        ".box_9.tmp": make_snapshot(pid=9).__repr__(),  # a writer's partial file
        "notes.txt": "hello",
        "garbage.json": "{not json",
        "old-version.json": '{"worker": "box:8"}',
    }
    for name, text in foreign.items():
        (tmp_path / name).write_text(text)
    assert pids(await exchange.collect()) == [1]
    assert names(tmp_path) == sorted([*foreign, "box_1.json"])


async def test_a_vanished_directory_is_made_again(tmp_path: Path) -> None:
    directory = tmp_path / "gone"
    exchange = FileExchange(directory, "box:1", 60)
    assert await exchange.collect() == []
    await exchange.publish(make_snapshot(pid=1))
    assert pids(await exchange.collect()) == [1]
    await exchange.remove()
    assert names(directory) == []  # neither the snapshot nor the partial file stays


async def test_an_unusable_directory_is_reported_as_unavailable(tmp_path: Path) -> None:
    not_a_directory = tmp_path / "file"
    not_a_directory.write_text("")
    exchange = FileExchange(not_a_directory, "box:1", 60)
    with pytest.raises(ExchangeUnavailableError):
        await exchange.publish(make_snapshot(pid=1))
    with pytest.raises(ExchangeUnavailableError):
        await exchange.collect()


# --- redis ---------------------------------------------------------------------------


@pytest.fixture
async def redis_broker(redis_server: RedisServer) -> AsyncIterator[RedisBroker]:
    broker = await connected_broker(redis_server.url)
    yield broker
    await broker.disconnect()


async def test_redis_keys_expire_by_themselves(redis_broker: RedisBroker) -> None:
    exchange = RedisExchange(redis_broker, "box:1", 30)
    await exchange.publish(make_snapshot(pid=1))
    client: aioredis.Redis = redis_broker.client
    prefix = redis_broker.key_prefix
    assert exchange.key == f"{prefix}:workers:box:1"
    assert 29_000 < await client.pttl(exchange.key) <= 30_000
    assert await client.zrange(f"{prefix}:workers", 0, -1) == [b"box:1"]
    assert await client.pttl(f"{prefix}:workers") > 0  # the index goes away with the workers


async def test_the_redis_index_forgets_workers_gone_for_good(redis_broker: RedisBroker) -> None:
    ttl = 1.0
    gone = RedisExchange(redis_broker, "box:1", ttl)
    alive = RedisExchange(redis_broker, "box:2", ttl)
    long_ago = time.time() - ttl * INDEX_HORIZON_TTLS - 1
    await gone.publish(make_snapshot(pid=1, at=long_ago))  # as if killed long ago
    await alive.publish(make_snapshot(pid=2))
    members = await redis_broker.client.zrange(alive.index_key, 0, -1)
    assert members == [b"box:2"]


async def test_redis_keys_never_look_like_a_channel(redis_broker: RedisBroker) -> None:
    exchange = RedisExchange(redis_broker, "box:1", 30)
    # A channel named "workers" is the stream <prefix>:{workers}: braces keep it apart.
    assert redis_broker.key("workers") != exchange.index_key
    await publish_one(redis_broker, "workers", b"data: x\n\n")
    await exchange.publish(make_snapshot(pid=1))
    assert pids(await exchange.collect()) == [1]


@pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed")
async def test_redis_gone_is_reported_as_unavailable() -> None:
    server = RedisServer().start()
    try:
        broker = await connected_broker(server.url)
        exchange = RedisExchange(broker, "box:1", 30)
        await exchange.publish(make_snapshot(pid=1))
        server.kill()
        for call in (exchange.publish(make_snapshot(pid=1)), exchange.collect(), exchange.remove()):
            with pytest.raises(ExchangeUnavailableError):
                await call
        await broker.disconnect()
    finally:
        server.close()


# --- which one ------------------------------------------------------------------------


@pytest.fixture
def settings_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    monkeypatch.chdir(tmp_path)  # no stray .env
    yield


async def test_redis_broker_means_redis_exchange(
    settings_env: None, redis_broker: RedisBroker, tmp_path: Path
) -> None:
    settings = load_settings(broker_url=redis_broker.url)
    environ = {"HERALD_STATS_DIR": str(tmp_path)}  # Redis wins: it spans instances too
    exchange = create_exchange(settings, redis_broker, "box:1", environ=environ)
    assert isinstance(exchange, RedisExchange)
    assert exchange.ttl_seconds == 3 * settings.metrics_share_seconds


def test_a_stats_directory_means_files_else_this_process_alone(
    settings_env: None, tmp_path: Path
) -> None:
    settings = load_settings(metrics_share_seconds=2)
    broker = object()
    files = create_exchange(settings, broker, "box:1", environ={"HERALD_STATS_DIR": str(tmp_path)})  # type: ignore[arg-type]
    assert isinstance(files, FileExchange) and files.directory == tmp_path
    assert files.ttl_seconds == 6
    for environ in ({}, {"HERALD_STATS_DIR": "  "}):
        local = create_exchange(settings, broker, "box:1", environ=environ)  # type: ignore[arg-type]
        assert isinstance(local, LocalExchange)
