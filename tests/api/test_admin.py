"""The admin API against real server processes: the auth matrix, the JSON shapes,
/health's memory fields, and the guard defending a server under memory pressure."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from app.memory.guard import MEMORY_RETRY_AFTER_SECONDS
from tests.conftest import FAST_TIMERS
from tests.support.server import ServerProcess
from tests.support.sse_client import open_stream

pytestmark = pytest.mark.integration

TOKEN = "s3cret-admin-token"
WRONG = "wrong-admin-token"
DISABLED = {"detail": "admin API is disabled: set ADMIN_TOKEN"}
ADMIN_PATHS = ["/api/admin/metrics", "/api/stats/memory", "/api/stats/cache", "/metrics"]
MEMORY_RETRY_AFTER = str(MEMORY_RETRY_AFTER_SECONDS)
BALLAST_BATCH = 50


@pytest.fixture(scope="module")
def admin_server() -> Iterator[ServerProcess]:
    server = ServerProcess({**FAST_TIMERS, "ADMIN_TOKEN": TOKEN}).start()
    yield server
    server.close()


def get(server: ServerProcess, path: str, **kwargs: Any) -> httpx.Response:
    return httpx.get(server.base_url + path, timeout=5, **kwargs)


def admin_metrics(server: ServerProcess) -> dict[str, Any]:
    response = get(server, "/api/admin/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200, response.text
    document: dict[str, Any] = response.json()
    return document


# --- who may read ----------------------------------------------------------------

CREDENTIALS: list[tuple[str, dict[str, str], dict[str, str]]] = [
    ("bearer", {"Authorization": f"Bearer {TOKEN}"}, {}),
    ("bearer, any case", {"Authorization": f"bearer {TOKEN}"}, {}),
    ("header", {"X-Admin-Token": TOKEN}, {}),
    ("query", {}, {"admin_token": TOKEN}),
]


@pytest.mark.parametrize("path", ADMIN_PATHS)
@pytest.mark.parametrize(("how", "headers", "params"), CREDENTIALS, ids=[c[0] for c in CREDENTIALS])
def test_right_token_each_way_is_let_in(
    admin_server: ServerProcess,
    path: str,
    how: str,
    headers: dict[str, str],
    params: dict[str, str],
) -> None:
    response = get(admin_server, path, headers=headers, params=params)
    assert response.status_code == 200, (how, response.text)


@pytest.mark.parametrize("path", ADMIN_PATHS)
def test_no_token_is_401(admin_server: ServerProcess, path: str) -> None:
    response = get(admin_server, path)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert "missing admin token" in response.json()["detail"]


@pytest.mark.parametrize("path", ADMIN_PATHS)
@pytest.mark.parametrize(
    ("headers", "params"),
    [
        ({"Authorization": f"Bearer {WRONG}"}, {}),
        ({"X-Admin-Token": WRONG}, {}),
        ({}, {"admin_token": WRONG}),
        ({"Authorization": f"Bearer {TOKEN}x"}, {}),  # a prefix match is no match
        ({"X-Admin-Token": "ünï".encode()}, {}),
        ({}, {"admin_token": "ünï ✓"}),
        # The first credential present is judged; a right one behind it does not rescue it.
        ({"Authorization": f"Bearer {WRONG}"}, {"admin_token": TOKEN}),
        ({"X-Admin-Token": WRONG}, {"admin_token": TOKEN}),
    ],
    ids=[
        "bearer",
        "header",
        "query",
        "longer",
        "non-ascii-header",
        "non-ascii-query",
        "bearer+query",
        "header+query",
    ],
)
def test_wrong_token_is_403(
    admin_server: ServerProcess,
    path: str,
    headers: dict[str, str | bytes],
    params: dict[str, str],
) -> None:
    response = get(admin_server, path, headers=headers, params=params)
    assert response.status_code == 403
    assert response.json() == {"detail": "invalid admin token"}


def test_other_authorization_schemes_are_not_a_token(admin_server: ServerProcess) -> None:
    response = get(admin_server, "/api/admin/metrics", headers={"Authorization": f"Basic {TOKEN}"})
    assert response.status_code == 401


def test_tokens_never_reach_the_log(admin_server: ServerProcess) -> None:
    get(admin_server, "/api/admin/metrics", headers={"X-Admin-Token": "guess-one-two-three"})
    get(admin_server, "/api/admin/metrics", params={"admin_token": TOKEN})
    logs = admin_server.logs()
    assert "wrong token (header)" in logs  # the failure itself is logged...
    assert "guess-one-two-three" not in logs  # ...without what was tried
    assert TOKEN not in logs


@pytest.mark.parametrize("path", ADMIN_PATHS)
def test_without_admin_token_the_api_is_off(herald: ServerProcess, path: str) -> None:
    for headers in ({}, {"Authorization": f"Bearer {TOKEN}"}):
        response = get(herald, path, headers=headers)
        assert response.status_code == 503
        assert response.json() == DISABLED


def test_public_metrics_need_no_token_but_the_admin_api_still_does(
    server_factory: Callable[..., ServerProcess],
) -> None:
    server = server_factory(METRICS_PUBLIC="true")
    response = get(server, "/metrics")
    assert response.status_code == 200
    assert "herald_sse_connections" in response.text
    assert get(server, "/api/admin/metrics").json() == DISABLED


# --- what it says --------------------------------------------------------------------


def test_admin_metrics_shape(admin_server: ServerProcess) -> None:
    document = admin_metrics(admin_server)
    assert set(document) == {
        "memory",
        "cache",
        "sse",
        "responses",
        "process",
        "worker",
        "workers",
        "total",
        "exchange",
        "limits",
    }
    assert document["limits"]["sse_max_connections"] == 10_000  # the default, as configured

    memory = document["memory"]
    assert {
        "rss_bytes",
        "socket_bytes",
        "box_source",
        "used_bytes",
        "limit_bytes",
        "limit_source",
        "percent",
        "level",
        "refusing",
        "refused",
        "health_score",
        "thresholds",
        "check_seconds",
        "checks",
        "sampled_ago_s",
        "transitions",
        "cleanups",
        "trend",
    } <= set(memory)
    assert memory["rss_bytes"] > 10 * 1024 * 1024
    assert memory["limit_source"] in ("setting", "cgroup-v2", "cgroup-v1", "default")
    # The level is judged on the whole box (app.memory.box): here, without a cgroup limit,
    # the server's process tree, this worker's RSS and the kernel's socket memory included.
    assert memory["box_source"] in ("cgroup-v2", "cgroup-v1", "processes")
    assert memory["used_bytes"] >= memory["socket_bytes"]
    if memory["box_source"] == "processes":  # the tree holds this process (read a moment apart)
        assert memory["used_bytes"] >= memory["rss_bytes"] - 4 * 1024 * 1024
    # Not > 0: the guard samples every MEMORY_CHECK_SECONDS, and on a quiet host no socket
    # may hold a buffered page at that instant (tests/memory/test_sockets.py and the
    # stalled-stream tests check the figure itself).
    assert isinstance(memory["socket_bytes"], int) and memory["socket_bytes"] >= 0
    assert memory["percent"] == pytest.approx(
        100 * memory["used_bytes"] / memory["limit_bytes"], abs=0.01
    )
    assert memory["level"] == "normal" and memory["refusing"] is False
    assert memory["thresholds"] == {
        "warning_percent": 75.0,
        "critical_percent": 90.0,
        "hysteresis_percent": 5.0,
        "warning_bytes": int(memory["limit_bytes"] * 0.75),
        "critical_bytes": int(memory["limit_bytes"] * 0.90),
    }
    assert set(memory["cleanups"]) == {"warning", "critical", "freed_bytes", "last"}
    assert set(memory["trend"]) == {
        "samples",
        "window_seconds",
        "slope_bytes_per_s",
        "connections_steady",
        "leak_suspected",
    }

    assert {"items", "bytes", "max_items", "max_bytes", "hits", "misses", "evictions"} <= set(
        document["cache"]
    )
    assert {
        "connections",
        "channels",
        "queued",
        "published",
        "delivered",
        "dropped",
        "overflow_disconnects",
        "reaped",
    } <= set(document["sse"])
    assert {"runs", "running", "started", "completed", "failed"} <= set(document["responses"])

    process = document["process"]
    assert process["pid"] == admin_server.process.pid  # type: ignore[union-attr]
    assert process["threads"] >= 1 and process["open_fds"] >= 3
    assert len(process["gc"]["counts"]) == 3 and len(process["gc"]["collections"]) == 3
    assert process["uptime_s"] >= 0


def test_one_process_reports_itself_as_the_only_worker(admin_server: ServerProcess) -> None:
    document = admin_metrics(admin_server)
    pid = admin_server.process.pid  # type: ignore[union-attr]
    assert document["worker"] == f"{socket.gethostname()}:{pid}"
    assert document["exchange"] == {"kind": "local", "state": "ok"}  # python -m app: no one else
    [worker] = document["workers"]
    assert worker["worker"] == document["worker"]
    assert (worker["host"], worker["pid"]) == (socket.gethostname(), pid)
    assert worker["at"] == pytest.approx(time.time(), abs=5)
    # This worker's entry is its live figures: the same as the sections beside it.
    memory, sse, cache = document["memory"], document["sse"], document["cache"]
    assert worker["connections"] == sse["connections"]
    assert worker["published"] == sse["published"]
    assert worker["delivered"] == sse["delivered"]
    assert worker["rss_bytes"] == memory["rss_bytes"]
    assert worker["socket_bytes"] == memory["socket_bytes"]
    assert worker["limit_bytes"] == memory["limit_bytes"]
    assert worker["level"] == memory["level"] and worker["refusing"] == memory["refusing"]
    assert worker["health_score"] == memory["health_score"]
    assert worker["cache_hits"] == cache["hits"] and worker["cache_items"] == cache["items"]
    assert set(worker) == {
        "worker", "host", "pid", "at", "uptime_s",
        "connections", "channels", "queued", "published", "delivered", "dropped",
        "overflow_disconnects", "reaped",
        "replays_running", "replays_waiting", "replay_page_bytes",
        "cache_hits", "cache_misses", "cache_items", "cache_bytes",
        "rss_bytes", "socket_bytes", "limit_bytes", "level", "refusing", "health_score",
        "cleanups_warning", "cleanups_critical", "rss_slope_bytes_per_s", "leak_suspected",
    }  # fmt: skip
    assert worker["replays_running"] == sse["replays"]["running"]
    assert document["total"] == {
        "connections": sse["connections"],
        "channels": sse["channels"],
        "published": sse["published"],
        "delivered": sse["delivered"],
        "dropped": sse["dropped"],
        "overflow_disconnects": sse["overflow_disconnects"],
        "reaped": sse["reaped"],
        "cache_hits": cache["hits"],
        "cache_misses": cache["misses"],
        "rss_bytes": memory["rss_bytes"],
        "workers": 1,
    }


def test_stats_endpoints_are_the_sections(admin_server: ServerProcess) -> None:
    headers = {"X-Admin-Token": TOKEN}
    for _ in range(20):
        memory = get(admin_server, "/api/stats/memory", headers=headers).json()
        cache = get(admin_server, "/api/stats/cache", headers=headers).json()
        document = admin_metrics(admin_server)
        # The guard samples every second: compare two answers given between the same samples.
        if memory["checks"] == document["memory"]["checks"]:
            break
    # sampled_ago_s moves between two requests; everything else is the same section.
    memory.pop("sampled_ago_s")
    document["memory"].pop("sampled_ago_s")
    assert memory == document["memory"]
    assert cache == document["cache"]


async def test_metrics_follow_activity(admin_server: ServerProcess) -> None:
    before = admin_metrics(admin_server)
    async with (
        httpx.AsyncClient(base_url=admin_server.base_url) as client,
        open_stream(admin_server.base_url, "/events/admin-activity") as stream,
    ):
        for _ in range(100):
            if admin_metrics(admin_server)["sse"]["connections"] >= 1:
                break
            await asyncio.sleep(0.02)
        published = await client.post("/events/admin-activity", json={"data": "hello"})
        assert published.status_code == 202
        assert (await stream.next_event()).data == "hello"
        created = await client.post("/api/responses", json={"input": "admin metrics check"})
        assert created.status_code == 201
        during = admin_metrics(admin_server)
    assert during["sse"]["connections"] == before["sse"]["connections"] + 1
    assert during["sse"]["published"] == before["sse"]["published"] + 1
    assert during["sse"]["delivered"] >= before["sse"]["delivered"] + 1
    assert during["responses"]["started"] == before["responses"]["started"] + 1


def test_health_reports_memory_level_and_score(admin_server: ServerProcess) -> None:
    health = get(admin_server, "/health").json()
    assert health["status"] == "ok"
    assert health["memory_level"] == "normal"
    assert 50 <= health["health_score"] <= 100
    assert health["health_score"] == admin_metrics(admin_server)["memory"]["health_score"]


# --- the guard defending a real server ---------------------------------------------------


async def wait_for_level(server: ServerProcess, level: str, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    async with httpx.AsyncClient(base_url=server.base_url) as client:
        while asyncio.get_running_loop().time() < deadline:
            if (await client.get("/health")).json()["memory_level"] == level:
                return
            await asyncio.sleep(0.05)
    raise AssertionError(f"never reached memory level {level}")


async def test_critical_server_refuses_new_work_and_stays_healthy(
    server_factory: Callable[..., ServerProcess],
) -> None:
    # A ~55 MB process against a 40 MB limit is critical from its first sample.
    server = server_factory(ADMIN_TOKEN=TOKEN, MEMORY_LIMIT_MB="40", MEMORY_CHECK_SECONDS="0.2")
    health = get(server, "/health")
    assert health.status_code == 200
    assert health.json()["memory_level"] == "critical"
    assert health.json()["health_score"] == 10

    async with httpx.AsyncClient(base_url=server.base_url) as client:
        stream = await client.get("/events/refused")
        response = await client.post("/api/responses", json={"input": "hello"})
        multi = await client.get("/events?channel=a&channel=b")
    for refused in (stream, response, multi):
        assert refused.status_code == 503
        assert refused.headers["retry-after"] == MEMORY_RETRY_AFTER
        assert refused.json() == {"detail": "server is low on memory; retry later"}

    memory = admin_metrics(server)["memory"]
    assert memory["level"] == "critical"
    assert memory["refusing"] is True
    assert memory["refused"] >= 3
    assert memory["cleanups"]["critical"] == 1
    assert memory["cleanups"]["last"]["level"] == "critical"
    assert memory["limit_source"] == "setting"
    assert memory["limit_bytes"] == 40 * 1024 * 1024
    assert "memory cleanup (critical): freed" in server.logs()


async def test_open_stream_survives_while_new_ones_are_refused(
    server_factory: Callable[..., ServerProcess],
) -> None:
    """Real memory growth: a stream opened at `normal` keeps streaming after the server
    turns critical, while new streams and responses are refused."""
    ballast_event = "x" * 60_000
    server = server_factory(
        ADMIN_TOKEN=TOKEN,
        MEMORY_LIMIT_MB="160",  # an idle server (~55 MB) is at ~35 %
        MEMORY_WARNING_PERCENT="50",
        MEMORY_CRITICAL_PERCENT="60",
        # Leaves critical only under 15 % (24 MB), which this process never is:
        # the refusal cannot lift halfway through the test.
        MEMORY_HYSTERESIS_PERCENT="45",
        MEMORY_CHECK_SECONDS="0.1",
        SSE_HISTORY_SIZE="100000",
        SSE_HISTORY_MAX_MB="500",
    )
    health = get(server, "/health").json()
    assert health["memory_level"] == "normal", admin_metrics(server)["memory"]
    async with (
        httpx.AsyncClient(base_url=server.base_url) as client,
        open_stream(server.base_url, "/events/survivor") as survivor,
    ):
        for _ in range(100):
            if (await client.get("/health")).json()["connections"] == 1:
                break
            await asyncio.sleep(0.02)
        # Grow RSS for real: large events retained in a history nobody reads.
        ballast = 0
        for _ in range(60):
            batch = [
                client.post("/events/ballast", json={"data": ballast_event})
                for _ in range(BALLAST_BATCH)
            ]
            assert {sent.status_code for sent in await asyncio.gather(*batch)} == {202}
            ballast += BALLAST_BATCH
            if (await client.get("/health")).json()["memory_level"] == "critical":
                break
        await wait_for_level(server, "critical")

        refused = await client.get("/events/newcomer")
        assert refused.status_code == 503
        assert refused.headers["retry-after"] == MEMORY_RETRY_AFTER
        assert (await client.post("/api/responses", json={"input": "hi"})).status_code == 503

        assert (await client.get("/health")).json()["connections"] == 1
        sent = await client.post("/events/survivor", json={"data": "still streaming"})
        assert sent.status_code == 202
        assert (await survivor.next_event()).data == "still streaming"
        assert not survivor.ended

    document = admin_metrics(server)
    assert document["memory"]["cleanups"]["critical"] == 1
    # The aggressive cleanup trimmed the ballast's history to 10 events; at most one
    # batch more arrived before the test saw the level change.
    assert ballast > 4 * BALLAST_BATCH
    assert document["sse"]["broker"]["history"]["events"] <= 10 + BALLAST_BATCH + 1
