"""A real Herald process on a real Redis Cluster, streams open over SSE, while the cluster
fails: a master SIGKILLed mid-publish (its replica promoted, the old master back as a
replica), and a slot migration (MOVED / ASK) under open streams.

Every stream must stay open, get every acknowledged event of its channels exactly once
and in one order, and resume delivery within the failover time plus a bounded delay.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
import pytest

from app.wire.event_id import parse_event_id
from tests.conftest import FAST_TIMERS
from tests.support.redis_cluster import NODE_TIMEOUT_MS, REDIS_CLI, RedisCluster
from tests.support.redis_server import REDIS_SERVER
from tests.support.server import ServerProcess
from tests.support.sse_client import EventStream, open_stream

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        REDIS_SERVER is None or REDIS_CLI is None, reason="redis-server is not installed"
    ),
]

SHARDS = 16
# Generous: the machine is shared; the figure printed is what matters.
RESUME_MARGIN_SECONDS = 10.0


@pytest.fixture
def cluster() -> Iterator[RedisCluster]:
    """A cluster of its own: these tests kill and move its nodes."""
    started = RedisCluster().start()
    yield started
    started.close()


@pytest.fixture
def herald(cluster: RedisCluster) -> Iterator[ServerProcess]:
    env = {
        **FAST_TIMERS,
        "BROKER_URL": cluster.seed_url(2),  # two seeds: the slot map is learnt
        "REDIS_KEY_PREFIX": f"f{uuid.uuid4().hex[:8]}",
        "REDIS_CLUSTER_SHARDS": str(SHARDS),
        "SSE_QUEUE_SIZE": "10000",
    }
    server = ServerProcess(env).start()
    yield server
    server.close()


def channels_on_every_master(cluster: RedisCluster, prefix: str, count: int) -> list[str]:
    """``count`` channels, spread so every master serves some."""
    chosen: list[str] = []
    by_master: dict[int, list[str]] = {}
    for i in range(200):
        name = f"fo{i}"
        shard = zlib.crc32(name.encode()) % SHARDS
        by_master.setdefault(cluster.master_of(f"{{{prefix}:s{shard}}}:log"), []).append(name)
    while len(chosen) < count:
        for names in by_master.values():
            if names and len(chosen) < count:
                chosen.append(names.pop(0))
    return chosen


@dataclass
class Reading:
    """What one stream received, with when."""

    channels: list[str]
    stream: EventStream | None = None
    got: list[tuple[str, str, float]] = field(default_factory=list)  # id, data, time
    ended: bool = False


async def read(reading: Reading) -> None:
    """Until cancelled (a read timing out mid-chunk would break the httpx stream)."""
    assert reading.stream is not None
    while True:
        try:
            message = await reading.stream.next_event(timeout=3600)
        except EOFError:
            reading.ended = True
            return
        if message.event == "reset":
            raise AssertionError(f"reset on {reading.channels}: {message.data}")
        reading.got.append((message.id, message.data, time.monotonic()))


@dataclass
class Publishing:
    acked: dict[str, tuple[str, str, float]] = field(default_factory=dict)  # data → channel, id
    refused: set[str] = field(default_factory=set)


async def publish_all(base_url: str, channels: list[str], log: Publishing, stop: asyncio.Event):  # type: ignore[no-untyped-def]
    async with httpx.AsyncClient(base_url=base_url, timeout=10) as client:
        i = 0
        while not stop.is_set():
            channel = channels[i % len(channels)]
            data = f"e{i}"
            i += 1
            try:
                answer = await client.post(f"/events/{channel}", json={"data": data})
            except httpx.HTTPError:
                log.refused.add(data)
                continue
            if answer.status_code == 202:
                log.acked[data] = (channel, answer.json()["id"], time.monotonic())
            else:
                assert answer.status_code == 503, answer.text
                log.refused.add(data)
                await asyncio.sleep(0.02)
            await asyncio.sleep(0.01)


def check(readings: list[Reading], log: Publishing) -> None:
    """Exactly once, in order, nothing acknowledged missing, streams still open."""
    for reading in readings:
        assert not reading.ended, f"stream on {reading.channels} closed"
        datas = [data for _, data, _ in reading.got]
        assert len(datas) == len(set(datas)), f"duplicates on {reading.channels}"
        keys = [parse_event_id(event_id) for event_id, _, _ in reading.got]
        assert keys == sorted(keys), f"out of order on {reading.channels}"  # type: ignore[type-var]
        wanted = {d for d, (channel, _, _) in log.acked.items() if channel in reading.channels}
        missing = wanted - set(datas)
        assert not missing, f"{len(missing)} acknowledged events lost on {reading.channels}"
        unknown = set(datas) - set(log.acked) - log.refused
        assert not unknown, unknown
        for event_id, data, _ in reading.got:
            if data in log.acked:
                assert log.acked[data][1] == event_id


async def run_with_streams(
    herald: ServerProcess, channels: list[str], fault: object, settle: float = 1.0
) -> tuple[list[Reading], Publishing, float]:
    """Streams on each channel and on all of them; publish while ``fault()`` (a coroutine
    function) runs; returns the readings, the publishes and when the fault began."""
    readings = [Reading([c]) for c in channels] + [Reading(list(channels))]
    log = Publishing()
    stop_publishing = asyncio.Event()
    async with contextlib.AsyncExitStack() as stack:
        for reading in readings:
            query = "&".join(f"channel={c}" for c in reading.channels)
            reading.stream = await stack.enter_async_context(
                open_stream(herald.base_url, f"/events?{query}")
            )
            await reading.stream.position()
        readers = [asyncio.create_task(read(r)) for r in readings]
        publisher = asyncio.create_task(
            publish_all(herald.base_url, channels, log, stop_publishing)
        )
        await asyncio.sleep(settle)
        began = time.monotonic()
        await fault()  # type: ignore[operator]
        await asyncio.sleep(settle)
        stop_publishing.set()
        await publisher
        # Everything acknowledged arrives (or the check below says what did not).
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if all(
                {d for d, (c, _, _) in log.acked.items() if c in r.channels}
                <= {data for _, data, _ in r.got}
                for r in readings
            ):
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.3)  # time for a duplicate to show
        for task in readers:
            if task.done():
                task.result()  # a reset raises here
            task.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
    return readings, log, began


async def test_a_master_killed_mid_publish_loses_no_acknowledged_event(
    cluster: RedisCluster, herald: ServerProcess
) -> None:
    prefix = herald.env["REDIS_KEY_PREFIX"]
    channels = channels_on_every_master(cluster, prefix, 6)
    victim = cluster.master_of(f"{{{prefix}:s{zlib.crc32(channels[0].encode()) % SHARDS}}}:log")
    timings: dict[str, float] = {}

    async def fail_over() -> None:
        timings["kill"] = time.monotonic()
        cluster.kill(victim)
        await asyncio.to_thread(cluster.wait_promoted, victim)
        timings["promoted"] = time.monotonic()
        await asyncio.sleep(1.0)
        cluster.restart(victim)  # back as a replica of the promoted one
        await asyncio.to_thread(cluster.wait_ok)
        timings["rejoined"] = time.monotonic()

    readings, log, _ = await run_with_streams(herald, channels, fail_over, settle=1.5)
    check(readings, log)
    everything = readings[-1]
    kill = timings["kill"]
    # Delivery resumed: the first event acknowledged after the kill, and when it arrived.
    after = sorted((t, d) for d, (_, _, t) in log.acked.items() if t > kill)
    assert after, "no publish was acknowledged after the kill"
    arrived = {data: t for _, data, t in everything.got}
    resumed = min(arrived[d] for _, d in after)
    print(
        f"\nfailover: promoted {timings['promoted'] - kill:.2f} s after the kill, "
        f"delivery resumed {resumed - kill:.2f} s after it, old master rejoined at "
        f"{timings['rejoined'] - kill:.2f} s; acked {len(log.acked)}, refused (503) "
        f"{len(log.refused)}, delivered on the all-channel stream {len(everything.got)}; "
        f"lost 0, duplicated 0, out of order 0"
    )
    assert resumed - kill < NODE_TIMEOUT_MS / 1000 + RESUME_MARGIN_SECONDS
    assert "resync" not in herald.logs()


async def test_a_slot_migration_under_open_streams_keeps_delivery_going(
    cluster: RedisCluster, herald: ServerProcess
) -> None:
    prefix = herald.env["REDIS_KEY_PREFIX"]
    channels = channels_on_every_master(cluster, prefix, 6)
    # The channel whose shard's slot redis-cli reaches first: the fewest slots to move.
    log_keys = [f"{{{prefix}:s{zlib.crc32(c.encode()) % SHARDS}}}:log" for c in channels]
    log_key = min(log_keys, key=lambda key: cluster.slot_offset(key)[1])
    moved: dict[str, int] = {}

    async def migrate() -> None:
        source = cluster.master_of(log_key)
        moved["to"] = await asyncio.to_thread(cluster.reshard, log_key)
        moved["from"] = source

    readings, log, _ = await run_with_streams(herald, channels, migrate)
    assert cluster.master_of(log_key) == moved["to"] != moved["from"]
    check(readings, log)
    async with httpx.AsyncClient(base_url=herald.base_url) as client:
        health = (await client.get("/health")).json()
    print(
        f"\nreshard (redis-cli): slot {cluster.slot_offset(log_key)[0]} of {log_key} moved "
        f"{moved['from']} → {moved['to']}; acked "
        f"{len(log.acked)}, refused {len(log.refused)}; lost 0, duplicated 0, out of order 0"
    )
    assert health["broker"]["state"] == "ok", json.dumps(health)
