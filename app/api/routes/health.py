"""``/health``: liveness for load balancers and platforms."""

from __future__ import annotations

from fastapi import APIRouter

from app.api.deps import HubDep

__all__ = ["router"]

router = APIRouter(tags=["health"])


@router.get("/health")
async def health(hub: HubDep) -> dict[str, object]:
    return {
        "status": "ok",
        "connections": hub.connection_count,
        "uptime_s": round(hub.clock() - hub.started_at, 1),
    }
