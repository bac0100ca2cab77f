"""``/events``: subscribe (SSE) and publish."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request
from pydantic import BaseModel

from app.api.deps import HubDep, SettingsDep, TokenVerifierDep, client_address
from app.api.publishing import read_publish
from app.api.streams import MAX_LAST_EVENT_ID_QUERY, open_stream
from app.auth.requests import authorize_publisher, bearer_token
from app.broker.base import BrokerUnavailableError
from app.limits import LimitExceededError, publisher_key
from app.sse.encoding import EncodingError
from app.sse.hub import InvalidChannelError, validate_channel
from app.sse.response import HeraldStreamResponse

__all__ = ["router"]

router = APIRouter(tags=["events"])

SSE_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/event-stream": {}}, "description": "An endless SSE stream"}
}


class Published(BaseModel):
    id: str
    channel: str
    subscribers: int


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

    ``GET`` is answered by ``StreamFastPath`` before it reaches this route (same
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
    (``GET`` is served by ``StreamFastPath``, as for ``/events``.)"""
    return open_stream(request, [channel], last_event_id)


@router.post("/events/{channel:path}", status_code=202, response_model=Published)
async def publish(
    channel: str, request: Request, hub: HubDep, settings: SettingsDep, tokens: TokenVerifierDep
) -> Published:
    """Publish one event: JSON ``{"data": <any>, "event": "name", "private": false}`` or a
    ``text/plain`` body. A private event reaches only subscribers granted the channel."""
    client = client_address(request)
    authorize_publisher(request, settings, tokens, channel, client)
    if hub.limits.publishes_limited:  # the key hashes the token: only worth it when limited
        try:
            await hub.limits.take_publish(publisher_key(bearer_token(request), client))
        except LimitExceededError as exc:
            raise HTTPException(
                429, exc.detail, headers={"Retry-After": str(exc.retry_after)}
            ) from None
    try:
        validate_channel(channel)
    except InvalidChannelError as exc:
        raise HTTPException(422, str(exc)) from None
    body = await read_publish(request, settings)
    try:
        event_id = await hub.publish(channel, body.data, body.event, private=body.private)
    except EncodingError as exc:
        raise HTTPException(422, str(exc)) from None
    except BrokerUnavailableError as exc:
        raise HTTPException(503, str(exc), headers={"Retry-After": "5"}) from None
    return Published(id=event_id, channel=channel, subscribers=hub.subscriber_count(channel))
