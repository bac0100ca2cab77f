"""The admin API: what an operator needs to see memory before it hurts.

Every route needs the admin token (``app.api.admin_auth``). The JSON shapes are
documented in docs/http-api.md ("Admin API"); keys are only ever added, so a
dashboard written against them keeps working.

The sections describe the worker that answers; ``workers`` and ``total`` add
every live worker (``app.fleet``), so a request that lands on one worker of
several shows whose figures these are and what the whole service amounts to.
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends

from app.api.admin_auth import require_admin
from app.api.deps import FleetViewDep, HubDep, MemoryGuardDep, ResponseServiceDep
from app.core.config import Settings
from app.fleet.view import FleetView
from app.memory.guard import MemoryGuard
from app.memory.process import process_stats
from app.responses.service import ResponseService
from app.sse.hub import Hub

__all__ = ["admin_metrics", "router"]

router = APIRouter(prefix="/api", tags=["admin"], dependencies=[Depends(require_admin)])


def _limits(settings: Settings) -> dict[str, int]:
    return {
        "sse_max_connections": settings.sse_max_connections,
        "sse_queue_size": settings.sse_queue_size,
        "sse_history_size": settings.sse_history_size,
        "sse_history_max_channels": settings.sse_history_max_channels,
        "cache_max_items": settings.cache_max_items,
        "response_max_runs": settings.response_max_runs,
        "max_conversations": settings.max_conversations,
    }


async def admin_metrics(
    guard: MemoryGuard, hub: Hub, responses: ResponseService, fleet: FleetView
) -> dict[str, object]:
    """The ``/api/admin/metrics`` document: one section per part of this worker, then all."""
    document: dict[str, object] = {
        "memory": guard.snapshot(),
        "cache": responses.cache.stats().as_dict(),
        "sse": hub.stats(),
        "responses": responses.stats(),
        # Tasks alive in this worker's event loop: a fixed few for housekeeping, plus the
        # request and disconnect-watcher tasks of each stream still on the ASGI path (a stream
        # catching up, or served without Herald's protocol; a detached stream holds none).
        "process": {**process_stats(), "tasks": len(asyncio.all_tasks())},
        # The count bounds the sections above are measured against (byte bounds
        # are in the sections): what `memory_report --analyze` compares with.
        "limits": _limits(hub.settings),
    }
    # read() takes this worker's live snapshot before its first await, so the
    # sections above and this worker's entry in ``workers`` agree.
    reading = await fleet.read()
    document["worker"] = reading.worker
    document["workers"] = reading.workers
    document["total"] = reading.total()
    document["exchange"] = {"kind": reading.exchange, "state": reading.exchange_state}
    return document


@router.get("/admin/metrics")
async def get_admin_metrics(
    guard: MemoryGuardDep, hub: HubDep, responses: ResponseServiceDep, fleet: FleetViewDep
) -> dict[str, object]:
    """Memory, cache, SSE, responses and process figures of this worker; every worker's summary."""
    return await admin_metrics(guard, hub, responses, fleet)


@router.get("/stats/memory")
async def get_memory_stats(guard: MemoryGuardDep) -> dict[str, object]:
    """The ``memory`` section of ``/api/admin/metrics``."""
    return guard.snapshot()


@router.get("/stats/cache")
async def get_cache_stats(responses: ResponseServiceDep) -> dict[str, object]:
    """The ``cache`` section of ``/api/admin/metrics``: the response cache."""
    return dict(responses.cache.stats().as_dict())
