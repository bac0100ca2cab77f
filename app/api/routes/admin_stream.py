"""``/api/admin/ticket`` and ``/api/admin/stream``: the admin metrics, live, for a browser.

``GET /api/admin/stream`` sends the ``/api/admin/metrics`` document (built by
the same function, so the two never disagree) as ``event: metrics`` every
``ADMIN_STREAM_SECONDS``, plus a ``rates`` section the one-shot document cannot
have: events published and delivered per second across every worker since the
previous frame, and the cache hit rate.

Who may read it: a browser's ``EventSource`` cannot send headers, so besides
the admin API's usual credentials (``app.api.admin_auth``: bearer, header or
``?admin_token=``) the stream takes ``?ticket=``, a signed ticket that lives
``ADMIN_TICKET_SECONDS`` (``app.dashboard.tickets``), bought with the token in
a header at ``POST /api/admin/ticket``. A ticket, not the token, is what then
sits in the URL, and in whatever logs see it.

Design decisions:

1. No per-stream state but the previous totals (for the rates), no queue: each
   frame is built when it is due and written at once. A slow reader holds up
   only its own generator.
2. At most ``ADMIN_STREAM_MAX_CONNECTIONS`` streams per worker, counted by
   :class:`StreamSlots` around the response's whole life (``__call__``), so a
   slot is given back however the stream ends, even one that never started.
   Refused: ``503`` with ``Retry-After``.
3. The memory guard never refuses this stream: it is what an operator opens
   when memory is short.
4. The generator checks for shutdown between frames, every
   :data:`SHUTDOWN_POLL_SECONDS`, like the hub's watcher: a draining worker
   ends these streams at once instead of waiting out a frame interval.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Annotated, cast

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from pydantic import BaseModel
from sse_starlette import EventSourceResponse
from starlette.responses import JSONResponse
from starlette.types import Receive, Scope, Send

from app.api.admin_auth import ADMIN_DISABLED_DETAIL, require_admin
from app.api.deps import (
    FleetViewDep,
    HubDep,
    MemoryGuardDep,
    ResponseServiceDep,
    SettingsDep,
)
from app.api.routes.admin import admin_metrics
from app.auth.client_address import client_address
from app.core.config import Settings
from app.dashboard.tickets import TicketError, issue_ticket, verify_ticket
from app.fleet.view import FleetView
from app.memory.guard import MemoryGuard
from app.responses.service import ResponseService
from app.sse.hub import Hub
from app.sse.shutdown import shutdown_requested
from app.wire.encoding import encode_body, encode_retry

__all__ = [
    "SHUTDOWN_POLL_SECONDS",
    "AdminStreamResponse",
    "CounterSample",
    "StreamSlots",
    "TicketIssued",
    "rates",
    "router",
]

logger = logging.getLogger("herald.admin")

router = APIRouter(prefix="/api/admin", tags=["admin"])

SHUTDOWN_POLL_SECONDS = 0.1
STREAM_URL = "/api/admin/stream"
FULL_RETRY_AFTER_SECONDS = 10


class StreamSlots:
    """A counter with a cap: how many admin streams this worker has open."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_use = 0

    def try_acquire(self) -> bool:
        if self.in_use >= self.limit:
            return False
        self.in_use += 1
        return True

    def release(self) -> None:
        self.in_use -= 1


def _slots(request: Request) -> StreamSlots:
    slots: StreamSlots = request.app.state.admin_streams
    return slots


StreamSlotsDep = Annotated[StreamSlots, Depends(_slots)]


class TicketIssued(BaseModel):
    ticket: str
    expires_in: float
    stream_url: str


@router.post("/ticket", dependencies=[Depends(require_admin)])
async def create_ticket(settings: SettingsDep) -> TicketIssued:
    """Trade the admin token (in a header) for a short-lived ticket to the admin stream."""
    if settings.admin_token is None:  # require_admin has answered 503 already; for the types
        raise HTTPException(503, ADMIN_DISABLED_DETAIL)
    ticket = issue_ticket(settings.admin_token, settings.admin_ticket_seconds)
    return TicketIssued(
        ticket=ticket,
        expires_in=settings.admin_ticket_seconds,
        stream_url=f"{STREAM_URL}?ticket={ticket}",
    )


