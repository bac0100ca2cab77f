"""FastAPI dependencies as ``Annotated`` aliases: one place for everything a route needs.

The app's long-lived objects live on ``app.state`` (set up in ``app.main``); each
alias reads one of them, so routes declare what they use and tests can see it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import Depends, Request

from app.admin.audit import AuditTrail
from app.admin.dispatch import ActionCoordinator
from app.admin.drain import DrainState
from app.auth.tokens import TokenVerifier
from app.core.config import Settings
from app.fleet.view import FleetView
from app.memory.guard import MemoryGuard
from app.responses.service import ResponseService
from app.sse.hub import Hub

__all__ = [
    "ActionCoordinatorDep",
    "AuditTrailDep",
    "DrainStateDep",
    "FleetViewDep",
    "HubDep",
    "MemoryGuardDep",
    "ResponseServiceDep",
    "SettingsDep",
    "TokenVerifierDep",
]


def _from_state(name: str) -> Callable[[Request], Awaitable[Any]]:
    # Async on purpose: FastAPI runs a plain ``def`` dependency in its thread pool, three
    # thread hops per request for a getattr (seen in a py-spy profile of publishing).
    async def get(request: Request) -> Any:
        return getattr(request.app.state, name)

    get.__name__ = f"get_{name}"
    return get


SettingsDep = Annotated[Settings, Depends(_from_state("settings"))]
HubDep = Annotated[Hub, Depends(_from_state("hub"))]
ResponseServiceDep = Annotated[ResponseService, Depends(_from_state("responses"))]
MemoryGuardDep = Annotated[MemoryGuard, Depends(_from_state("memory"))]
FleetViewDep = Annotated[FleetView, Depends(_from_state("fleet"))]
TokenVerifierDep = Annotated[TokenVerifier, Depends(_from_state("tokens"))]
ActionCoordinatorDep = Annotated[ActionCoordinator, Depends(_from_state("actions"))]
AuditTrailDep = Annotated[AuditTrail, Depends(_from_state("audit"))]
DrainStateDep = Annotated[DrainState, Depends(_from_state("drain"))]
