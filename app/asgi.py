"""``HeraldApp``, the ASGI application the servers run, and ``EventsFastPath``, the one
door through which it answers ``/events``.

``app.main`` builds the application (``create_app``) and wires its parts; this module is
what the application is: FastAPI, except that ``GET`` and ``POST`` on ``/events`` and
``/events/<channel>`` are answered in pure ASGI, ahead of FastAPI's middleware stack.

Design decisions (read before changing):

* Why ahead of the stack. A publish is a short request repeated thousands of times a
  second (one per AI token of a streamed answer), and FastAPI's per-request machinery —
  the router, dependency solving, response validation and the outer layers
  (server-error, telemetry, body limit) — costs several times the publish itself. A
  stream is one request that lives for hours, and everything on its call stack lives as
  long: the router, the route's dependency solver and its exit stacks, the middleware
  frames, a large share of what an idle stream costs. Figures: docs/performance.md.
* Same answers as the routes. The fast path calls what the documented routes in
  ``app.api.routes.events`` call (:func:`app.api.publish_handler.handle_publish`,
  :func:`app.api.streams.open_stream`): same rules, same status codes, same
  ``{"detail": ...}`` bodies. The routes stay in the OpenAPI schema, answer ``HEAD``,
  and answer everything when ``events_fast_path`` is None.
* One dispatcher. ``HeraldApp.__call__`` decides which requests take the fast path
  (``takes_fast_path``) and :class:`EventsFastPath` decides between a publish and a
  stream by the method; everything else — ``HEAD``, ``OPTIONS``, every other path and
  the lifespan — goes to FastAPI.
* The same middleware on both doors. The user middleware (CORS, memory headers) wraps
  the fast path exactly as it wraps FastAPI's stack, whether given at construction or
  added later, so a CORS rule cannot hold on one door and not the other.
* Exceptions. An unexpected one reaches the server, which logs it and answers 500, as
  FastAPI's server-error middleware would.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from app.api.publish_handler import PublishContext, handle_publish
from app.api.streams import EVENTS_PATH, LAST_EVENT_ID_QUERY, open_stream

__all__ = ["EventsFastPath", "HeraldApp", "takes_fast_path"]

_CHANNEL_PREFIX = EVENTS_PATH + "/"
_PREFIX_LENGTH = len(_CHANNEL_PREFIX)


def takes_fast_path(scope: Scope) -> bool:
    """Whether :class:`EventsFastPath` answers the request: ``GET`` (a stream) or ``POST``
    (a publish) on ``/events`` or ``/events/<channel>``."""
    if scope["type"] != "http":
        return False
    method = scope["method"]
    if method != "POST" and method != "GET":
        return False
    path: str = scope["path"]
    return path == EVENTS_PATH or path.startswith(_CHANNEL_PREFIX)


class EventsFastPath:
    """The ASGI app that answers what ``takes_fast_path`` accepts (and nothing else)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        channel = None if path == EVENTS_PATH else path[_PREFIX_LENGTH:]
        if scope["method"] == "POST":
            answer = await handle_publish(scope["app"].publishing, scope, receive, channel)
            if answer is None:  # the client went away before its body arrived
                return
            await send(
                {"type": "http.response.start", "status": answer.status, "headers": answer.headers}
            )
            await send({"type": "http.response.body", "body": answer.body})
            return
        # A stream: this frame stays on the stack as long as the stream is open.
        request = Request(scope, receive)
        query = request.query_params
        requested = query.getlist("channel") if channel is None else [channel]
        try:
            response = open_stream(request, requested, query.get(LAST_EVENT_ID_QUERY))
        except HTTPException as exc:
            refusal = JSONResponse(
                {"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers
            )
            await refusal(scope, receive, send)
            return
        await response(scope, receive, send)


def _wrapped(app: ASGIApp, middleware: Sequence[Middleware]) -> ASGIApp:
    """``app`` inside ``middleware`` the way Starlette stacks it (the first is outermost)."""
    for cls, args, kwargs in reversed(middleware):
        app = cls(app, *args, **kwargs)
    return app


class HeraldApp(FastAPI):
    """FastAPI, with ``/events`` answered by ``events_fast_path`` ahead of the middleware
    stack, inside the same user middleware."""

    # Set by the lifespan. An attribute of the app, not of ``app.state``: Starlette's State
    # resolves its attributes in Python, a cost each publish would pay again.
    publishing: PublishContext | None = None

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # None sends /events through FastAPI's routes as well (the tests compare the doors).
        self.events_fast_path: ASGIApp | None = _wrapped(EventsFastPath(), self.user_middleware)

    def add_middleware(self, middleware_class: Any, *args: Any, **kwargs: Any) -> None:
        """As FastAPI's, around the fast path as well as the stack."""
        super().add_middleware(middleware_class, *args, **kwargs)
        self.events_fast_path = _wrapped(EventsFastPath(), self.user_middleware)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        fast_path = self.events_fast_path
        if fast_path is not None and takes_fast_path(scope):
            scope["app"] = self  # what Starlette sets; the fast path reads the app from it
            await fast_path(scope, receive, send)
            return
        await super().__call__(scope, receive, send)
