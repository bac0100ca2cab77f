"""StreamFastPath answers stream GETs itself, with the routes' rules; all else goes on."""

from __future__ import annotations

import json

import pytest
from starlette.types import Message, Receive, Scope, Send

from app.core.config import load_settings
from app.main import create_app
from app.middleware.stream_fast_path import StreamFastPath


class Recorder:
    """The app behind the fast path: records what reached it."""

    def __init__(self) -> None:
        self.paths: list[tuple[str, str]] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.paths.append((scope["method"], scope["path"]))
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})


async def call(method: str, path: str, query: bytes = b"") -> tuple[Recorder, list[Message]]:
    inner = Recorder()
    scope: Scope = {
        "type": "http",
        "method": method,
        "path": path,
        "raw_path": path.encode(),
        "query_string": query,
        "headers": [],
        "client": ("127.0.0.1", 5000),
        "app": create_app(load_settings()),
    }
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    await StreamFastPath(inner)(scope, receive, send)
    return inner, sent


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("HEAD", "/events/news"),
        ("POST", "/events/news"),
        ("GET", "/health"),
        ("GET", "/eventsource"),
        ("GET", "/api/responses/r1/events"),
    ],
)
async def test_everything_but_stream_gets_goes_on_to_the_app(method: str, path: str) -> None:
    inner, _ = await call(method, path)
    assert inner.paths == [(method, path)]


@pytest.mark.parametrize(
    ("path", "query", "detail"),
    [
        ("/events", b"", "give at least one channel: /events?channel=a&channel=b"),
        ("/events/", b"", "invalid channel name ''"),
        ("/events/bad channel", b"", "invalid channel name 'bad channel'"),
        ("/events/ok", b"last_event_id=" + b"9" * 1025, "last_event_id: at most 1024"),
        ("/events", b"channel=a&channel=b c", "invalid channel name 'b c'"),
    ],
)
async def test_stream_gets_are_answered_here_with_the_routes_refusals(
    path: str, query: bytes, detail: str
) -> None:
    inner, sent = await call("GET", path, query)
    assert inner.paths == []
    assert sent[0]["status"] == 422
    assert (b"content-type", b"application/json") in sent[0]["headers"]
    assert json.loads(sent[1]["body"])["detail"].startswith(detail)
