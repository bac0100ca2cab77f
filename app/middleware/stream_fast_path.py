"""``StreamFastPath``: open ``GET /events`` streams without FastAPI's per-request machinery.

An SSE stream is one request that lives for hours, and everything on its call
stack lives as long: with the FastAPI route, that is the router, the route's
dependency solver and its two ``AsyncExitStack`` objects, the exception
middleware's handler frames and the request-response wrapper — measured with
tracemalloc at about 7 KB per idle stream, a third of Herald's whole cost per
connection. This pure ASGI middleware sits just inside the user middleware
(CORS still applies) and answers those ``GET`` requests itself, with the same
function the routes use (:func:`app.api.streams.open_stream`), so the rules,
the status codes and the ``{"detail": ...}`` bodies are identical. Everything
else — ``HEAD``, publishing, the OpenAPI schema that documents the stream
routes — goes on to FastAPI.
"""

from __future__ import annotations

from fastapi import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from app.api.streams import EVENTS_PATH, LAST_EVENT_ID_QUERY, open_stream

__all__ = ["StreamFastPath"]

_CHANNEL_PREFIX = EVENTS_PATH + "/"


class StreamFastPath:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "GET":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        if path == EVENTS_PATH:
            request = Request(scope, receive)
            requested = request.query_params.getlist("channel")
        elif path.startswith(_CHANNEL_PREFIX):
            request = Request(scope, receive)
            requested = [path[len(_CHANNEL_PREFIX) :]]
        else:
            await self.app(scope, receive, send)
            return
        try:
            response = open_stream(
                request, requested, request.query_params.get(LAST_EVENT_ID_QUERY)
            )
        except HTTPException as exc:
            refusal = JSONResponse(
                {"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers
            )
            await refusal(scope, receive, send)
            return
        await response(scope, receive, send)
