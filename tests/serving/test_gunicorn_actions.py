"""Operator actions under real gunicorn with two workers, over the master's shared directory
(Unix sockets) and over a real Redis: every worker acts, the answer adds them up, and a
worker that cannot answer in time is named. One server per backplane (each start costs
seconds), so one test walks through every action."""

from __future__ import annotations

import asyncio
import os
import signal
from contextlib import AsyncExitStack
from typing import Any

import httpx
import pytest

from tests.serving.test_gunicorn import (
    AUTH,
    admin_metrics,
    backplane,
    gunicorn,
    servers,
    sharing_env,
    stats_directory,
    wait_for,
)
from tests.support.server import ServerProcess
from tests.support.sse_client import EventStream, open_stream

__all__ = ["backplane", "servers"]  # fixtures used here, defined there

pytestmark = pytest.mark.integration

STREAMS_PER_ROUND = 8
MAX_STREAMS = 64
RETRY_MS = 300
ACTION_TIMEOUT = "1"


async def act(server: ServerProcess, method: str, path: str, body: Any = None) -> dict[str, Any]:
    """One action on a connection of its own, so it may land on either worker."""
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as client:
        response = await client.request(method, path, json=body, headers=AUTH)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


async def healths(server: ServerProcess, count: int) -> list[dict[str, Any]]:
    answers = []
    async with httpx.AsyncClient(base_url=server.base_url, timeout=5) as client:
        for _ in range(count):
            client.headers["Connection"] = "close"  # each on a new connection: either worker
            answers.append((await client.get("/health")).json())
    return answers


async def test_every_worker_acts_and_the_answer_sums_them(
    servers: list[ServerProcess], backplane: dict[str, str]
) -> None:
    server = gunicorn(sharing_env(**backplane, ADMIN_ACTION_TIMEOUT_SECONDS=ACTION_TIMEOUT))
    servers.append(server)
    bus = "redis" if backplane["BROKER_URL"].startswith("redis") else "sockets"
    async with AsyncExitStack() as stack:
        kept = await stack.enter_async_context(open_stream(server.base_url, "/events/elsewhere"))
        # The kernel hands connections to whichever worker accepts first, which can be
        # the same one many times in a row: open streams until both workers hold some.
        streams: list[EventStream] = []
        per_worker: dict[str, int] = {}
        while len(streams) < MAX_STREAMS:
            for _ in range(STREAMS_PER_ROUND):
                stream = open_stream(server.base_url, "/events/everywhere")
                streams.append(await stack.enter_async_context(stream))
            settled = await wait_for(
                lambda: admin_metrics(server),
                lambda d: (
                    d["total"]["connections"] == len(streams) + 1 and d["total"]["workers"] == 2
                ),
            )
            per_worker = {w["worker"]: w["connections"] for w in settled["workers"]}
            if all(count > 1 for count in per_worker.values()):
                break
        assert all(count > 1 for count in per_worker.values()), per_worker

        closed = await act(
            server,
            "POST",
            "/api/admin/streams/close",
            {"channel": "everywhere", "retry_ms": RETRY_MS},
        )
        assert closed["bus"] == bus and closed["complete"] is True, closed
        assert closed["answered"] == 2 and closed["missing"] == [] and closed["failed"] == {}
        assert closed["total"] == {"closed": len(streams)}
        assert set(closed["workers"]) == set(per_worker)
        await asyncio.gather(*(stream.until_closed() for stream in streams))
        # Each worker closed exactly its own streams of that channel: what it held, but
        # the one stream of the other channel.
        after = await wait_for(
            lambda: admin_metrics(server), lambda d: d["total"]["connections"] == 1
        )
        left = {w["worker"]: w["connections"] for w in after["workers"]}
        assert {w: r["closed"] for w, r in closed["workers"].items()} == {
            w: per_worker[w] - left[w] for w in per_worker
        }
        assert all(RETRY_MS <= (s.parser.retry or 0) < 2 * RETRY_MS for s in streams)
        await asyncio.sleep(0.2)
        assert not kept.ended, "a stream of another channel was cut"

        cleaned = await act(server, "POST", "/api/admin/cleanup", {"level": "aggressive"})
        assert cleaned["answered"] == 2 and cleaned["complete"] is True
        workers = cleaned["workers"].values()
        assert cleaned["total"]["rss_before"] == sum(r["rss_before"] for r in workers)
        assert cleaned["total"]["freed_bytes"] == sum(r["freed_bytes"] for r in workers)

        drained = await act(server, "POST", "/api/admin/drain", {"retry_ms": RETRY_MS})
        assert drained["answered"] == 2 and drained["total"] == {"closed": 1, "started": 2}
        await kept.until_closed()
    try:
        assert all(h["drain"]["draining"] for h in await healths(server, 8))
    finally:
        undrained = await act(server, "DELETE", "/api/admin/drain")
    assert undrained["total"] == {"stopped": 2}
    assert not any(h["drain"]["draining"] for h in await healths(server, 8))

    # A worker alive and listed, but answering nothing, is named.
    frozen, awake = settled["workers"]
    os.kill(frozen["pid"], signal.SIGSTOP)
    try:
        answer = await act(server, "POST", "/api/admin/cache/clear")
    finally:
        os.kill(frozen["pid"], signal.SIGCONT)
    assert answer["missing"] == [frozen["worker"]]
    assert answer["complete"] is False and answer["answered"] == 1
    assert list(answer["workers"]) == [awake["worker"]]
    assert f"missing {frozen['worker']}" in server.logs()

    if bus == "sockets":  # each worker listens in the master's directory, and cleans up
        directory = stats_directory(server.logs())
        pids = {w["pid"] for w in settled["workers"]}
        assert {name for name in os.listdir(directory) if name.endswith(".sock")} == {
            f"{pid}.sock" for pid in pids
        }
        assert await asyncio.to_thread(server.stop) == 0, server.logs()
