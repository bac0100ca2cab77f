"""The publish API and its error table, against a real server.

"Changes nothing" is checked the strong way: after each refused publish a
subscriber that was listening all along receives only the next good event, and
its id follows the previous good one (no id was consumed).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

import httpx
import pytest

from tests.support.server import ServerProcess
from tests.support.sse_client import open_stream

pytestmark = pytest.mark.integration

TOKEN = "s3cret-publish-token"


@pytest.fixture(scope="module")
def guarded() -> object:
    from tests.conftest import FAST_TIMERS

    server = ServerProcess(
        {**FAST_TIMERS, "PUBLISH_TOKEN": TOKEN, "MAX_EVENT_BYTES": "1024"}
    ).start()
    yield server
    server.close()


def auth(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


BAD_REQUESTS: list[tuple[str, dict[str, object], int, str]] = [
    ("no token", {"json": {"data": 1}}, 401, "missing publish token"),
    ("wrong scheme", {"json": {"data": 1}, "headers": {"Authorization": TOKEN}}, 401, "missing"),
    ("wrong token", {"json": {"data": 1}, "headers": auth("nope")}, 403, "invalid publish token"),
    (
        "too large",
        {"json": {"data": "x" * 2000}, "headers": auth()},
        413,
        "MAX_EVENT_BYTES",
    ),
    (
        "malformed json",
        {"content": b"{nope", "headers": {**auth(), "content-type": "application/json"}},
        422,
        "malformed JSON",
    ),
    ("missing data", {"json": {"event": "x"}, "headers": auth()}, 422, '"data"'),
    ("not an object", {"json": [1, 2], "headers": auth()}, 422, "JSON object"),
    ("event not a string", {"json": {"data": 1, "event": 5}, "headers": auth()}, 422, "event"),
    ("unknown field", {"json": {"data": 1, "evnt": "x"}, "headers": auth()}, 422, "evnt"),
    (
        "event with newline",
        {"json": {"data": 1, "event": "a\nb"}, "headers": auth()},
        422,
        "line break",
    ),
    (
        "carriage return",
        {"json": {"data": "a\r\nb"}, "headers": auth()},
        422,
        "carriage return",
    ),
    (
        "NaN",
        {"content": b'{"data": NaN}', "headers": {**auth(), "content-type": "application/json"}},
        422,
        "NaN",
    ),
    (
        "bad utf-8",
        {"content": b"\xff\xfe", "headers": {**auth(), "content-type": "text/plain"}},
        422,
        "UTF-8",
    ),
    (
        "lone surrogate",
        {
            "content": b'{"data": "\\ud800"}',
            "headers": {**auth(), "content-type": "application/json"},
        },
        422,
        "surrogate",
    ),
    (
        "form body",
        {"content": b"data=1", "headers": {**auth(), "content-type": "application/x-www-form"}},
        415,
        "Content-Type",
    ),
]


@pytest.mark.parametrize(
    ("request_kwargs", "status", "detail"),
    [case[1:] for case in BAD_REQUESTS],
    ids=[case[0] for case in BAD_REQUESTS],
)
async def test_bad_publish_is_refused_and_changes_nothing(
    guarded: ServerProcess, request_kwargs: dict[str, object], status: int, detail: str
) -> None:
    async with (
        open_stream(guarded.base_url, "/events/table") as stream,
        httpx.AsyncClient(base_url=guarded.base_url) as client,
    ):
        before = await client.post("/events/table", json={"data": "before"}, headers=auth())
        assert (await stream.next_event()).data == "before"
        refused = await client.post("/events/table", **request_kwargs)  # type: ignore[arg-type]
        assert refused.status_code == status, refused.text
        assert detail in refused.json()["detail"]
        after = await client.post("/events/table", json={"data": "after"}, headers=auth())
        got = await stream.next_event()
    assert got.data == "after"
    before_ms, before_seq = map(int, before.json()["id"].split("-"))
    after_ms, after_seq = map(int, after.json()["id"].split("-"))
    assert (after_ms, after_seq) > (before_ms, before_seq)
    if after_ms == before_ms:
        assert after_seq == before_seq + 1, "a refused publish consumed an id"


def test_missing_token_answer_asks_for_bearer(guarded: ServerProcess) -> None:
    response = httpx.post(guarded.base_url + "/events/x", json={"data": 1})
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"


async def test_publish_answers_202_with_id_channel_and_local_subscribers(
    guarded: ServerProcess,
) -> None:
    async with (
        open_stream(guarded.base_url, "/events/count"),
        open_stream(guarded.base_url, "/events/count"),
    ):
        await asyncio.sleep(0.2)
        async with httpx.AsyncClient(base_url=guarded.base_url) as client:
            response = await client.post("/events/count", json={"data": {"n": 1}}, headers=auth())
    assert response.status_code == 202
    body = response.json()
    assert body["channel"] == "count"
    assert body["subscribers"] == 2
    assert body["id"].count("-") == 1


@pytest.mark.parametrize(
    "path",
    ["/events/bad%20name", "/events/" + "a" * 129, "/events/caf%C3%A9", "/events/semi;colon"],
)
def test_bad_channel_names_are_422_on_both_sides(guarded: ServerProcess, path: str) -> None:
    published = httpx.post(guarded.base_url + path, json={"data": 1}, headers=auth())
    assert published.status_code == 422
    assert "invalid channel name" in published.json()["detail"]
    subscribed = httpx.get(guarded.base_url + path, timeout=3)
    assert subscribed.status_code == 422
    assert "invalid channel name" in subscribed.json()["detail"]


def test_channel_list_limits(server_factory: Callable[..., ServerProcess]) -> None:
    server = server_factory(SSE_MAX_CHANNELS_PER_STREAM="2")
    too_many = httpx.get(server.base_url + "/events?channel=a&channel=b&channel=c", timeout=3)
    assert too_many.status_code == 422
    assert "too many channels" in too_many.json()["detail"]
    none = httpx.get(server.base_url + "/events", timeout=3)
    assert none.status_code == 422
    assert "at least one channel" in none.json()["detail"]


def test_without_token_loopback_may_publish_and_startup_warns(
    herald: ServerProcess,
) -> None:
    response = httpx.post(herald.base_url + "/events/open", json={"data": 1})
    assert response.status_code == 202
    assert "PUBLISH_TOKEN is not set" in herald.logs()


def test_token_never_appears_in_logs(guarded: ServerProcess) -> None:
    httpx.post(guarded.base_url + "/events/x", json={"data": 1}, headers=auth("wrong-guess"))
    httpx.post(guarded.base_url + "/events/x", json={"data": 1}, headers=auth())
    logs = guarded.logs()
    assert TOKEN not in logs
    assert "wrong-guess" not in logs


def test_health(herald: ServerProcess) -> None:
    body = httpx.get(herald.base_url + "/health").json()
    assert body["status"] == "ok"
    assert isinstance(body["connections"], int)
    assert body["uptime_s"] >= 0


def test_unknown_route_and_method_are_json_errors(herald: ServerProcess) -> None:
    missing = httpx.get(herald.base_url + "/nope")
    assert missing.status_code == 404
    assert "detail" in missing.json()
    wrong = httpx.delete(herald.base_url + "/events/x")
    assert wrong.status_code == 405
    assert "detail" in wrong.json()


async def test_cors_allows_listed_origins_only(
    server_factory: Callable[..., ServerProcess],
) -> None:
    server = server_factory(CORS_ORIGINS="https://app.example, https://admin.example")
    async with httpx.AsyncClient(base_url=server.base_url, timeout=3) as client:
        preflight = await client.options(
            "/events/c",
            headers={
                "Origin": "https://app.example",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization,content-type",
            },
        )
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == "https://app.example"
        assert preflight.headers["access-control-allow-credentials"] == "true"
        published = await client.post(
            "/events/c", json={"data": 1}, headers={"Origin": "https://admin.example"}
        )
        assert published.headers["access-control-allow-origin"] == "https://admin.example"
        foreign = await client.post(
            "/events/c", json={"data": 1}, headers={"Origin": "https://evil.example"}
        )
        assert "access-control-allow-origin" not in foreign.headers
    stream_headers = {"Origin": "https://app.example"}
    async with open_stream(server.base_url, "/events/c", stream_headers) as stream:
        assert stream.response.headers["access-control-allow-origin"] == "https://app.example"


def test_no_cors_headers_without_cors_origins(herald: ServerProcess) -> None:
    response = httpx.post(
        herald.base_url + "/events/c", json={"data": 1}, headers={"Origin": "https://x.example"}
    )
    assert "access-control-allow-origin" not in response.headers


def test_bad_setting_stops_startup_with_one_line_naming_it() -> None:
    import subprocess
    import sys

    from tests.support.server import REPO_ROOT

    result = subprocess.run(
        [sys.executable, "-m", "app"],
        cwd=REPO_ROOT,
        env={"PATH": "/usr/bin:/bin", "SSE_QUEUE_SIZE": "lots", "SSE_OVERFLOW": "explode"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "SSE_QUEUE_SIZE" in lines[0]
    assert "SSE_OVERFLOW" in lines[0]
    assert json.dumps("lots") in lines[0] or "'lots'" in lines[0]


def test_openapi_schema_and_docs_render(herald: ServerProcess) -> None:
    schema = httpx.get(herald.base_url + "/openapi.json")
    assert schema.status_code == 200
    assert "/events/{channel}" in schema.json()["paths"]
    assert httpx.get(herald.base_url + "/docs").status_code == 200
