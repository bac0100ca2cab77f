"""``/events``: subscribe (SSE) and publish (one event, or a batch)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel

from app.api.publish_handler import PublishAnswer, handle_publish
from app.api.streams import MAX_LAST_EVENT_ID_QUERY, open_stream
from app.sse.stream_response import HeraldStreamResponse
from app.wire.channels import CHANNEL_PATTERN

__all__ = ["router"]

router = APIRouter(tags=["events"])

SSE_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/event-stream": {}}, "description": "An endless SSE stream"}
}


class Published(BaseModel):
    id: str
    channel: str
    channels: list[str]
    subscribers: int


class PublishedBatch(BaseModel):
    ids: list[str]


_CHANNEL = {"type": "string", "pattern": f"^{CHANNEL_PATTERN.pattern}$"}
_EVENT_FIELDS: dict[str, Any] = {
    "data": {"description": "Any JSON value; a string is sent as itself"},
    "event": {"type": "string", "maxLength": 128},
    "private": {"type": "boolean", "default": False},
    "channels": {"type": "array", "items": _CHANNEL, "maxItems": 256},
}
_SINGLE: dict[str, Any] = {
    "type": "object",
    "required": ["data"],
    "properties": _EVENT_FIELDS,
    "additionalProperties": False,
}
_ITEM: dict[str, Any] = {**_SINGLE, "properties": {**_EVENT_FIELDS, "channel": _CHANNEL}}
IDEMPOTENCY_KEY: dict[str, Any] = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "description": (
        "Publish at most once per key within PUBLISH_IDEMPOTENCY_SECONDS: a retry gets the first"
        ' answer with Idempotent-Replayed: true. Quoted ("...") or bare; 1-255 visible ASCII'
        " characters other than a quote and a backslash. One key for a whole batch."
    ),
    "schema": {"type": "string", "maxLength": 257},
}
SINGLE_BODY: dict[str, Any] = {
    "parameters": [IDEMPOTENCY_KEY],
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": _SINGLE}, "text/plain": {"schema": {}}},
    },
}
BATCH_BODY: dict[str, Any] = {
    "parameters": [IDEMPOTENCY_KEY],
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {"oneOf": [{"type": "array", "items": _ITEM, "minItems": 1}, _ITEM]}
            }
        },
    },
}


@router.head("/events", include_in_schema=False)
@router.get(
    "/events",
    status_code=200,
    response_class=HeraldStreamResponse,
    responses=SSE_RESPONSE,
)
async def subscribe_many(
    request: Request,
    channel: Annotated[list[str], Query()] = [],  # noqa: B006 - FastAPI copies defaults
    last_event_id: Annotated[str | None, Query(max_length=MAX_LAST_EVENT_ID_QUERY)] = None,
) -> HeraldStreamResponse:
    """Stream several channels in one connection; one ``Last-Event-ID`` resumes them all.

    ``GET`` is answered by ``EventsFastPath`` before it reaches this route (same
    rules, less memory per open stream); this route documents it and answers ``HEAD``."""
    return open_stream(request, channel, last_event_id)


@router.head("/events/{channel:path}", include_in_schema=False)
@router.get(
    "/events/{channel:path}",
    status_code=200,
    response_class=HeraldStreamResponse,
    responses=SSE_RESPONSE,
)
async def subscribe(
    channel: str,
    request: Request,
    last_event_id: Annotated[str | None, Query(max_length=MAX_LAST_EVENT_ID_QUERY)] = None,
) -> HeraldStreamResponse:
    """Stream one channel. Resume with the ``Last-Event-ID`` header or ``?last_event_id=``.
    (``GET`` is served by ``EventsFastPath``, as for ``/events``.)"""
    return open_stream(request, [channel], last_event_id)


def _as_response(answer: PublishAnswer | None) -> Response:
    if answer is None:  # the client went away before its body arrived: nobody reads this
        return Response(status_code=400)
    response = Response(answer.body, answer.status)
    response.raw_headers = answer.headers
    return response


@router.post(
    "/events/{channel:path}",
    status_code=202,
    response_model=Published,
    openapi_extra=SINGLE_BODY,
)
async def publish(channel: str, request: Request) -> Response:
    """Publish one event on ``channel`` (and any ``channels`` listed): JSON ``{"data": <any>,
    "event": "name", "private": false, "channels": [...]}`` or a ``text/plain`` body. A
    private event reaches only subscribers granted one of its channels.

    Answered by ``EventsFastPath`` before it reaches this route (same function, same
    rules); this route documents it."""
    return _as_response(
        await handle_publish(request.app.publishing, request.scope, request.receive, channel)
    )


@router.post(
    "/events",
    status_code=202,
    response_model=PublishedBatch | Published,
    openapi_extra=BATCH_BODY,
)
async def publish_batch(request: Request) -> Response:
    """Publish a batch: a JSON array of events, each ``{"channel": "name"}`` (or
    ``"channels": [...]``) plus the single-publish fields, up to ``PUBLISH_BATCH_MAX``
    events and ``MAX_BATCH_BYTES``. All or nothing: any invalid item is a 422 naming its
    index; ids come back in request order. A single JSON object publishes one event.
    (Answered by ``EventsFastPath``, as for single publishes.)"""
    return _as_response(
        await handle_publish(request.app.publishing, request.scope, request.receive, None)
    )
