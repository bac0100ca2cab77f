"""Operator actions over HTTP: ``/api/admin/cleanup``, ``/cache/clear``, ``/streams/close``,
``/drain``.

Same admin token as the rest of the admin API (``app.api.admin_auth``): 503
when the admin API is off, 401 without a token, 403 with a wrong one, checked
before the body is looked at. A body that names an unknown field or level is
a 422 and changes nothing; a ``worker`` or ``host`` that no live worker
matches is a 404. What the answer holds is described in ``app.admin.dispatch``.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, HTTPException, Request

from app.admin.actions import (
    ActionName,
    CacheClearRequest,
    CleanupRequest,
    DrainRequest,
    StreamsCloseRequest,
    TargetedRequest,
    UndrainRequest,
)
from app.admin.audit import token_fingerprint
from app.admin.dispatch import NoSuchTargetError
from app.api.admin_auth import require_admin
from app.api.deps import ActionCoordinatorDep, AuditTrailDep, SettingsDep
from app.auth.client_address import client_address

__all__ = ["router"]

router = APIRouter(prefix="/api/admin", tags=["admin"], dependencies=[Depends(require_admin)])


async def _act(
    action: ActionName,
    body: TargetedRequest,
    request: Request,
    coordinator: ActionCoordinatorDep,
    audit: AuditTrailDep,
    settings: SettingsDep,
) -> dict[str, Any]:
    try:
        answer = await coordinator.run(action, body)
    except NoSuchTargetError as exc:
        raise HTTPException(404, str(exc)) from None
    token = settings.admin_token
    who = token_fingerprint(token.get_secret_value()) if token is not None else "-"
    missing = ",".join(answer["missing"]) or "none"
    failed = ",".join(answer["failed"]) or "none"
    audit.record(
        action,
        body.model_dump(exclude_none=True),
        f"{answer['answered']} workers answered, total "
        f"{json.dumps(answer['total'], separators=(',', ':'))}; missing {missing}; failed {failed}",
        who=who,
        client=client_address(request),
    )
    return answer


@router.post("/cleanup")
async def cleanup(
    body: CleanupRequest,
    request: Request,
    coordinator: ActionCoordinatorDep,
    audit: AuditTrailDep,
    settings: SettingsDep,
) -> dict[str, Any]:
    """Run the guard's ``light`` (warning) or ``aggressive`` (critical) cleanup on every worker."""
    return await _act("cleanup", body, request, coordinator, audit, settings)


@router.post("/cache/clear")
async def cache_clear(
    request: Request,
    coordinator: ActionCoordinatorDep,
    audit: AuditTrailDep,
    settings: SettingsDep,
    body: Annotated[CacheClearRequest | None, Body()] = None,
) -> dict[str, Any]:
    """Empty the response cache, or drop the entries of one ``conversation_id``."""
    return await _act(
        "cache_clear", body or CacheClearRequest(), request, coordinator, audit, settings
    )


@router.post("/streams/close")
async def streams_close(
    body: StreamsCloseRequest,
    request: Request,
    coordinator: ActionCoordinatorDep,
    audit: AuditTrailDep,
    settings: SettingsDep,
) -> dict[str, Any]:
    """Close the streams of one ``channel`` and/or ``client``; they resume from Last-Event-ID."""
    return await _act("streams_close", body, request, coordinator, audit, settings)


@router.post("/drain")
async def drain(
    request: Request,
    coordinator: ActionCoordinatorDep,
    audit: AuditTrailDep,
    settings: SettingsDep,
    body: Annotated[DrainRequest | None, Body()] = None,
) -> dict[str, Any]:
    """Refuse new streams (503, Retry-After) and close the open ones with a jittered retry."""
    return await _act("drain", body or DrainRequest(), request, coordinator, audit, settings)


@router.delete("/drain")
async def undrain(
    request: Request,
    coordinator: ActionCoordinatorDep,
    audit: AuditTrailDep,
    settings: SettingsDep,
    body: Annotated[UndrainRequest | None, Body()] = None,
) -> dict[str, Any]:
    """End the drain: accept new streams again."""
    return await _act("undrain", body or UndrainRequest(), request, coordinator, audit, settings)
