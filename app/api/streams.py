"""Opening a subscriber stream from a request: channels, grants, resume point.

One function serves both doors to ``GET /events``: the documented FastAPI routes
(which also answer ``HEAD``) and :class:`app.asgi.EventsFastPath`, which opens the
endless ``GET`` streams without FastAPI's per-request machinery.
Refusals are ``HTTPException`` so both doors answer them the same way.
"""

from __future__ import annotations

from fastapi import HTTPException, Request

from app.auth.client_address import client_address
from app.auth.requests import authorize_subscriber
from app.sse.stream_response import HeraldStreamResponse
from app.wire.channels import InvalidChannelError, validate_channel

__all__ = [
    "EVENTS_PATH",
    "LAST_EVENT_ID_QUERY",
    "MAX_LAST_EVENT_ID_QUERY",
    "open_stream",
    "stream_channels",
]

EVENTS_PATH = "/events"
LAST_EVENT_ID_QUERY = "last_event_id"
# Longer values are refused outright; shorter unknown ones get a `reset` event.
MAX_LAST_EVENT_ID_QUERY = 1024


def stream_channels(names: list[str], limit: int) -> tuple[str, ...]:
    """The stream's distinct channels, in order; 422 when none, too many or invalid."""
    unique = tuple(dict.fromkeys(names))
    if not unique:
        raise HTTPException(422, "give at least one channel: /events?channel=a&channel=b")
    if len(unique) > limit:
        raise HTTPException(422, f"too many channels in one stream (limit {limit})")
    try:
        return tuple(validate_channel(name) for name in unique)
    except InvalidChannelError as exc:
        raise HTTPException(422, str(exc)) from None


def open_stream(
    request: Request, requested: list[str], last_event_id: str | None
) -> HeraldStreamResponse:
    """The stream response for ``requested`` channels, or ``HTTPException`` (401/403/422)."""
    state = request.app.state
    settings = state.settings
    channels = stream_channels(requested, settings.sse_max_channels_per_stream)
    if last_event_id is not None and len(last_event_id) > MAX_LAST_EVENT_ID_QUERY:
        raise HTTPException(
            422, f"{LAST_EVENT_ID_QUERY}: at most {MAX_LAST_EVENT_ID_QUERY} characters"
        )
    private_channels = authorize_subscriber(request, settings, state.tokens, channels)
    return HeraldStreamResponse(
        state.hub,
        channels,
        last_event_id=request.headers.get("last-event-id") or last_event_id,
        client=client_address(request),
        private_channels=private_channels,
    )
