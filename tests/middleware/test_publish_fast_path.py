"""PublishFastPath and the documented routes are one function behind two doors: same answers."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import httpx
import pytest

from app.core.config import load_settings
from app.main import create_app
from app.middleware.publish_fast_path import NOT_A_PUBLISH, HeraldApp, publish_target

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
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://herald") as client:
        fast = await client.post(path, content=body, headers=headers)
        front, app.publish_front = app.publish_front, None  # now FastAPI routes it
        try:
            routed = await client.post(path, content=body, headers=headers)
        finally:
            app.publish_front = front
    assert comparable(fast) == comparable(routed)
    assert "detail" in fast.json() or fast.status_code == 202, fast.text


async def test_the_fast_path_publishes_what_the_route_publishes(app: HeraldApp) -> None:
    hub = app.state.hub
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 40000))
    async with (
        hub.subscribe(["doors/x"]) as (connection, _),
        httpx.AsyncClient(transport=transport, base_url="http://herald") as client,
    ):
        await client.post("/events/doors/x", json={"data": "fast"})
        app.publish_front = None
        await client.post("/events/doors/x", json={"data": "routed"})
        assert connection.queued == 2
        payload, count = connection.take()  # type: ignore[misc]
    assert count == 2
    assert payload.count(b"data: fast\n") == 1 and payload.count(b"data: routed\n") == 1


@pytest.mark.parametrize(
    ("method", "path", "expected"),
    [
        ("POST", "/events", None),
        ("POST", "/events/a/b", "a/b"),
        ("GET", "/events/a", NOT_A_PUBLISH),
        ("POST", "/eventsource", NOT_A_PUBLISH),
        ("POST", "/api/responses", NOT_A_PUBLISH),
    ],
)
def test_only_publishes_take_the_fast_path(method: str, path: str, expected: str | None) -> None:
    assert publish_target({"type": "http", "method": method, "path": path}) == expected


def test_the_documented_publish_routes_stay_in_the_schema() -> None:
    schema = create_app(load_settings()).openapi()
    single = schema["paths"]["/events/{channel}"]["post"]
    batch = schema["paths"]["/events"]["post"]
    assert "application/json" in single["requestBody"]["content"]
    assert "text/plain" in single["requestBody"]["content"]
    assert json.dumps(batch["requestBody"]).count('"channel"') >= 1
