"""``PublishFastPath``: answer ``POST /events`` and ``POST /events/<channel>`` in pure ASGI,
in front of FastAPI's whole middleware stack.

A publish is a short request repeated thousands of times a second (one per AI
token of a streamed answer), so what matters is the cost of each. Through the
FastAPI route, a py-spy profile showed the dependency solver running plain
``def`` dependencies in anyio's thread pool (three thread hops per publish),
then the router, two ``AsyncExitStack`` objects, response validation and
FastAPI's own outer layers (server-error, telemetry and body-limit wrappers,
an environment lookup per request) costing several times the publish itself
(see docs/performance.md).

So :class:`HeraldApp` (the FastAPI app Herald builds) hands publishes to
``publish_front`` before its middleware stack: :class:`PublishFastPath`
wrapped in the same user middleware as the rest of the app (CORS, memory
headers — ``wrap_user_middleware``), and nothing else. It answers with the
function the documented routes call (:func:`app.api.publish_handler.handle_publish`):
same rules, same status codes, same ``{"detail": ...}`` bodies; the routes
stay in the OpenAPI schema. An unexpected exception reaches uvicorn, which
logs it and answers 500, as ServerErrorMiddleware would. Everything else —
streams (``StreamFastPath``, inside the stack), ``HEAD``, the API — goes to
FastAPI as before.
"""

from __future__ import annotations

from collections.abc import Sequence

from fastapi import FastAPI
from starlette.middleware import Middleware
from starlette.types import ASGIApp, Receive, Scope, Send

from app.api.publish_handler import PublishContext, handle_publish
from app.api.streams import EVENTS_PATH

__all__ = ["HeraldApp", "PublishFastPath", "publish_target", "wrap_user_middleware"]

_CHANNEL_PREFIX = EVENTS_PATH + "/"
_PREFIX_LENGTH = len(_CHANNEL_PREFIX)
NOT_A_PUBLISH = "\0"  # no channel name can be this (CHANNEL_PATTERN)


def publish_target(scope: Scope) -> str | None:
    """For a publish request, its path channel (None for ``POST /events``); for any other
    request, ``NOT_A_PUBLISH``."""
    if scope["type"] != "http" or scope["method"] != "POST":
        return NOT_A_PUBLISH
    path: str = scope["path"]
    if path == EVENTS_PATH:
        return None
    if path.startswith(_CHANNEL_PREFIX):
        return path[_PREFIX_LENGTH:]
    return NOT_A_PUBLISH


class PublishFastPath:
    """The ASGI app that answers a publish (the request must be one: ``publish_target``)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        channel = publish_target(scope)
        assert channel != NOT_A_PUBLISH, scope["path"]
        answer = await handle_publish(scope["app"].publishing, scope, receive, channel)
        if answer is None:  # the client went away before its body arrived
            return
        await send(
            {"type": "http.response.start", "status": answer.status, "headers": answer.headers}
        )
        await send({"type": "http.response.body", "body": answer.body})


def wrap_user_middleware(app: ASGIApp, middleware: Sequence[Middleware]) -> ASGIApp:
    """``app`` inside ``middleware`` the way Starlette stacks it (the first listed is the
    outermost)."""
    for cls, args, kwargs in reversed(middleware):
        app = cls(app, *args, **kwargs)
    return app


class HeraldApp(FastAPI):
    """FastAPI, with publishes answered by ``publish_front`` ahead of the middleware stack."""

    publish_front: ASGIApp | None = None
    # Set by the lifespan. An attribute of the app, not of ``app.state``: Starlette's State
    # resolves its attributes in Python, a cost each publish would pay again.
    publishing: PublishContext | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        front = self.publish_front
        if front is not None and publish_target(scope) != NOT_A_PUBLISH:
            scope["app"] = self  # what Starlette sets; the handler reads app.state from it
            await front(scope, receive, send)
            return
        await super().__call__(scope, receive, send)
