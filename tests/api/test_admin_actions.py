"""Operator actions against one real server: who may act, what bad input gets, and what each
action does to real streams, the real cache and /health — never more than it names."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import FAST_TIMERS
from tests.support.server import ServerProcess
from tests.support.sse_client import open_stream

pytestmark = pytest.mark.integration

TOKEN = "actions-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
RETRY_MS = 400
ACTIONS: list[tuple[str, str, dict[str, Any] | None]] = [
    ("POST", "/api/admin/cleanup", {"level": "light"}),
    ("POST", "/api/admin/cache/clear", None),
    ("POST", "/api/admin/streams/close", {"channel": "nobody"}),
    ("POST", "/api/admin/drain", None),
    ("DELETE", "/api/admin/drain", None),
]


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    # A proxy we trust (the test itself) lets the tests pose as several clients.
    env = {
        **FAST_TIMERS,
        "ADMIN_TOKEN": TOKEN,
        "SSE_RETRY_MS": "250",
        "TRUSTED_PROXIES": "127.0.0.1",
        "ECHO_DELAY_MS": "0",
    }
    process = ServerProcess(env).start()
    yield process
    process.close()


async def act(
    server: ServerProcess,
    method: str,
    path: str,
    body: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as client:
        return await client.request(
            method, path, json=body, headers=AUTH if headers is None else headers
        )


async def ok(server: ServerProcess, method: str, path: str, body: Any = None) -> dict[str, Any]:
    response = await act(server, method, path, body)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    assert answer["complete"] is True and answer["answered"] == 1
    return answer


async def admin_metrics(server: ServerProcess) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=server.base_url, timeout=5) as client:
        document: dict[str, Any] = (await client.get("/api/admin/metrics", headers=AUTH)).json()
    return document


async def cache_response(server: ServerProcess, text: str, conversation: str | None) -> None:
    """Ask the echo producer and read the run to its end, so its text is cached."""
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as client:
        body: dict[str, Any] = {"input": text}
        if conversation is not None:
            body["conversation_id"] = conversation
        created = await client.post("/api/responses", json=body)
        assert created.status_code in (200, 201, 202), created.text
        async with client.stream("GET", created.json()["stream_url"]) as run:
            async for _ in run.aiter_bytes():
                pass


def as_client(address: str) -> dict[str, str]:
    return {"X-Forwarded-For": address}


# --- who may act, and bad input ----------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "body"), ACTIONS, ids=[f"{a[0]} {a[1]}" for a in ACTIONS]
)
async def test_no_token_is_401_and_a_wrong_one_403(
    server: ServerProcess, method: str, path: str, body: dict[str, Any] | None
) -> None:
    missing = await act(server, method, path, body, headers={})
    assert missing.status_code == 401 and "missing admin token" in missing.json()["detail"]
    wrong = await act(server, method, path, body, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 403 and wrong.json() == {"detail": "invalid admin token"}


async def test_bad_input_without_a_token_is_still_401(server: ServerProcess) -> None:
    response = await act(server, "POST", "/api/admin/cleanup", {"level": "x"}, headers={})
    assert response.status_code == 401


async def test_admin_api_off_is_503(server_factory: Any) -> None:
    off = server_factory()
    for method, path, body in ACTIONS:
        response = await act(off, method, path, body)
        assert response.status_code == 503, path
        assert response.json() == {"detail": "admin API is disabled: set ADMIN_TOKEN"}


BAD_BODIES: list[tuple[str, dict[str, Any] | None]] = [
    ("/api/admin/cleanup", {"level": "medium"}),
    ("/api/admin/cleanup", None),
    ("/api/admin/cleanup", {"level": "light", "force": True}),
    ("/api/admin/cache/clear", {"conversation": "c1"}),
    ("/api/admin/cache/clear", {"conversation_id": "bad id with spaces"}),
    ("/api/admin/streams/close", {}),
    ("/api/admin/streams/close", {"chanel": "close-me"}),
    ("/api/admin/streams/close", {"channel": "bad channel!"}),
    ("/api/admin/streams/close", {"client": "not-an-address"}),
    ("/api/admin/streams/close", {"channel": "close-me", "retry_ms": 5}),
    ("/api/admin/streams/close", {"channel": "close-me", "worker": "w:1", "host": "w"}),
    ("/api/admin/drain", {"retry_ms": "soon"}),
]


@pytest.mark.parametrize(("path", "body"), BAD_BODIES, ids=[str(b[1]) for b in BAD_BODIES])
async def test_bad_input_is_422_and_changes_nothing(
    server: ServerProcess, path: str, body: dict[str, Any] | None
) -> None:
    await cache_response(server, f"kept through a bad {path}", None)
    before = await admin_metrics(server)
    async with open_stream(server.base_url, "/events/close-me") as stream:
        response = await act(server, "POST", path, body)
        assert response.status_code == 422, response.text
        assert "detail" in response.json()
        await asyncio.sleep(0.2)
        assert not stream.ended
        after = await admin_metrics(server)
        assert after["sse"]["connections"] == before["sse"]["connections"] + 1
    assert after["cache"]["items"] == before["cache"]["items"]
    assert after["memory"]["refusing"] is False
    health = (await act(server, "GET", "/health")).json()
    assert health["drain"]["draining"] is False


async def test_a_worker_nobody_runs_is_404(server: ServerProcess) -> None:
    response = await act(server, "POST", "/api/admin/drain", {"worker": "elsewhere:1"})
    assert response.status_code == 404
    assert response.json() == {"detail": "no live worker 'elsewhere:1'"}
    assert (await act(server, "GET", "/health")).json()["drain"]["draining"] is False


# --- the cache -------------------------------------------------------------------


async def test_clearing_one_conversation_leaves_the_rest(server: ServerProcess) -> None:
    await ok(server, "POST", "/api/admin/cache/clear")
    await cache_response(server, "first question of a", "conv-a")
    await cache_response(server, "second question of a", "conv-a")
    await cache_response(server, "a question of b", "conv-b")
    await cache_response(server, "a question of no conversation", None)
    full = (await admin_metrics(server))["cache"]
    assert full["items"] == 4
    answer = await ok(server, "POST", "/api/admin/cache/clear", {"conversation_id": "conv-a"})
    assert answer["total"]["items"] == 2 and answer["total"]["bytes"] > 0
    left = (await admin_metrics(server))["cache"]
    assert left["items"] == 2
    assert left["bytes"] == full["bytes"] - answer["total"]["bytes"]
    everything = await ok(server, "POST", "/api/admin/cache/clear")
    assert everything["total"] == {"items": 2, "bytes": left["bytes"]}
    assert (await admin_metrics(server))["cache"]["items"] == 0


# --- cleanups --------------------------------------------------------------------


async def test_cleanup_levels_report_bytes_per_part_and_rss(server: ServerProcess) -> None:
    await cache_response(server, "cached before the aggressive cleanup", None)
    cached = (await admin_metrics(server))["cache"]["bytes"]
    light = await ok(server, "POST", "/api/admin/cleanup", {"level": "light"})
    (result,) = light["workers"].values()
    assert set(result["freed"]) == {"cache_expired", "cache_shrunk", "history_trimmed"}
    assert result["rss_before"] > 0 and result["rss_after"] > 0
    cached = (await admin_metrics(server))["cache"]["bytes"]
    aggressive = await ok(server, "POST", "/api/admin/cleanup", {"level": "aggressive"})
    (result,) = aggressive["workers"].values()
    assert set(result["freed"]) == {"cache_cleared", "history_trimmed", "runs_trimmed"}
    assert result["freed"]["cache_cleared"] == cached
    assert aggressive["total"]["freed_bytes"] == result["freed_bytes"]
    assert (await admin_metrics(server))["cache"]["items"] == 0


# --- closing streams -------------------------------------------------------------


async def publish(server: ServerProcess, channel: str, data: object) -> str:
    async with httpx.AsyncClient(base_url=server.base_url, timeout=5) as client:
        response = await client.post(f"/events/{channel}", json={"data": data})
    assert response.status_code == 202, response.text
    event_id: str = response.json()["id"]
    return event_id


async def test_closing_a_channel_cuts_only_its_streams_and_loses_nothing(
    server: ServerProcess,
) -> None:
    async with (
        open_stream(server.base_url, "/events/cut-me") as one,
        open_stream(server.base_url, "/events/cut-me?channel=also") as two,
        open_stream(server.base_url, "/events/keep-me") as kept,
    ):
        first = await publish(server, "cut-me", 1)
        await one.events(1)
        answer = await ok(
            server, "POST", "/api/admin/streams/close", {"channel": "cut-me", "retry_ms": RETRY_MS}
        )
        assert answer["total"] == {"closed": 2}
        await asyncio.gather(one.until_closed(), two.until_closed())
        for stream in (one, two):  # the farewell retry is in the window asked for
            assert stream.parser.retry is not None
            assert RETRY_MS <= stream.parser.retry < 2 * RETRY_MS
        await asyncio.sleep(0.2)
        assert not kept.ended
        missed = [await publish(server, "cut-me", n) for n in (2, 3)]
        await publish(server, "keep-me", "still here")
        assert [m.data for m in await kept.events(1)] == ["still here"]
    # The client comes back with its Last-Event-ID and gets what it missed, in order.
    async with open_stream(
        server.base_url, "/events/cut-me", headers={"Last-Event-ID": first}
    ) as back:
        assert [m.id for m in await back.events(2)] == missed


async def test_closing_a_client_cuts_only_that_address(server: ServerProcess) -> None:
    base = server.base_url
    async with (
        open_stream(base, "/events/by-client", headers=as_client("203.0.113.7")) as target,
        open_stream(base, "/events/by-client", headers=as_client("203.0.113.8")) as other,
        open_stream(base, "/events/another", headers=as_client("203.0.113.7")) as second,
    ):
        answer = await ok(
            server,
            "POST",
            "/api/admin/streams/close",
            {"client": "203.0.113.7", "channel": "by-client"},
        )
        assert answer["total"] == {"closed": 1}
        await target.until_closed()
        both = await ok(server, "POST", "/api/admin/streams/close", {"client": "203.0.113.7"})
        assert both["total"] == {"closed": 1}
        await second.until_closed()
        await asyncio.sleep(0.2)
        assert not other.ended


# --- draining --------------------------------------------------------------------


async def test_drain_refuses_new_streams_closes_open_ones_and_undrain_ends_it(
    server: ServerProcess,
) -> None:
    async with open_stream(server.base_url, "/events/draining") as stream:
        answer = await ok(server, "POST", "/api/admin/drain", {"retry_ms": RETRY_MS})
        (result,) = answer["workers"].values()
        assert result == {"closed": 1, "started": True}
        await stream.until_closed()
        assert stream.parser.retry is not None
        assert RETRY_MS <= stream.parser.retry < 2 * RETRY_MS
    try:
        health = (await act(server, "GET", "/health")).json()
        assert health["status"] == "ok" and health["drain"]["draining"] is True
        async with httpx.AsyncClient(base_url=server.base_url, timeout=5) as client:
            refused = await client.get("/events/draining")
            assert refused.status_code == 503
            assert refused.headers["retry-after"] == "1"  # 2 x 400 ms, rounded up
            assert "draining" in refused.json()["detail"]
            response = await client.post("/api/responses", json={"input": "while draining"})
            assert response.status_code == 503
        again = await ok(server, "POST", "/api/admin/drain")
        assert again["total"] == {"closed": 0, "started": 0}
    finally:
        undrained = await ok(server, "DELETE", "/api/admin/drain")
    assert undrained["total"] == {"stopped": 1}
    assert (await act(server, "GET", "/health")).json()["drain"]["draining"] is False
    async with open_stream(server.base_url, "/events/draining") as stream:
        assert stream.response.status_code == 200


# --- audit -----------------------------------------------------------------------


async def test_each_action_is_logged_once_with_a_fingerprint_and_counted(
    server: ServerProcess,
) -> None:
    def counted(text: str) -> float:
        match = re.search(r'herald_admin_actions_total\{action="cache_clear",[^}]*\} (\S+)', text)
        assert match is not None, text
        return float(match.group(1))

    async with httpx.AsyncClient(base_url=server.base_url, timeout=5) as client:
        before = counted((await client.get("/metrics", headers=AUTH)).text)
        lines_before = server.logs().count("admin action cache_clear")
        await ok(server, "POST", "/api/admin/cache/clear", {"conversation_id": "audited"})
        after = counted((await client.get("/metrics", headers=AUTH)).text)
    assert after == before + 1
    logs = server.logs()
    assert logs.count("admin action cache_clear") == lines_before + 1
    line = [ln for ln in logs.splitlines() if "conversation_id=audited" in ln][-1]
    assert re.search(r"by token:[0-9a-f]{12} from 127\.0\.0\.1", line), line
    assert '"items":0' in line and "missing none" in line
    assert TOKEN not in logs
