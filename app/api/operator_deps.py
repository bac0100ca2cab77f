"""FastAPI dependencies of the operator surface (health, admin API, /metrics).

Kept beside ``deps.py`` rather than in it so the memory guard's wiring stays in
the files that use it; the aliases follow the same ``Annotated`` pattern.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.cluster.view import ClusterView
from app.memory.guard import MemoryGuard
from app.responses.service import ResponseService

__all__ = ["ClusterViewDep", "MemoryGuardDep", "ResponseServiceDep"]


def get_memory_guard(request: Request) -> MemoryGuard:
    guard: MemoryGuard = request.app.state.memory
    return guard


def get_response_service(request: Request) -> ResponseService:
    service: ResponseService = request.app.state.responses
    return service


def get_cluster_view(request: Request) -> ClusterView:
    cluster: ClusterView = request.app.state.cluster
    return cluster


MemoryGuardDep = Annotated[MemoryGuard, Depends(get_memory_guard)]
ResponseServiceDep = Annotated[ResponseService, Depends(get_response_service)]
ClusterViewDep = Annotated[ClusterView, Depends(get_cluster_view)]
