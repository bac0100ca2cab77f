"""Gunicorn workers stopped while publishes are inside them: every call still gets its answer,
and a subscriber that resumes as a browser does sees every event exactly once.

To stop workers *mid-request* on cue, Herald reaches Redis through a valve that holds
Redis's replies: the workers read the requests and send their publishes, Redis runs them (the
test sees the events in Redis itself), and no worker has an answer yet. Then the workers are
stopped and the valve opened:

* recycled (SIGTERM, what max-requests and a reload do): a worker finishes the requests it
  holds, answers them, and exits;
* killed (SIGKILL, what the OOM killer does): the connections drop unanswered although the
  events are published. The client sends each call again with its key; only Herald's
  idempotency makes that exactly once.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis.asyncio as aioredis
from herald_client import AsyncHeraldPublisher, HeraldPublisher, RetryPolicy

from tests.client.reply_valve import ReplyValve
from tests.client.subscriber import ResumingSubscriber
from tests.client.transports import AsyncRecordingTransport, RecordingTransport
from tests.serving.test_gunicorn import gunicorn
from tests.support.redis_server import REDIS_SERVER, RedisServer
from tests.support.tcp_memory import SS
from tests.support.waiting import wait_until

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(REDIS_SERVER is None or SS is None, reason="needs redis-server and ss"),
]

# Long enough for a call to outlive a worker's respawn; short waits, since Herald's 503s
# (Retry-After: 5) last only until the new workers reach Redis.
PATIENT = RetryPolicy(
    max_attempts=100, deadline=60, backoff_base=0.05, backoff_max=0.5, retry_after_max=0.5
)
WARM_UP_CALLS = 20
ASYNC_CALLS = 6
SYNC_CALLS = 2
_BYTES_SENT = re.compile(r"\bbytes_sent:(\d+)")
_BYTES_RECEIVED = re.compile(r"\bbytes_received:(\d+)")


def state(pid: int) -> str:
    """A process's state letter (``T`` stopped, ``Z`` zombie); ``X`` once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return "X"
    return stat.rpartition(")")[2].split()[0]


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rpartition(")")[2].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def requests_awaiting_answers(port: int) -> int:
    """Connections to ``port`` whose request a worker has read and not yet answered: the
    server's end has received bytes, holds none unread, and has sent nothing back."""
    assert SS is not None
    listing = subprocess.run(
        [SS, "-tinH", "state", "established", f"( sport = :{port} )"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    waiting = 0
    for head, info in zip(*[iter(listing.splitlines())] * 2, strict=True):
        unread = int(head.split()[0])
        received = _BYTES_RECEIVED.search(info)
        sent = _BYTES_SENT.search(info)
        if unread == 0 and received and not sent:
            waiting += 1
    return waiting


@pytest.fixture
def redis() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.close()


@pytest.mark.parametrize(
    "stop",
    [
        pytest.param(signal.SIGTERM, id="recycled"),
        pytest.param(signal.SIGKILL, id="killed"),
    ],
)
async def test_workers_stopped_mid_request_lose_and_repeat_nothing(
    redis: RedisServer, stop: signal.Signals
) -> None:
    channel = "client/workers"
    transport, sync_transport = AsyncRecordingTransport(), RecordingTransport()
    sync_http = httpx.Client(transport=sync_transport)
    direct = aioredis.Redis(port=redis.port)
    async with ReplyValve(redis.port) as valve:
        env = {"BROKER_URL": valve.url, "REDIS_KEY_PREFIX": "client", "WEB_CONCURRENCY": "2"}
        # In a thread: the valve serves the booting workers from this event loop.
        server = await asyncio.to_thread(gunicorn, env, "--graceful-timeout", "20")
        assert server.process is not None
        sync_herald = HeraldPublisher(server.base_url, retry=PATIENT, http_client=sync_http)
        try:
            async with (
                ResumingSubscriber(server.base_url, f"/events/{channel}") as subscriber,
                httpx.AsyncClient(transport=transport) as http,
                AsyncHeraldPublisher(server.base_url, retry=PATIENT, http_client=http) as herald,
            ):
                await wait_until(lambda: bool(subscriber.last_event_id), what="the stream")
                # Concurrent, so every worker's Redis pool holds idle connections to publish on.
                async with AsyncHeraldPublisher(server.base_url) as warm_up:
                    before = await asyncio.gather(
                        *(warm_up.publish(channel, f"before-{i}") for i in range(WARM_UP_CALLS))
                    )

                valve.hold()
                calls = [
                    *(herald.publish(channel, f"async-{i}") for i in range(ASYNC_CALLS)),
                    *(
                        asyncio.to_thread(sync_herald.publish, channel, f"sync-{i}")
                        for i in range(SYNC_CALLS)
                    ),
                ]
                results = asyncio.gather(*calls)

                async def published_and_unanswered() -> bool:
                    in_redis = await direct.xlen(f"client:{{{channel}}}") > WARM_UP_CALLS
                    return in_redis and requests_awaiting_answers(server.port) == len(calls)

                await wait_until(published_and_unanswered, what="publishes run, not answered")
                workers = children(server.process.pid)
                assert len(workers) == 2
                for pid in workers:
                    os.kill(pid, stop)
                if stop == signal.SIGKILL:  # dead before any answer reaches them
                    await wait_until(lambda: all(state(pid) in "ZX" for pid in workers))
                valve.release()

                published = await asyncio.wait_for(results, timeout=90)
                await wait_until(lambda: subscriber.opens >= 2, what="a resume on a new worker")
                after = (await herald.publish(channel, "after")).id
                await wait_until(lambda: "after" in subscriber.data, timeout=30, what="the end")
        finally:
            sync_http.close()  # noqa: ASYNC212 - its calls are over; closing a pool does not block
            await direct.aclose()
            await asyncio.to_thread(server.close)

    expected = [f"before-{i}" for i in range(WARM_UP_CALLS)]
    expected += [f"async-{i}" for i in range(ASYNC_CALLS)] + [
        f"sync-{i}" for i in range(SYNC_CALLS)
    ]
    counts = Counter(subscriber.data)
    assert {data: counts[data] for data in [*expected, "after"]} == dict.fromkeys(
        [*expected, "after"], 1
    ), f"each event once: {counts}"
    assert sorted(message.id for message in subscriber.events) == sorted(
        [*(result.id for result in [*before, *published]), after]
    )
    if stop == signal.SIGKILL:
        assert any(result.attempts > 1 for result in published)
        assert any(result.replayed for result in published), "no answer was lost"
    else:
        assert all(result.attempts == 1 for result in published), "recycling cut a request"
