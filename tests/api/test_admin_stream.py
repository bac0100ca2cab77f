"""``POST /api/admin/ticket`` and ``GET /api/admin/stream``: who may read the live admin
metrics, what each frame carries, the per-worker cap, and shutdown. Streams are read
from real server processes."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from app.api.routes.admin_stream import CounterSample, rates
from app.dashboard.tickets import issue_ticket
from tests.conftest import FAST_TIMERS
from tests.support.server import ServerProcess
from tests.support.sse_client import EventStream, open_stream

TOKEN = "stream-admin-token"
BEARER = {"Authorization": f"Bearer {TOKEN}"}
STREAM_ENV = {**FAST_TIMERS, "ADMIN_TOKEN": TOKEN, "ADMIN_STREAM_SECONDS": "0.2"}


# --- rates (pure) ------------------------------------------------------------------


def sample(
    at: float, published: int = 0, delivered: int = 0, hits: int = 0, misses: int = 0
) -> CounterSample:
    return CounterSample(at, published, delivered, hits, misses)


def test_the_first_frame_has_no_rate_yet() -> None:
    assert rates(None, sample(10.0, published=5)) == {
        "published_per_s": None,
        "delivered_per_s": None,
        "cache_hit_rate": None,
    }


def test_rates_are_differences_over_the_interval() -> None:
    got = rates(sample(10.0, 100, 300, 1, 3), sample(12.0, 130, 390, 3, 3))
    assert got == {"published_per_s": 15.0, "delivered_per_s": 45.0, "cache_hit_rate": 0.5}


def test_counters_that_fall_give_zero_not_negative_rates() -> None:
    """A recycled worker takes its counters with it: the service total drops."""
    got = rates(sample(10.0, 500, 900), sample(11.0, 40, 80))
    assert got["published_per_s"] == 0.0 and got["delivered_per_s"] == 0.0


def test_no_time_elapsed_gives_no_rate() -> None:
    assert rates(sample(10.0, 1), sample(10.0, 9))["published_per_s"] is None


# --- against a real server -----------------------------------------------------------


@pytest.fixture(scope="module")
def admin_server() -> Iterator[ServerProcess]:
    server = ServerProcess(dict(STREAM_ENV)).start()
    yield server
    server.close()


def post_ticket(server: ServerProcess, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.post(server.base_url + "/api/admin/ticket", headers=headers, timeout=5)


def ticket_for(server: ServerProcess) -> str:
    response = post_ticket(server, BEARER)
    assert response.status_code == 200, response.text
    ticket: str = response.json()["ticket"]
    return ticket


async def frame(stream: EventStream) -> dict[str, Any]:
    message = await stream.next_event()
    assert message.event == "metrics"
    document: dict[str, Any] = json.loads(message.data)
    return document


@pytest.mark.integration
def test_a_ticket_needs_the_admin_token(admin_server: ServerProcess) -> None:
    assert post_ticket(admin_server).status_code == 401
    wrong = post_ticket(admin_server, {"Authorization": "Bearer nope"})
    assert wrong.status_code == 403
    issued = post_ticket(admin_server, {"X-Admin-Token": TOKEN})
    assert issued.status_code == 200
    body = issued.json()
    assert body["expires_in"] == 60
    assert body["stream_url"] == f"/api/admin/stream?ticket={body['ticket']}"


@pytest.mark.integration
async def test_a_ticket_opens_the_stream_of_metrics_with_rates(
    admin_server: ServerProcess,
) -> None:
    async with httpx.AsyncClient(base_url=admin_server.base_url) as client:
        one_shot = (await client.get("/api/admin/metrics", headers=BEARER)).json()
    url = f"/api/admin/stream?ticket={ticket_for(admin_server)}"
    async with open_stream(admin_server.base_url, url) as stream:
        assert stream.response.status_code == 200
        assert stream.response.headers["content-type"].startswith("text/event-stream")
        started = time.monotonic()
        first, second = await frame(stream), await frame(stream)
        elapsed = time.monotonic() - started
    assert stream.parser.retry == 3000
    # The same document as /api/admin/metrics (one function builds both), plus rates.
    assert set(first) == set(one_shot) | {"rates"}
    assert first["rates"]["published_per_s"] is None
    assert second["rates"]["published_per_s"] == 0.0
    assert first["worker"] == one_shot["worker"]
    assert elapsed >= 0.15, "frames are ADMIN_STREAM_SECONDS apart"


@pytest.mark.integration
async def test_rates_follow_the_traffic(admin_server: ServerProcess) -> None:
    url = f"/api/admin/stream?ticket={ticket_for(admin_server)}"
    async with (
        open_stream(admin_server.base_url, url) as stream,
        httpx.AsyncClient(base_url=admin_server.base_url) as client,
    ):
        before = (await frame(stream))["total"]["published"]
        for i in range(20):
            response = await client.post("/events/admin-stream-rates", json={"data": i})
            assert response.status_code == 202
        rates_seen = []
        for _ in range(10):
            document = await frame(stream)
            rates_seen.append(document["rates"]["published_per_s"])
            if document["total"]["published"] >= before + 20 and rates_seen[-1]:
                break
    assert document["total"]["published"] >= before + 20
    assert max(rates_seen) > 0


@pytest.mark.integration
@pytest.mark.parametrize(
    ("headers", "query"),
    [(BEARER, ""), ({"X-Admin-Token": TOKEN}, ""), ({}, f"?admin_token={TOKEN}")],
    ids=["bearer", "header", "query"],
)
async def test_the_admin_api_credentials_open_it_too(
    admin_server: ServerProcess, headers: dict[str, str], query: str
) -> None:
    async with open_stream(admin_server.base_url, f"/api/admin/stream{query}", headers) as stream:
        assert stream.response.status_code == 200
        assert "memory" in await frame(stream)


@pytest.mark.integration
def test_no_credential_is_401_and_a_wrong_token_403(admin_server: ServerProcess) -> None:
    url = admin_server.base_url + "/api/admin/stream"
    missing = httpx.get(url, timeout=5)
    assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
    wrong = httpx.get(url, headers={"Authorization": "Bearer nope"}, timeout=5)
    assert wrong.status_code == 403


@pytest.mark.integration
def test_bad_tickets_are_refused_and_never_logged(admin_server: ServerProcess) -> None:
    good = ticket_for(admin_server)
    expires, nonce, signature = good.split(".")
    token = SecretStr(TOKEN)
    bad = {
        "forged": f"{expires}.{nonce}.{'A' * len(signature)}",
        "extended": f"{int(expires) + 3600}.{nonce}.{signature}",
        "expired": issue_ticket(token, 60, now=lambda: time.time() - 120),
        "other token": issue_ticket(SecretStr("another-token"), 60),
        "garbage": "x" * 500,
        "empty": "",
    }
    for why, ticket in bad.items():
        response = httpx.get(
            admin_server.base_url + "/api/admin/stream", params={"ticket": ticket}, timeout=5
        )
        assert response.status_code == 403, why
        assert "invalid or expired ticket" in response.json()["detail"], why
    logs = admin_server.logs()
    assert "admin stream: ticket expired" in logs
    for ticket in (*bad.values(), good):
        if ticket:
            assert ticket not in logs
    assert TOKEN not in logs


@pytest.mark.integration
def test_without_admin_token_both_are_off(herald: ServerProcess) -> None:
    ticket = issue_ticket(SecretStr(TOKEN), 60)
    for response in (
        post_ticket(herald, BEARER),
        httpx.get(herald.base_url + "/api/admin/stream", params={"ticket": ticket}, timeout=5),
        httpx.get(herald.base_url + "/api/admin/stream", headers=BEARER, timeout=5),
    ):
        assert response.status_code == 503
        assert response.json() == {"detail": "admin API is disabled: set ADMIN_TOKEN"}


@pytest.mark.integration
async def test_streams_per_worker_are_capped_and_slots_come_back(
    server_factory: Callable[..., ServerProcess],
) -> None:
    server = server_factory(**STREAM_ENV, ADMIN_STREAM_MAX_CONNECTIONS="2")
    path = "/api/admin/stream"
    async with (
        open_stream(server.base_url, path, BEARER) as kept,
        httpx.AsyncClient(base_url=server.base_url) as client,
    ):
        async with open_stream(server.base_url, path, BEARER) as second:
            await frame(kept), await frame(second)
            refused = await client.get(path, headers=BEARER)
            assert refused.status_code == 503
            assert refused.headers["retry-after"] == "10"
            assert "too many admin streams (limit 2)" in refused.json()["detail"]
        for _ in range(50):  # the closed stream's slot is given back once it notices
            async with open_stream(server.base_url, path, BEARER) as again:
                if again.response.status_code == 200:
                    assert "memory" in await frame(again)
                    break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("the slot of a closed admin stream never came back")


@pytest.mark.integration
async def test_sigterm_ends_admin_streams_at_once(
    server_factory: Callable[..., ServerProcess],
) -> None:
    server = server_factory(**{**STREAM_ENV, "ADMIN_STREAM_SECONDS": "30"})
    async with open_stream(server.base_url, "/api/admin/stream", BEARER) as stream:
        await frame(stream)
        started = time.monotonic()
        server.signal(signal.SIGTERM)
        await stream.until_closed(timeout=5)
        assert time.monotonic() - started < 2
    assert server.process is not None
    server.process.wait(5)
