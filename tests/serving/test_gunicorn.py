"""Real gunicorn with Herald's worker: workers that act as one hub, drain cleanly, and report
each other's figures whichever of them a scrape lands on."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from tests.api.test_metrics import samples
from tests.conftest import FAST_TIMERS
from tests.support.redis_server import RedisServer
from tests.support.server import REPO_ROOT, ServerProcess
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
    assert await healthy_soon(server), "no fresh worker took over"  # a fresh worker took over


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
        assert await healthy_soon(server), "no new worker answered after the reload"


async def healthy_soon(server: ServerProcess, attempts: int = 50) -> bool:
    """True once /health answers 200. Right after a reload a request can still land on an
    old worker that is closing its socket (connection reset), so a few tries are allowed."""
    async with httpx.AsyncClient(base_url=server.base_url, timeout=5) as client:
        for _ in range(attempts):
            try:
                if (await client.get("/health")).status_code == 200:
                    return True
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.1)
    return False


# --- metrics across workers -----------------------------------------------------------

ADMIN_TOKEN = "gunicorn-admin-token"
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
SHARE_SECONDS = 0.5
STREAMS = 30
ANSWERS_PER_WORKER = 3
MAX_SCRAPES = 100


def sharing_env(**env: str) -> dict[str, str]:
    return {
        "WEB_CONCURRENCY": "2",
        "ADMIN_TOKEN": ADMIN_TOKEN,
        "METRICS_SHARE_SECONDS": str(SHARE_SECONDS),
        **env,
    }


@pytest.fixture(params=["memory", "redis"])
def backplane(request: pytest.FixtureRequest) -> dict[str, str]:
    """memory:// (workers share through gunicorn's directory) or redis:// (through Redis)."""
    if request.param == "memory":
        return {"BROKER_URL": "memory://"}
    redis_server: RedisServer = request.getfixturevalue("redis_server")
    return {"BROKER_URL": redis_server.url, "REDIS_KEY_PREFIX": f"t{uuid.uuid4().hex[:12]}"}


async def fetch(server: ServerProcess, path: str) -> httpx.Response:
    """One request on a connection of its own, so it may land on either worker."""
    async with httpx.AsyncClient(base_url=server.base_url, timeout=5) as client:
        response = await client.get(path, headers=AUTH)
    assert response.status_code == 200, response.text
    return response


async def admin_metrics(server: ServerProcess) -> dict[str, Any]:
    document: dict[str, Any] = (await fetch(server, "/api/admin/metrics")).json()
    return document


async def wait_for(
    probe: Callable[[], Awaitable[dict[str, Any]]],
    condition: Callable[[dict[str, Any]], bool],
    timeout: float = 10.0,
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        document = await probe()
        if condition(document):
            return document
        if time.monotonic() > deadline:
            raise AssertionError(f"never came true; last: {document}")
        await asyncio.sleep(0.1)


def worker_pids(logs: str) -> set[int]:
    return {int(pid) for pid in re.findall(r"Booting worker with pid: (\d+)", logs)}


def listing(directory: Path) -> list[str] | None:
    """The sorted snapshot names in ``directory``, or ``None`` if it does not exist (the
    workers' action sockets, ``<pid>.sock``, are tested in test_gunicorn_actions)."""
    if not os.path.isdir(directory):
        return None
    return sorted(name for name in os.listdir(directory) if not name.endswith(".sock"))


def stats_directory(logs: str) -> Path:
    found = re.search(r"workers share their stats in (\S+)", logs)
    assert found, logs
    return Path(found.group(1))


async def test_every_scrape_reports_every_worker(
    servers: list[ServerProcess], backplane: dict[str, str]
) -> None:
    server = gunicorn(sharing_env(**backplane))
    servers.append(server)
    async with AsyncExitStack() as streams:
        for index in range(STREAMS):
            await streams.enter_async_context(
                open_stream(server.base_url, f"/events/spread-{index % 3}")
            )
        # Each worker shares what it has every SHARE_SECONDS: after two intervals every
        # snapshot counts every stream (before, a worker can be one publish behind).
        await asyncio.sleep(2 * SHARE_SECONDS)
        settled = await wait_for(
            lambda: admin_metrics(server),
            lambda d: d["total"]["connections"] == STREAMS and d["total"]["workers"] == 2,
        )
        per_worker = {w["worker"]: w["connections"] for w in settled["workers"]}
        assert len(per_worker) == 2
        assert all(count > 0 for count in per_worker.values()), f"one worker took all: {per_worker}"
        assert {w["pid"] for w in settled["workers"]} == worker_pids(server.logs())
        kind = "redis" if backplane["BROKER_URL"].startswith("redis") else "files"
        assert settled["exchange"] == {"kind": kind, "state": "ok"}

        answered: Counter[str] = Counter()
        for _ in range(MAX_SCRAPES):
            document = await admin_metrics(server)
            answered[document["worker"]] += 1
            assert {w["worker"]: w["connections"] for w in document["workers"]} == per_worker
            assert document["total"]["connections"] == STREAMS
            assert document["total"]["workers"] == 2
            assert document["sse"]["connections"] == per_worker[document["worker"]]

            values = samples((await fetch(server, "/metrics")).text)
            assert values["herald_workers"] == 2
            exposed = {
                worker: values[f'herald_sse_connections{{worker="{worker}"}}']
                for worker in per_worker
            }
            assert exposed == per_worker
            assert sum(v for k, v in values.items() if k.startswith("herald_sse_connections{")) == (
                STREAMS
            )
            if len(answered) == 2 and min(answered.values()) >= ANSWERS_PER_WORKER:
                break
        assert set(answered) == set(per_worker), f"every scrape landed on one worker: {answered}"

    if kind == "files":
        directory = stats_directory(server.logs())
        assert listing(directory) == sorted(
            f"{worker.replace(':', '_')}.json" for worker in per_worker
        )
    assert await asyncio.to_thread(server.stop) == 0, server.logs()
    if kind == "files":
        assert listing(directory) is None, "the master removes the directory on exit"
    else:
        client = redis.Redis.from_url(backplane["BROKER_URL"])
        try:
            assert client.keys(f"{backplane['REDIS_KEY_PREFIX']}:workers*") == []
        finally:
            client.close()


async def test_a_killed_worker_drops_out_and_its_successor_joins(
    servers: list[ServerProcess],
) -> None:
    server = gunicorn(sharing_env())
    servers.append(server)
    first = await wait_for(lambda: admin_metrics(server), lambda d: d["total"]["workers"] == 2)
    victim = first["workers"][0]
    os.kill(victim["pid"], signal.SIGKILL)  # no shutdown: its snapshot is left behind
    killed_at = time.monotonic()

    def replaced(document: dict[str, Any]) -> bool:
        booted = worker_pids(server.logs())
        reported = {w["pid"] for w in document["workers"]}
        return len(booted) == 3 and reported == booted - {victim["pid"]}

    successor = await wait_for(lambda: admin_metrics(server), replaced, timeout=15)
    # Gone within its TTL (three intervals) plus a publish of the worker that replaced it.
    assert time.monotonic() - killed_at < 3 * SHARE_SECONDS + 2
    assert successor["total"]["workers"] == 2
    assert len(worker_pids(server.logs())) == 3
    directory = stats_directory(server.logs())
    assert f"{victim['worker'].replace(':', '_')}.json" not in (listing(directory) or [])


async def test_a_stats_directory_given_by_hand_is_used_and_kept(
    servers: list[ServerProcess], tmp_path: Path
) -> None:
    server = gunicorn(sharing_env(HERALD_STATS_DIR=str(tmp_path)))
    servers.append(server)
    assert stats_directory(server.logs()) == tmp_path
    await wait_for(lambda: admin_metrics(server), lambda d: d["total"]["workers"] == 2)
    assert len(listing(tmp_path) or []) == 2
    assert await asyncio.to_thread(server.stop) == 0, server.logs()
    assert listing(tmp_path) == []  # kept, and each worker removed its own snapshot


# --- permanent faults stop the deployment, transient ones never do --------------------


def test_a_bad_broker_url_stops_gunicorn_at_once_with_its_message() -> None:
    """Regression: each worker exited with 1 on `unsupported broker scheme` and gunicorn
    respawned them forever. Settings are checked in the master, before any worker forks."""
    server = ServerProcess({**FAST_TIMERS, "BROKER_URL": "kafka://broker:9092"})
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "gunicorn", "app.main:app", "--bind", f"127.0.0.1:{server.port}"],
        cwd=REPO_ROOT,
        env=server.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert time.monotonic() - started < 15
    output = result.stdout + result.stderr
    assert output.count("unsupported broker scheme") == 1, output
    assert "Booting worker" not in output


