"""HeraldApp's fast path for /events and the documented routes are one set of functions behind
two doors: same answers, same middleware; everything else goes on to FastAPI."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import httpx
import pytest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.asgi import EventsFastPath, HeraldApp, takes_fast_path
from app.core.config import load_settings
from app.main import create_app

JSON = {"content-type": "application/json"}
REQUESTS: list[tuple[str, bytes, dict[str, str]]] = [
    ("/events/doors", b'{"data": {"n": 1}}', JSON),
    ("/events/doors", b'{"data": 1, "channels": ["doors/b"]}', JSON),
    ("/events/doors", b"plain text", {"content-type": "text/plain"}),
    ("/events/doors", b"{nope", JSON),
    ("/events/doors", b'{"data": 1, "evnt": "x"}', JSON),
    ("/events/doors", b"x=1", {"content-type": "application/x-www-form-urlencoded"}),
    ("/events/bad name", b'{"data": 1}', JSON),
    ("/events/doors", b'{"data": "' + b"x" * 70_000 + b'"}', JSON),
    ("/events", b'[{"channel": "doors", "data": 1}, {"channels": ["a", "b"], "data": 2}]', JSON),
    ("/events", b'[{"channel": "doors", "data": 1}, {"data": 2}]', JSON),
    ("/events", b'{"channel": "doors", "data": 1}', JSON),
    ("/events", b"[]", JSON),
]


@pytest.fixture
async def app() -> AsyncIterator[HeraldApp]:
    built = create_app(load_settings(broker_url="memory://", publish_token=None))
    assert isinstance(built, HeraldApp)
    async with built.router.lifespan_context(built):
        yield built


def client_of(app: HeraldApp) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 40000))
    return httpx.AsyncClient(transport=transport, base_url="http://herald")


def comparable(response: httpx.Response) -> tuple[int, str, object]:
    body = response.json()
    if response.status_code == 202:  # ids differ between the two publishes, nothing else
        body.pop("id", None)
        body["ids"] = len(body.get("ids", []))
    return response.status_code, response.headers["content-type"], body


@pytest.mark.parametrize(("path", "body", "headers"), REQUESTS)
async def test_the_fast_path_answers_as_the_documented_route_does(
    app: HeraldApp, path: str, body: bytes, headers: dict[str, str]
) -> None:
    async with client_of(app) as client:
        fast = await client.post(path, content=body, headers=headers)
        fast_path, app.events_fast_path = app.events_fast_path, None  # now FastAPI routes it
        try:
            routed = await client.post(path, content=body, headers=headers)
        finally:
            app.events_fast_path = fast_path
    assert comparable(fast) == comparable(routed)
    assert "detail" in fast.json() or fast.status_code == 202, fast.text


async def test_the_fast_path_publishes_what_the_route_publishes(app: HeraldApp) -> None:
    hub = app.state.hub
    async with hub.subscribe(["doors/x"]) as (connection, _), client_of(app) as client:
        await client.post("/events/doors/x", json={"data": "fast"})
        app.events_fast_path = None
        await client.post("/events/doors/x", json={"data": "routed"})
        assert connection.queued == 2
        payload, count = connection.take()  # type: ignore[misc]
    assert count == 2
    assert payload.count(b"data: fast\n") == 1 and payload.count(b"data: routed\n") == 1


@pytest.mark.parametrize(
    ("kind", "method", "path", "expected"),
    [
        ("http", "POST", "/events", True),
        ("http", "POST", "/events/a/b", True),
        ("http", "GET", "/events", True),
        ("http", "GET", "/events/a", True),
        ("http", "HEAD", "/events/a", False),
        ("http", "OPTIONS", "/events/a", False),
        ("http", "GET", "/eventsource", False),
        ("http", "POST", "/api/responses", False),
        ("http", "GET", "/api/responses/r1/events", False),
        ("http", "GET", "/health", False),
        ("websocket", "GET", "/events/a", False),
    ],
)
def test_only_event_streams_and_publishes_take_the_fast_path(
    kind: str, method: str, path: str, expected: bool
) -> None:
    assert takes_fast_path({"type": kind, "method": method, "path": path}) is expected


async def call_fast_path(path: str, query: bytes = b"") -> list[Message]:
    scope: Scope = {
        "type": "http",
        "method": "GET",
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

    await EventsFastPath()(scope, receive, send)
    return sent


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
async def test_stream_gets_are_answered_with_the_routes_refusals(
    path: str, query: bytes, detail: str
) -> None:
    sent = await call_fast_path(path, query)
    assert sent[0]["status"] == 422
    assert (b"content-type", b"application/json") in sent[0]["headers"]
    assert json.loads(sent[1]["body"])["detail"].startswith(detail)


async def test_cors_wraps_the_fast_path_as_it_wraps_the_routes() -> None:
    origin = "https://site.example"
    built = create_app(
        load_settings(broker_url="memory://", publish_token=None, cors_origins=[origin])
    )
    assert isinstance(built, HeraldApp)
    async with built.router.lifespan_context(built), client_of(built) as client:
        published = await client.post("/events/doors", json={"data": 1}, headers={"Origin": origin})
        refused = await client.get("/events", headers={"Origin": origin})
        health = await client.get("/health", headers={"Origin": origin})
    assert published.status_code == 202 and refused.status_code == 422
    for response in (published, refused, health):
        assert response.headers["access-control-allow-origin"] == origin


class Stamp:
    """A middleware added after construction: it must wrap both doors too."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def stamped(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message["headers"], (b"x-stamp", b"1")]
            await send(message)

        await self.app(scope, receive, stamped)


async def test_middleware_added_later_wraps_the_fast_path_too() -> None:
    built = create_app(load_settings(broker_url="memory://", publish_token=None))
    assert isinstance(built, HeraldApp)
    built.add_middleware(Stamp)
    async with built.router.lifespan_context(built), client_of(built) as client:
        published = await client.post("/events/doors", json={"data": 1})
        health = await client.get("/health")
    assert published.status_code == 202
    assert published.headers["x-stamp"] == "1" and health.headers["x-stamp"] == "1"


def test_the_documented_publish_routes_stay_in_the_schema() -> None:
    schema = create_app(load_settings()).openapi()
    single = schema["paths"]["/events/{channel}"]["post"]
    batch = schema["paths"]["/events"]["post"]
    assert "application/json" in single["requestBody"]["content"]
    assert "text/plain" in single["requestBody"]["content"]
    assert json.dumps(batch["requestBody"]).count('"channel"') >= 1
