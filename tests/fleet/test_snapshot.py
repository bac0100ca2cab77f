"""A worker snapshot: read from the live objects, and safe to read back from another process."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from app.broker.memory import MemoryBroker
from app.core.config import load_settings
from app.fleet.snapshot import decode_snapshot, encode_snapshot, take_snapshot, worker_id
from app.memory.box import BoxMemory, BoxReading
from app.memory.guard import MemoryGuard
from app.memory.levels import MemoryLevel
from app.memory.limits import MemoryLimit
from app.responses.service import ResponseService, build_producers
from app.sse.hub import Hub
from tests.support.clock import FakeClock
from tests.support.snapshots import make_snapshot

MB = 1024 * 1024


@pytest.fixture
async def parts(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> AsyncIterator[tuple[Hub, ResponseService, MemoryGuard]]:
    monkeypatch.chdir(tmp_path)  # no stray .env
    settings = load_settings()
    broker = MemoryBroker(
        history_size=10, history_max_bytes=MB, history_max_channels=10, channel_ttl_seconds=60
    )
    hub = Hub(settings, broker)
    service = ResponseService(settings, build_producers(settings))
    guard = MemoryGuard(
        settings,
        hub,
        service,
        rss_source=lambda: 95 * MB,
        limit=MemoryLimit(100 * MB, "setting"),
        box=BoxMemory("processes", lambda: BoxReading(97 * MB, 2 * MB)),
    )
    yield hub, service, guard
    await service.stop()


def test_worker_id_is_host_and_pid() -> None:
    assert worker_id() == f"{socket.gethostname()}:{os.getpid()}"
    assert worker_id("web-1", 42) == "web-1:42"


async def test_snapshot_reads_the_live_objects(
    parts: tuple[Hub, ResponseService, MemoryGuard],
) -> None:
    hub, service, guard = parts
    before = take_snapshot(hub, service, guard, host="web-1", pid=42, clock=FakeClock(5.0))
    assert before["worker"] == "web-1:42" and before["at"] == 5.0
    assert before["level"] == MemoryLevel.NORMAL and before["cleanups_critical"] == 0

    guard.check()  # 95 % of the limit: critical, with an aggressive cleanup
    await hub.publish("orders", {"n": 1})
    service.cache.get("missing")
    after = take_snapshot(hub, service, guard, host="web-1", pid=42)
    assert after["rss_bytes"] == 95 * MB and after["limit_bytes"] == 100 * MB
    assert after["socket_bytes"] == 2 * MB
    assert after["level"] == MemoryLevel.CRITICAL and after["refusing"] is True
    assert after["cleanups_critical"] == 1
    assert after["health_score"] == guard.health_score()
    assert after["published"] == before["published"] + 1
    assert after["cache_misses"] == before["cache_misses"] + 1
    sse = hub.stats()
    assert (after["connections"], after["channels"], after["queued"]) == (
        sse["connections"],
        sse["channels"],
        sse["queued"],
    )


def test_a_snapshot_survives_the_trip_through_json() -> None:
    snapshot = make_snapshot(connections=3, level=MemoryLevel.WARNING, rss_slope_bytes_per_s=1.5)
    raw = encode_snapshot(snapshot)
    assert len(raw) < 1024  # written every few seconds by every worker: keep it small
    assert decode_snapshot(raw) == snapshot
    assert decode_snapshot(raw.decode()) == snapshot


def test_fields_from_a_newer_herald_are_ignored() -> None:
    document = {**make_snapshot(), "gpu_bytes": 12}
    decoded = decode_snapshot(json.dumps(document))
    assert decoded is not None and "gpu_bytes" not in decoded


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b'{"worker": "box:1", "pid": 1',  # torn write
        b"[]",
        json.dumps({k: v for k, v in make_snapshot().items() if k != "connections"}).encode(),
        json.dumps({**make_snapshot(), "level": "melting"}).encode(),
        json.dumps({**make_snapshot(), "connections": "many"}).encode(),
    ],
    ids=["empty", "torn", "not-an-object", "missing-field", "unknown-level", "wrong-type"],
)
def test_anything_else_is_not_a_snapshot(raw: bytes) -> None:
    assert decode_snapshot(raw) is None
