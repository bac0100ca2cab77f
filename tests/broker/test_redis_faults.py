"""The Redis backplane failing under a real Herald process: at start-up and while streaming."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import httpx
import pytest

from tests.support.redis_server import REDIS_SERVER, RedisServer
from tests.support.server import REPO_ROOT, ServerProcess, free_port
from tests.support.sse_client import open_stream

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed"),
]


@pytest.fixture
def persistent_redis() -> Iterator[RedisServer]:
    """A Redis of its own (tests kill it), with an append-only file so a restart keeps history."""
    server = RedisServer(persistent=True).start()
    yield server
    server.close()


def test_unreachable_redis_at_startup_exits_with_a_clear_error() -> None:
    port = free_port()  # nothing listens there
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "app"],
        cwd=REPO_ROOT,
        env={
            "PATH": "/usr/bin:/bin",
            "PORT": str(free_port()),
            "BROKER_URL": f"redis://:hunter2@127.0.0.1:{port}/0",
        },
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode != 0
    assert time.monotonic() - started < 15
    output = result.stdout + result.stderr
    assert f"cannot reach Redis at redis://:***@127.0.0.1:{port}/0" in output
    assert "hunter2" not in output


async def publish(client: httpx.AsyncClient, data: object) -> httpx.Response:
    return await client.post("/events/faults", json={"data": data})


async def test_redis_lost_and_back_loses_nothing_within_history(
    server_factory: Callable[..., ServerProcess], persistent_redis: RedisServer
) -> None:
    server = server_factory(BROKER_URL=persistent_redis.url)
    async with (
        httpx.AsyncClient(base_url=server.base_url, timeout=10) as client,
        open_stream(server.base_url, "/events/faults") as stream,
    ):
        await asyncio.sleep(0.3)
        before = [(await publish(client, i)).json()["id"] for i in range(5)]
        assert [m.id for m in await stream.events(5)] == before

        persistent_redis.kill()
        refused = await publish(client, "lost?")
        assert refused.status_code == 503
        assert "unavailable" in refused.json()["detail"]
        assert refused.headers["retry-after"].isdigit()
        health = (await client.get("/health")).json()
        assert health["broker"]["state"] == "down"
        await asyncio.sleep(1.0)
        assert not stream.ended, "open streams stay open while Redis is away"

        persistent_redis.start()  # same port, same append-only file
        after: list[str] = []
        for i in range(5, 10):
            for _ in range(100):  # the command connection reconnects on its own
                response = await publish(client, i)
                if response.status_code == 202:
                    after.append(response.json()["id"])
                    break
                await asyncio.sleep(0.1)
        got = await stream.events(5, timeout=15)
    assert [m.id for m in got] == after
    assert [m.data for m in got] == [str(i) for i in range(5, 10)]
    await asyncio.sleep(0.2)
    assert "redis reader reconnected" in server.logs()


async def test_events_published_while_the_reader_is_away_arrive_after_it_returns(
    server_factory: Callable[..., ServerProcess], persistent_redis: RedisServer
) -> None:
    """Another instance publishes right after Redis returns, before this reader reconnects:
    the reader resumes from its last id, so those events still arrive, once and in order."""
    import redis

    server = server_factory(BROKER_URL=persistent_redis.url, REDIS_KEY_PREFIX="herald")
    async with open_stream(server.base_url, "/events/faults") as stream:
        await asyncio.sleep(0.3)
        persistent_redis.kill()
        await asyncio.sleep(0.5)
        persistent_redis.start()
        other_instance = redis.Redis(port=persistent_redis.port)
        ids = [
            other_instance.xadd("herald:{faults}", {"b": f"data: {i}\n".encode()}).decode()
            for i in range(3)
        ]
        other_instance.close()
        got = await stream.events(3, timeout=15)
    assert [m.id for m in got] == ids
    assert [m.data for m in got] == ["0", "1", "2"]
