"""The Redis backplane failing under a real Herald process: at start-up and while streaming."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import httpx
import pytest

from app.broker.redis import RedisBroker
from tests.support.publishing import publish_one
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


async def test_a_server_started_without_redis_serves_degraded_and_recovers_by_itself(
    server_factory: Callable[..., ServerProcess],
) -> None:
    redis_later = RedisServer(persistent=True)  # its port is free: nothing listens yet
    server = server_factory(healthy=False, BROKER_URL=redis_later.url)
    try:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as client:
            health = await client.get("/health")
            assert health.status_code == 503
            assert health.json()["broker"]["state"] == "down"
            assert "broker" in health.json()["detail"]
            refused = await publish(client, "too early")
            assert refused.status_code == 503
            assert refused.headers["retry-after"].isdigit()
            async with open_stream(server.base_url, "/events/faults") as stream:
                # The stream opens and waits (heartbeats) instead of failing.
                await stream.wait_for_comment(timeout=5)
                assert stream.parser.retry == 3000 and not stream.parser.last_event_id
                redis_later.start()
                position = await stream.position(timeout=15)
                published = await publish(client, "first")
                assert published.status_code == 202
                (event,) = await stream.events(1, timeout=10)
            assert event.id == published.json()["id"] and event.data == "first"
            assert (await client.get("/health")).status_code == 200
            assert position < event.id
    finally:
        redis_later.close()
    assert "serving degraded until it is back" in server.logs()
    assert "redis reader reconnected" in server.logs()


def test_an_unreachable_redis_is_logged_without_its_password(
    server_factory: Callable[..., ServerProcess],
) -> None:
    port = free_port()  # nothing listens there
    server = server_factory(healthy=False, BROKER_URL=f"redis://:hunter2@127.0.0.1:{port}/0")
    assert httpx.get(server.base_url + "/health").json()["broker"]["state"] == "down"
    assert f"redis unreachable at redis://:***@127.0.0.1:{port}/0" in server.logs()
    assert "hunter2" not in server.logs()


def test_a_bad_broker_url_stops_at_once_with_its_message() -> None:
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "app"],
        cwd=REPO_ROOT,
        env={"PATH": "/usr/bin:/bin", "PORT": str(free_port()), "BROKER_URL": "kafka://x:1"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode != 0
    assert time.monotonic() - started < 15
    assert "BROKER_URL: " in result.stderr and "unsupported broker scheme" in result.stderr


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
    the reader resumes from its place in the log, so those events still arrive, once and in
    order."""
    server = server_factory(BROKER_URL=persistent_redis.url, REDIS_KEY_PREFIX="herald")
    other_instance = RedisBroker(
        persistent_redis.url, history_size=100, channel_ttl_seconds=60, key_prefix="herald"
    )
    async with open_stream(server.base_url, "/events/faults") as stream:
        await stream.position()
        persistent_redis.kill()
        await asyncio.sleep(0.5)
        persistent_redis.start()
        await other_instance.connect(lambda event: None)
        try:
            ids = [
                (await publish_one(other_instance, "faults", f"data: {i}\n".encode())).id
                for i in range(3)
            ]
        finally:
            await other_instance.disconnect()
        got = await stream.events(3, timeout=15)
    assert [m.id for m in got] == ids
    assert [m.data for m in got] == ["0", "1", "2"]


async def test_a_resume_while_redis_is_down_waits_then_replays_exactly_without_reset(
    server_factory: Callable[..., ServerProcess], persistent_redis: RedisServer
) -> None:
    server = server_factory(BROKER_URL=persistent_redis.url)
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as client:
        ids = [(await publish(client, i)).json()["id"] for i in range(4)]
        persistent_redis.kill()
        resume = {"Last-Event-ID": ids[1]}
        async with open_stream(server.base_url, "/events/faults", headers=resume) as stream:
            await stream.wait_for_comment(timeout=5)  # open, waiting, heartbeats
            await asyncio.sleep(0.5)
            persistent_redis.start()
            replayed = await stream.events(2, timeout=15)
            assert [m.id for m in replayed] == ids[2:]
            for _ in range(100):
                live = await publish(client, "live")
                if live.status_code == 202:
                    break
                await asyncio.sleep(0.1)
            (event,) = await stream.events(1, timeout=10)
        assert event.id == live.json()["id"]
        assert all(m.event != "reset" for m in [*replayed, event])


async def test_a_resume_that_outwaits_the_broker_ends_without_reset(
    server_factory: Callable[..., ServerProcess], persistent_redis: RedisServer
) -> None:
    server = server_factory(BROKER_URL=persistent_redis.url, SSE_REPLAY_WAIT_SECONDS="1")
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as client:
        last = (await publish(client, "seen")).json()["id"]
    persistent_redis.kill()
    async with open_stream(server.base_url, "/events/faults", {"Last-Event-ID": last}) as stream:
        started = time.monotonic()
        rest = await stream.until_closed(timeout=10)
    assert 0.8 < time.monotonic() - started < 8
    assert rest == []  # no reset, no event: the client retries with the same id
    assert stream.parser.last_event_id == ""