async def test_redis_down_while_workers_recycle_then_back_delivery_resumes(
    servers: list[ServerProcess],
) -> None:
    """Regression: a worker recycled while Redis was away could not connect, exited with the
    boot-error code, and gunicorn shut the whole server down."""
    redis_server = RedisServer(persistent=True).start()
    try:
        server = gunicorn(
            {"BROKER_URL": redis_server.url, "WEB_CONCURRENCY": "2"},
            "--max-requests",
            "4",
            "--max-requests-jitter",
            "0",
        )
        servers.append(server)
        redis_server.kill()
        async with httpx.AsyncClient(base_url=server.base_url, timeout=5) as client:
            # Every request counts: both workers recycle, and their successors boot
            # while Redis is still away.
            deadline = time.monotonic() + 30
            while len(worker_pids(server.logs())) < 6:
                assert time.monotonic() < deadline, server.logs()
                with contextlib.suppress(httpx.HTTPError):
                    await client.get("/health")
                await asyncio.sleep(0.05)
            assert server.process is not None and server.process.poll() is None, server.logs()
            redis_server.start()
            async with open_stream(server.base_url, "/events/recovered") as stream:
                await stream.position(timeout=20)
                published = await client.post("/events/recovered", json={"data": "back"})
                assert published.status_code == 202
                (event,) = await stream.events(1, timeout=10)
        assert event.id == published.json()["id"]
        assert server.process.poll() is None
        assert "Worker failed to boot" not in server.logs()
    finally:
        redis_server.close()


async def test_an_event_published_right_after_a_stream_opens_always_reaches_it(
    servers: list[ServerProcess], redis_server: RedisServer
) -> None:
    """Subscribe, then publish: once a client holds its opening frames, every event
    published afterwards reaches it, whichever worker takes the publish — with no window
    between a worker registering a new channel and its reader watching it."""
    server = gunicorn(
        {"BROKER_URL": redis_server.url, "REDIS_KEY_PREFIX": "subpub", "WEB_CONCURRENCY": "2"}
    )
    servers.append(server)
    rounds = 30
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as client:
        for i in range(rounds):
            channel = f"fresh-{i}"  # new to both workers: no reader has seen it yet
            async with open_stream(server.base_url, f"/events/{channel}") as stream:
                await stream.position()
                # A new connection each time, so the kernel spreads them over the workers.
                async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as other:
                    published = await other.post(f"/events/{channel}", json={"data": i})
                assert published.status_code == 202
                (event,) = await stream.events(1, timeout=10)
            assert event.id == published.json()["id"], f"round {i}"
        assert (await client.get("/health")).status_code == 200
    assert len(stream_pids(server.logs())) == 2, "both workers served streams"
