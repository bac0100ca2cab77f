"""Worker snapshots for tests: every field set, any of them overridden by name."""

from __future__ import annotations

import time
from typing import Any

from app.fleet.snapshot import WorkerSnapshot
from app.memory.levels import MemoryLevel

__all__ = ["make_snapshot"]

MB = 1024 * 1024


def make_snapshot(host: str = "box", pid: int = 100, **fields: Any) -> WorkerSnapshot:
    snapshot: WorkerSnapshot = {
        "worker": f"{host}:{pid}",
        "host": host,
        "pid": pid,
        "at": time.time(),
        "uptime_s": 10.0,
        "connections": 0,
        "channels": 0,
        "queued": 0,
        "published": 0,
        "delivered": 0,
        "dropped": 0,
        "overflow_disconnects": 0,
        "reaped": 0,
        "cache_hits": 0,
        "cache_misses": 0,
        "cache_items": 0,
        "cache_bytes": 0,
        "rss_bytes": 50 * MB,
        "socket_bytes": 1 * MB,
        "limit_bytes": 512 * MB,
        "level": MemoryLevel.NORMAL,
        "refusing": False,
        "health_score": 95,
        "cleanups_warning": 0,
        "cleanups_critical": 0,
        "rss_slope_bytes_per_s": 0.0,
        "leak_suspected": False,
    }
    snapshot.update(fields)  # type: ignore[typeddict-item]
    return snapshot
