"""The admin API: what an operator needs to see memory before it hurts.

Every route needs the admin token (``app.api.admin_auth``). The JSON shapes are
documented in the README ("Admin API"); keys are only ever added, so a
dashboard written against them keeps working.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends

from app.api.admin_auth import require_admin
from app.api.deps import HubDep
from app.api.operator_deps import MemoryGuardDep, ResponseServiceDep
from app.memory.guard import MemoryGuard
from app.memory.process import process_stats
from app.responses.service import ResponseService
from app.sse.hub import Hub

__all__ = ["admin_metrics", "router"]

router = APIRouter(prefix="/api", tags=["admin"], dependencies=[Depends(require_admin)])


def admin_metrics(guard: MemoryGuard, hub: Hub, responses: ResponseService) -> dict[str, object]:
    """The ``/api/admin/metrics`` document, one section per part of the service."""
    return {
        "memory": guard.snapshot(),
        "cache": responses.cache.stats().as_dict(),
        "sse": hub.stats(),
        "responses": responses.stats(),
        "process": process_stats(),
    }


@router.get("/admin/metrics")
async def get_admin_metrics(
    guard: MemoryGuardDep, hub: HubDep, responses: ResponseServiceDep
) -> dict[str, object]:
    """Memory, cache, SSE, responses and process figures of this worker."""
    return admin_metrics(guard, hub, responses)


@router.get("/stats/memory")
async def get_memory_stats(guard: MemoryGuardDep) -> dict[str, object]:
    """The ``memory`` section of ``/api/admin/metrics``."""
    return guard.snapshot()


@router.get("/stats/cache")
async def get_cache_stats(responses: ResponseServiceDep) -> dict[str, object]:
    """The ``cache`` section of ``/api/admin/metrics``: the response cache."""
    return dict(responses.cache.stats().as_dict())
