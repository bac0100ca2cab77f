"""Real gunicorn with Herald's worker: workers that act as one hub and drain cleanly."""

from __future__ import annotations

import asyncio
import re
import signal
import sys
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import FAST_TIMERS
from tests.support.redis_server import RedisServer
from tests.support.server import ServerProcess
from tests.support.sse_client import EventStream, open_stream

pytestmark = pytest.mark.integration


def gunicorn(env: dict[str, str], *flags: str) -> ServerProcess:
    """Herald under gunicorn with the repo's gunicorn.conf.py, on a free port."""
    server = ServerProcess({**FAST_TIMERS, **env})
    server.argv = [
        sys.executable,
        "-m",
        "gunicorn",
        "app.main:app",
        "--bind",
        f"127.0.0.1:{server.port}",
        *flags,
    ]
    return server.start()


@pytest.fixture
def servers() -> Iterator[list[ServerProcess]]:
    started: list[ServerProcess] = []
    yield started
    for server in started:
        server.close()


def stream_pids(logs: str) -> set[str]:
    return set(re.findall(r"herald\.sse \[(\d+)\] stream closed", logs))


async def test_two_workers_act_as_one_hub(
    servers: list[ServerProcess], redis_server: RedisServer
) -> None:
    server = gunicorn(
        {"BROKER_URL": redis_server.url, "REDIS_KEY_PREFIX": "xworker", "WEB_CONCURRENCY": "2"},
    )
    servers.append(server)
    subscribers = 40
    async with asyncio.TaskGroup() as group:
        streams: list[EventStream] = []
        contexts = [open_stream(server.base_url, "/events/fanout") for _ in range(subscribers)]
        for context in contexts:
            streams.append(await context.__aenter__())
        await asyncio.sleep(1.0)  # every worker's reader has picked up the channel
        async with httpx.AsyncClient(base_url=server.base_url) as client:
            ids = []
            for i in range(30):
                response = await client.post("/events/fanout", json={"data": i})
                assert response.status_code == 202
                ids.append(response.json()["id"])
        received = [group.create_task(stream.events(30, timeout=15)) for stream in streams]
    for task in received:
        assert [m.id for m in task.result()] == ids
        assert [m.data for m in task.result()] == [str(i) for i in range(30)]
    for context in contexts:
        await context.__aexit__(None, None, None)
    await asyncio.sleep(0.5)
    assert len(stream_pids(server.logs())) == 2, "subscribers were served by both workers"


def test_memory_broker_with_two_workers_warns_loudly(servers: list[ServerProcess]) -> None:
    server = gunicorn({"BROKER_URL": "memory://", "WEB_CONCURRENCY": "2"})
    servers.append(server)
    assert "publish" in server.logs() and "never reaches subscribers of another" in server.logs()


async def test_max_requests_closes_open_streams_promptly(servers: list[ServerProcess]) -> None:
    """The trap: without Herald's worker, open streams hold a recycling worker until --timeout."""
    server = gunicorn(
        {"WEB_CONCURRENCY": "1", "SSE_RETRY_MS": "500"},
        "--max-requests",
        "6",
        "--max-requests-jitter",
        "0",
        "--timeout",
        "60",
    )
    servers.append(server)
    async with (
        open_stream(server.base_url, "/events/recycle") as one,
        open_stream(server.base_url, "/events/recycle") as two,
    ):
        await asyncio.sleep(0.3)
        async with httpx.AsyncClient(base_url=server.base_url) as client:
            for _ in range(6):  # readiness probe + 2 streams + these pass the limit
                await client.get("/health")
        started = time.monotonic()
        await asyncio.gather(one.until_closed(timeout=10), two.until_closed(timeout=10))
        elapsed = time.monotonic() - started
    assert elapsed < 3.0, f"streams held the recycling worker for {elapsed:.1f}s"
    assert one.parser.retry is not None and one.parser.retry >= 500  # jittered farewell
    # A fresh worker took over.
    async with httpx.AsyncClient(base_url=server.base_url) as client:
        for _ in range(50):
            try:
                if (await client.get("/health")).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.1)
        assert (await client.get("/health")).status_code == 200


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
async def test_stop_and_reload_close_streams_within_two_seconds(
    servers: list[ServerProcess], sig: signal.Signals
) -> None:
    server = gunicorn({"WEB_CONCURRENCY": "2"})
    servers.append(server)
    async with (
        open_stream(server.base_url, "/events/bye") as one,
        open_stream(server.base_url, "/events/bye") as two,
    ):
        await asyncio.sleep(0.3)
        started = time.monotonic()
        server.signal(sig)
        await asyncio.gather(one.until_closed(timeout=5), two.until_closed(timeout=5))
        elapsed = time.monotonic() - started
    assert elapsed < 2.0
    assert server.process is not None
    if sig == signal.SIGTERM:
        assert await asyncio.to_thread(server.process.wait, 5) == 0
    else:  # reloaded: new workers serve
        assert server.process.poll() is None
        async with httpx.AsyncClient(base_url=server.base_url, timeout=5) as client:
            assert (await client.get("/health")).status_code == 200
