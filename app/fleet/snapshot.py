"""One worker's figures as a flat, JSON-able record that other workers can read.

A snapshot holds exactly what ``/metrics`` and the ``workers`` / ``total``
parts of ``/api/admin/metrics`` need, nothing more: it is written every few
seconds by every worker, so it stays small (about 470 bytes of JSON).

Snapshots cross process (and, through Redis, host and version) boundaries, so
reading one validates it: a record written by an older or newer Herald that
lacks a field is skipped, extra fields are ignored.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable, Mapping
from typing import NotRequired

from pydantic import TypeAdapter, ValidationError
from typing_extensions import TypedDict  # pydantic needs this one on Python < 3.12

from app.memory.guard import MemoryGuard
from app.memory.levels import MemoryLevel
from app.responses.service import ResponseService
from app.sse.hub import Hub

__all__ = [
    "WorkerSnapshot",
    "decode_snapshot",
    "encode_snapshot",
    "take_snapshot",
    "worker_id",
]


class WorkerSnapshot(TypedDict):
    """One worker's figures at wall time ``at`` (documented in docs/http-api.md, "Admin API")."""

    worker: str
    host: str
    pid: int
    at: float
    uptime_s: float
    # sse
    connections: int
    channels: int
    queued: int
    published: int
    delivered: int
    dropped: int
    overflow_disconnects: int
    reaped: int
    # paged replays (app.sse.replays); optional so older workers' snapshots are still read
    replays_running: NotRequired[int]
    replays_waiting: NotRequired[int]
    replay_page_bytes: NotRequired[int]
    # response cache
    cache_hits: int
    cache_misses: int
    cache_items: int
    cache_bytes: int
    # memory guard
    rss_bytes: int
    socket_bytes: int  # the cgroup's or namespace's, the same for workers sharing one
    limit_bytes: int
    level: MemoryLevel
    refusing: bool
    health_score: int
    cleanups_warning: int
    cleanups_critical: int
    rss_slope_bytes_per_s: float
    leak_suspected: bool
    # operator actions this worker coordinated, by action (app.admin.audit);
    # optional so snapshots from workers of an older Herald are still read
    admin_actions: NotRequired[dict[str, int]]


_ADAPTER = TypeAdapter(WorkerSnapshot)


def worker_id(host: str | None = None, pid: int | None = None) -> str:
    """``<hostname>:<pid>``: unique among live workers of every host sharing one Redis."""
    return f"{host or socket.gethostname()}:{os.getpid() if pid is None else pid}"


def _int(stats: dict[str, object], key: str) -> int:
    value = stats[key]
    if not isinstance(value, int):
        raise TypeError(f"stat {key!r} is not an integer: {value!r}")
    return value


def take_snapshot(
    hub: Hub,
    responses: ResponseService,
    guard: MemoryGuard,
    *,
    host: str,
    pid: int,
    clock: Callable[[], float] = time.time,
    admin_actions: Mapping[str, int] | None = None,
) -> WorkerSnapshot:
    """This worker's figures now, read from the live objects."""
    # One hub.stats() call: its sums over connections include live streams'
    # deliveries, which the hub's counters only receive when a stream ends.
    sse = hub.stats()
    cache = responses.cache.stats()
    trend = guard.trend_report()
    snapshot: WorkerSnapshot = {
        "worker": worker_id(host, pid),
        "host": host,
        "pid": pid,
        "at": clock(),
        "uptime_s": round(hub.clock() - hub.started_at, 1),
        "connections": _int(sse, "connections"),
        "channels": _int(sse, "channels"),
        "queued": _int(sse, "queued"),
        "published": _int(sse, "published"),
        "delivered": _int(sse, "delivered"),
        "dropped": _int(sse, "dropped"),
        "overflow_disconnects": _int(sse, "overflow_disconnects"),
        "reaped": _int(sse, "reaped"),
        "cache_hits": cache.hits,
        "cache_misses": cache.misses,
        "cache_items": cache.items,
        "cache_bytes": cache.bytes,
        "rss_bytes": guard.rss_bytes,
        "socket_bytes": guard.socket_bytes,
        "limit_bytes": guard.limit.bytes,
        "level": guard.level,
        "refusing": guard.refusing,
        "health_score": guard.health_score(),
        "cleanups_warning": guard.cleanups[MemoryLevel.WARNING],
        "cleanups_critical": guard.cleanups[MemoryLevel.CRITICAL],
        "rss_slope_bytes_per_s": trend.slope_bytes_per_s,
        "leak_suspected": trend.leak_suspected,
    }
    replays = hub.replays
    snapshot["replays_running"] = replays.running
    snapshot["replays_waiting"] = replays.waiting
    snapshot["replay_page_bytes"] = replays.page_bytes
    if admin_actions:
        snapshot["admin_actions"] = dict(admin_actions)
    return snapshot


def encode_snapshot(snapshot: WorkerSnapshot) -> bytes:
    return json.dumps(snapshot, separators=(",", ":")).encode()


def decode_snapshot(raw: bytes | str) -> WorkerSnapshot | None:
    """The snapshot in ``raw``, or ``None`` if it is not one (torn, foreign or incompatible)."""
    try:
        return _ADAPTER.validate_json(raw)
    except ValidationError:
        return None
