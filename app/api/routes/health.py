"""``/health``: liveness for load balancers and platforms.

Stays 200 while the process can answer, whatever the memory level: a worker
that refuses new streams at ``critical`` still serves the open ones, and a
platform restarting it on a failed check would cut them all. The memory level
and the health score (``app.memory.health``) let a balancer prefer other
workers instead. A draining worker (``POST /api/admin/drain``) stays 200 too,
for the same reason, and says so in ``drain`` (``draining``: true).
"""

from __future__ import annotations

from fastapi import APIRouter

from app.api.deps import DrainStateDep, HubDep, MemoryGuardDep

__all__ = ["router"]

router = APIRouter(tags=["health"])


@router.get("/health")
async def health(hub: HubDep, guard: MemoryGuardDep, drain: DrainStateDep) -> dict[str, object]:
    broker = hub.broker.stats()
    return {
        "status": "ok",
        "connections": hub.connection_count,
        "uptime_s": round(hub.clock() - hub.started_at, 1),
        "memory_level": str(guard.level),
        "health_score": guard.health_score(),
        # The backplane's state (memory: always ok; redis: ok / down while reconnecting).
        "broker": {"url": broker.get("url"), "state": broker.get("state")},
        "drain": drain.as_dict(),
    }
