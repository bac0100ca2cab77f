"""``/api/responses``: start a streamed response, then follow it over SSE."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field
from sse_starlette import EventSourceResponse

from app.api.deps import HubDep, ResponseServiceDep, SettingsDep
from app.responses.producers.registry import UnknownProducerError
from app.responses.runs import Run
from app.sse.hub import StreamRefusedError
from app.wire.encoding import encode_retry

__all__ = ["router"]

router = APIRouter(prefix="/api/responses", tags=["responses"])

CONVERSATION_ID_PATTERN = r"^[A-Za-z0-9._:-]{1,128}$"


class ResponseRequest(BaseModel):
    # strict: "cache": "yes" or "input": 5 is a client bug worth a 422, not a coercion.
    model_config = ConfigDict(extra="forbid", strict=True)

    input: str
    producer: str | None = Field(default=None, min_length=1, max_length=64)
    conversation_id: str | None = Field(default=None, pattern=CONVERSATION_ID_PATTERN)
    cache: bool = True


class ResponseCreated(BaseModel):
    id: str
    stream_url: str
    cached: bool


def _refused(refusal: StreamRefusedError) -> HTTPException:
    return HTTPException(503, refusal.detail, headers={"Retry-After": str(refusal.retry_after)})


@router.post("", status_code=201, response_model=ResponseCreated)
async def create_response(
    body: ResponseRequest, service: ResponseServiceDep, settings: SettingsDep
) -> ResponseCreated:
    """Start (or join, or serve from cache) a streamed response."""
    if not body.input.strip():
        raise HTTPException(422, "input must not be empty")
    if len(body.input) > settings.max_input_chars:
        raise HTTPException(
            422, f"input is longer than MAX_INPUT_CHARS ({settings.max_input_chars} characters)"
        )
    try:
        created = service.create(body.input, body.producer, body.conversation_id, body.cache)
    except UnknownProducerError as exc:
        raise HTTPException(422, str(exc)) from None
    except StreamRefusedError as refusal:
        raise _refused(refusal) from None
    run = created.run
    return ResponseCreated(
        id=run.id, stream_url=f"/api/responses/{run.id}/events", cached=created.cached
    )


def _start_index(header: str | None, query: str | None) -> int:
    """Index of the first frame to send: one past the client's last id (garbage → 0)."""
    raw = (header or query or "").strip()
    return int(raw) + 1 if raw.isascii() and raw.isdigit() and len(raw) < 10 else 0


async def _frames(run: Run, start: int, retry_ms: int) -> AsyncIterator[bytes]:
    yield encode_retry(retry_ms)
    async for chunk in run.follow(start):
        yield chunk


@router.head("/{run_id}/events", include_in_schema=False)
@router.get(
    "/{run_id}/events",
    response_class=EventSourceResponse,
    responses={
        200: {"content": {"text/event-stream": {}}},
        204: {"description": "already finished and fully delivered"},
    },
)
async def follow_response(
    run_id: str,
    request: Request,
    service: ResponseServiceDep,
    hub: HubDep,
    settings: SettingsDep,
    last_event_id: Annotated[str | None, Query(max_length=64)] = None,
) -> Response:
    """SSE: ``delta`` events as produced, then ``done`` (or ``error``), then the stream ends."""
    run = service.runs.get(run_id)
    if run is None:
        if service.runs.id_is_expired(run_id):
            raise HTTPException(410, f"response {run_id[:40]} has expired")
        raise HTTPException(404, f"unknown response id {run_id[:40]!r}")
    start = _start_index(request.headers.get("last-event-id"), last_event_id)
    if run.finished and start >= len(run.frames):
        # 204 is how SSE tells EventSource to stop reconnecting: nothing is left to send.
        return Response(status_code=204)
    if hub.connection_count + service.follower_count >= settings.sse_max_connections:
        raise _refused(StreamRefusedError("too many open streams; retry later"))
    return EventSourceResponse(
        _frames(run, start, settings.sse_retry_ms), ping=settings.sse_ping_seconds
    )