# --- the rates -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CounterSample:
    """The service-wide counters at one moment (``total`` of the admin metrics)."""

    at: float
    published: int
    delivered: int
    cache_hits: int
    cache_misses: int

    @classmethod
    def of(cls, total: Mapping[str, int], at: float) -> CounterSample:
        return cls(
            at=at,
            published=total.get("published", 0),
            delivered=total.get("delivered", 0),
            cache_hits=total.get("cache_hits", 0),
            cache_misses=total.get("cache_misses", 0),
        )


def _per_second(now: int, before: int, seconds: float) -> float:
    # A worker recycled or gone takes its counters with it, so the sum can fall:
    # that is no negative traffic, just none we can measure.
    return round(max(0, now - before) / seconds, 2)


def rates(previous: CounterSample | None, current: CounterSample) -> dict[str, float | None]:
    """Events per second since ``previous`` (``None`` for the first frame) and the
    cache hit rate since start (``None`` before the first lookup)."""
    lookups = current.cache_hits + current.cache_misses
    hit_rate = round(current.cache_hits / lookups, 4) if lookups else None
    if previous is None or current.at <= previous.at:
        return {"published_per_s": None, "delivered_per_s": None, "cache_hit_rate": hit_rate}
    seconds = current.at - previous.at
    return {
        "published_per_s": _per_second(current.published, previous.published, seconds),
        "delivered_per_s": _per_second(current.delivered, previous.delivered, seconds),
        "cache_hit_rate": hit_rate,
    }


# --- the stream ------------------------------------------------------------------


async def _sleep_unless_shutdown(seconds: float) -> bool:
    """Sleep ``seconds``; True as soon as the server is asked to stop."""
    deadline = time.monotonic() + seconds
    while not shutdown_requested():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        await asyncio.sleep(min(remaining, SHUTDOWN_POLL_SECONDS))
    return True


async def _metrics_frames(
    settings: Settings,
    guard: MemoryGuard,
    hub: Hub,
    responses: ResponseService,
    fleet: FleetView,
) -> AsyncIterator[bytes]:
    yield encode_retry(settings.sse_retry_ms)
    previous: CounterSample | None = None
    while not shutdown_requested():
        document = await admin_metrics(guard, hub, responses, fleet)
        total = cast(dict[str, int], document["total"])
        current = CounterSample.of(total, time.monotonic())
        document["rates"] = rates(previous, current)
        previous = current
        yield encode_body(document, "metrics") + b"\n"
        if await _sleep_unless_shutdown(settings.admin_stream_seconds):
            return


class AdminStreamResponse(EventSourceResponse):
    """sse-starlette's response, holding one of the worker's admin stream slots."""

    def __init__(self, slots: StreamSlots, frames: AsyncIterator[bytes], *, ping: float) -> None:
        super().__init__(frames, ping=ping)
        self._slots = slots

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self._slots.try_acquire():
            refused = JSONResponse(
                {"detail": f"too many admin streams (limit {self._slots.limit}); retry later"},
                status_code=503,
                headers={"Retry-After": str(FULL_RETRY_AFTER_SECONDS)},
            )
            await refused(scope, receive, send)
            return
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._slots.release()


def _admit(request: Request, settings: Settings, ticket: str | None) -> None:
    """A ticket when one is given, else the admin API's own credentials."""
    if ticket is None:
        require_admin(request, settings)
        return
    if settings.admin_token is None:
        raise HTTPException(503, ADMIN_DISABLED_DETAIL)
    try:
        verify_ticket(ticket, settings.admin_token, settings.admin_ticket_seconds)
    except TicketError as exc:
        # The reason, never the ticket: it is a credential for its lifetime.
        logger.warning("admin stream: %s, from %s", exc, client_address(request))
        raise HTTPException(
            403, "invalid or expired ticket: get a new one from POST /api/admin/ticket"
        ) from None


@router.get(
    "/stream",
    response_class=EventSourceResponse,
    responses={
        200: {"content": {"text/event-stream": {}}, "description": "`metrics` events"},
    },
)
async def admin_stream(
    request: Request,
    settings: SettingsDep,
    guard: MemoryGuardDep,
    hub: HubDep,
    responses: ResponseServiceDep,
    fleet: FleetViewDep,
    slots: StreamSlotsDep,
    ticket: Annotated[str | None, Query()] = None,
) -> Response:
    """SSE: the admin metrics document with ``rates``, every ``ADMIN_STREAM_SECONDS``."""
    _admit(request, settings, ticket)
    frames = _metrics_frames(settings, guard, hub, responses, fleet)
    return AdminStreamResponse(slots, frames, ping=settings.sse_ping_seconds)
