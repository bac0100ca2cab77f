"""Reading a publish request's body (who may publish is ``app.auth.requests``).

Kept apart from the route so every rule here can be tested directly and each
failure maps to exactly one status: 413 for size, 415 for an unsupported
content type, 422 for anything malformed. Nothing is published unless every
check passed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from fastapi import HTTPException, Request

from app.core.config import Settings

__all__ = ["PublishRequest", "read_publish"]

ALLOWED_FIELDS = frozenset({"data", "event", "private"})


@dataclass(frozen=True, slots=True)
class PublishRequest:
    data: object
    event: str | None
    private: bool = False


async def _read_limited(request: Request, limit: int) -> bytes:
    too_large = HTTPException(413, f"body larger than MAX_EVENT_BYTES ({limit} bytes)")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise too_large
    return bytes(body)


def _reject_constant(name: str) -> object:
    raise ValueError(f"{name} is not valid JSON")


async def read_publish(request: Request, settings: Settings) -> PublishRequest:
    body = await _read_limited(request, settings.max_event_bytes)
    media_type = request.headers.get("content-type", "application/json").split(";")[0]
    media_type = media_type.strip().lower()
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise HTTPException(422, "body is not valid UTF-8") from None
    if media_type == "text/plain":
        return PublishRequest(data=text, event=None)
    if media_type != "application/json" and not media_type.endswith("+json"):
        raise HTTPException(415, "Content-Type must be application/json or text/plain")
    try:
        payload = json.loads(text, parse_constant=_reject_constant)
    except ValueError as exc:
        raise HTTPException(422, f"malformed JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise HTTPException(422, 'body must be a JSON object like {"data": ..., "event": "name"}')
    unknown = sorted(set(payload) - ALLOWED_FIELDS)
    if unknown:
        raise HTTPException(422, f"unknown field(s): {', '.join(unknown)}")
    if "data" not in payload:
        raise HTTPException(422, 'missing required field "data"')
    event = payload.get("event")
    if event is not None and not isinstance(event, str):
        raise HTTPException(422, 'field "event" must be a string')
    private = payload.get("private", False)
    if not isinstance(private, bool):
        raise HTTPException(422, 'field "private" must be true or false')
    return PublishRequest(data=payload["data"], event=event, private=private)
