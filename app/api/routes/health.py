"""``/health``: readiness for load balancers and platforms.

200 while the process can answer and its broker is reachable, whatever the
memory level: a worker that refuses new streams at ``critical`` still serves
the open ones, and a platform restarting it on a failed check would cut them
all. The memory level and the health score (``app.memory.health``) let a
balancer prefer other workers instead. 503 while the broker is unreachable
(Redis restarting): publishes fail then, so a balancer should send traffic
elsewhere; the body names the broker's state, and open streams stay open.
A draining worker (``POST /api/admin/drain``) stays 200, for the memory guard's
reason, and says so in ``drain`` (``draining``: true).
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from app.api.deps import DrainStateDep, HubDep, MemoryGuardDep
from app.sse.hub import DEFAULT_RETRY_AFTER_SECONDS

__all__ = ["router"]

router = APIRouter(tags=["health"])


@router.get("/health", responses={503: {"description": "The broker is unreachable"}})
async def health(hub: HubDep, guard: MemoryGuardDep, drain: DrainStateDep) -> JSONResponse:
    broker = hub.broker_stats()
    ok = broker.get("state") == "ok"
    body = {
        "status": "ok" if ok else "degraded",
        "connections": hub.connection_count,
        "uptime_s": round(hub.clock() - hub.started_at, 1),
        "memory_level": str(guard.level),
        "health_score": guard.health_score(),
        # The backplane's state (memory: always ok; redis: ok / down while reconnecting).
        "broker": {"url": broker.get("url"), "state": broker.get("state")},
        "drain": drain.as_dict(),
    }
    if ok:
        return JSONResponse(body)
    body["detail"] = f"the broker is unavailable (state: {broker.get('state')})"
    return JSONResponse(
        body, status_code=503, headers={"Retry-After": str(DEFAULT_RETRY_AFTER_SECONDS)}
    )
