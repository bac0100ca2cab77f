"""``/metrics``: Prometheus exposition of every live worker's figures.

Whichever worker the scrape lands on answers for all of them (``app.fleet``),
one sample per worker with a ``worker`` label.

Needs the admin token unless ``METRICS_PUBLIC=true`` (a scrape config can send
it as ``authorization: {credentials: ...}``). With ``METRICS_PUBLIC=false`` and
no ``ADMIN_TOKEN`` the endpoint is off (503), like the admin API. The format
follows the scraper's ``Accept`` header (Prometheus text or OpenMetrics).
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from prometheus_client.exposition import choose_encoder

from app.api.admin_auth import require_admin
from app.api.deps import FleetViewDep, SettingsDep
from app.api.prometheus import HeraldCollector

__all__ = ["router"]

router = APIRouter(tags=["metrics"])


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}},
)
async def metrics(request: Request, settings: SettingsDep, fleet: FleetViewDep) -> Response:
    """Connections, events, cache, RSS and memory level of every worker, for Prometheus."""
    if not settings.metrics_public:
        require_admin(request, settings)
    encode, content_type = choose_encoder(request.headers.get("accept", ""))
    reading = await fleet.read()
    return Response(encode(HeraldCollector(reading.workers)), media_type=content_type)
