"""Detached streams against real servers: once live, a stream served by Herald's httptools
protocol holds no task — no request task, no disconnect watcher — and everything a stream
does still happens: events, heartbeats, a client that leaves, a paused socket that drains,
every close the hub makes, graceful shutdown; under plain uvicorn the ASGI path stays.

The count of asyncio tasks in the worker (``process.tasks`` of the admin metrics) is what
tells a detached stream from one on the ASGI path, which holds two."""

from __future__ import annotations

import signal
import sys
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import urlencode

import pytest

from tests.conftest import FAST_TIMERS
from tests.leak.raw_http import KeepAliveClient, SseSocket, open_sse
from tests.mercure.tokens import MERCURE_ENV, detail, token
from tests.serving.test_gunicorn import gunicorn
from tests.sse.test_stream_socket import ends_with_reset
from tests.support.server import ServerProcess
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration

HOST = "127.0.0.1"
ADMIN_TOKEN = "detached-admin-token"
KB = 1024
STREAMS = 12
PUBLISH_TOKEN = "detached-publish-token"
ENV = {"ADMIN_TOKEN": ADMIN_TOKEN, "PUBLISH_TOKEN": PUBLISH_TOKEN, "SSE_RETRY_MS": "400"}


class Admin:
    """The worker's open streams and asyncio tasks, from its admin metrics."""

    def __init__(self, server: ServerProcess) -> None:
        self.client = KeepAliveClient(
            HOST, server.port, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
        )
        self.publisher = KeepAliveClient(
            HOST, server.port, headers={"Authorization": f"Bearer {PUBLISH_TOKEN}"}
        )

    async def metrics(self) -> dict[str, Any]:
        document: dict[str, Any] = await self.client.get_json("/api/admin/metrics")
        return document

    async def streams(self) -> int:
        return int((await self.metrics())["sse"]["connections"])

    async def tasks(self) -> int:
        return int((await self.metrics())["process"]["tasks"])

    async def publish(self, channel: str, data: str) -> None:
        answer = await self.publisher.post_json(f"/events/{channel}", {"data": data})
        assert answer.status == 202, answer.body

    async def aclose(self) -> None:
        await self.client.aclose()
        await self.publisher.aclose()


@pytest.fixture
async def admin_of() -> AsyncIterator[Callable[[ServerProcess], Admin]]:
    made: list[Admin] = []

    def make(server: ServerProcess) -> Admin:
        admin = Admin(server)
        made.append(admin)
        return admin

    yield make
    for admin in made:
        await admin.aclose()


async def open_many(server: ServerProcess, path: str, count: int, **kwargs: Any) -> list[SseSocket]:
    streams = [await open_sse(HOST, server.port, path, **kwargs) for _ in range(count)]
    assert all(stream.status == 200 for stream in streams)
    return streams


async def data_of(stream: SseSocket, count: int) -> list[str]:
    """The data of the next ``count`` events (heartbeats and positions skipped)."""
    got: list[str] = []
    already = stream.parser.feed(stream.body.feed(bytes(stream.received)))
    stream.received.clear()
    got += [message.data for message in already if message.data]
    while len(got) < count:
        got += [message.data for message in await stream.next_messages() if message.data]
    return got


async def test_live_streams_hold_no_task_and_get_events_and_heartbeats(
    server_factory: Callable[..., ServerProcess], admin_of: Callable[[ServerProcess], Admin]
) -> None:
    server = server_factory(**ENV)
    admin = admin_of(server)
    idle_tasks = await admin.tasks()
    streams = await open_many(server, "/events/detached", STREAMS)
    try:
        await wait_until(lambda: _equals(admin.streams, STREAMS), what="the streams registered")
        # Each stream on the ASGI path would add its request task and its watcher.
        await wait_until(lambda: _equals(admin.tasks, idle_tasks), what="no task per stream")
        await admin.publish("detached", "one")
        await admin.publish("detached", "two")
        for stream in streams:
            assert await data_of(stream, 2) == ["one", "two"]
        # Heartbeats every SSE_PING_SECONDS (0.3 s) to a quiet stream, written by the hub.
        for stream in streams:
            await stream.read_until(b": ping")
        assert await admin.tasks() == idle_tasks
    finally:
        for stream in streams:
            stream.reset()


async def test_a_client_that_leaves_is_noticed_without_a_task(
    server_factory: Callable[..., ServerProcess], admin_of: Callable[[ServerProcess], Admin]
) -> None:
    server = server_factory(**ENV)
    admin = admin_of(server)
    idle_tasks = await admin.tasks()
    closed, half_closed, reset = await open_many(server, "/events/leaving", 3)
    await wait_until(lambda: _equals(admin.tasks, idle_tasks), what="no task per stream")
    assert await admin.streams() == 3
    await closed.close()  # FIN, as a closed browser tab
    await wait_until(lambda: _equals(admin.streams, 2), what="the closed client noticed")
    half_closed.writer.write_eof()  # EOF while still reading
    await wait_until(lambda: _equals(admin.streams, 1), what="the half-closed client noticed")
    reset.reset()
    await wait_until(lambda: _equals(admin.streams, 0), what="the reset client noticed")
    assert server.logs().count("stream closed: reason=client_gone") == 3
    half_closed.reset()


async def test_a_paused_stream_resumes_in_order_without_loss_or_task(
    server_factory: Callable[..., ServerProcess], admin_of: Callable[[ServerProcess], Admin]
) -> None:
    server = server_factory(
        **ENV,
        SSE_TRANSPORT_BUFFER_KB="8",
        SSE_SOCKET_SEND_BUFFER_KB="8",
        SSE_QUEUE_SIZE="1000",
        SSE_PING_SECONDS="30",
    )
    admin = admin_of(server)
    idle_tasks = await admin.tasks()
    stream = await open_sse(HOST, server.port, "/events/paused", receive_buffer=4 * KB)
    try:
        await wait_until(lambda: _equals(admin.tasks, idle_tasks), what="the stream detached")
        sent = [f"{n:04d}" + "x" * 1000 for n in range(300)]  # ~300 KB: far past the buffers
        for data in sent:
            await admin.publish("paused", data)
        # Not read yet: the socket and the transport are full and the rest is queued.
        assert (await admin.metrics())["sse"]["queued"] > 0
        assert await admin.tasks() == idle_tasks
        assert await data_of(stream, len(sent)) == sent
        assert (await admin.metrics())["sse"]["queued"] == 0
        assert await admin.tasks() == idle_tasks
    finally:
        stream.reset()


async def test_closes_of_detached_streams_end_as_before(
    server_factory: Callable[..., ServerProcess], admin_of: Callable[[ServerProcess], Admin]
) -> None:
    server = server_factory(
        **ENV,
        SSE_QUEUE_SIZE="5",
        SSE_IDLE_TIMEOUT_SECONDS="2",
        SSE_TRANSPORT_BUFFER_KB="8",
        SSE_SOCKET_SEND_BUFFER_KB="8",
    )
    admin = admin_of(server)
    idle_tasks = await admin.tasks()
    operator = await open_sse(HOST, server.port, "/events/operator")
    overflowing = await open_sse(HOST, server.port, "/events/overflow", receive_buffer=4 * KB)
    idle = await open_sse(HOST, server.port, "/events/idle", receive_buffer=4 * KB)
    try:
        await wait_until(lambda: _equals(admin.tasks, idle_tasks), what="every stream detached")
        # An operator's close: the farewell retry: and the body's last chunk, no reset.
        answer = await admin.client.post_json(
            "/api/admin/streams/close", {"channel": "operator", "retry_ms": 7777}
        )
        assert answer.status == 200, answer.body
        messages = []
        with pytest.raises(EOFError):
            while True:
                messages += await operator.next_messages()
        assert not operator.reset_by_server and operator.body.finished  # type: ignore[union-attr]
        assert operator.parser.retry is not None and 7777 <= operator.parser.retry < 2 * 7777
        # Overflow: a reader that stopped, more events than its queue and buffers hold.
        for n in range(200):
            await admin.publish("overflow", f"{n}" + "x" * 1000)
        await wait_until(lambda: "reason=overflow" in server.logs(), what="the overflow close")
        assert await ends_with_reset(overflowing)
        # Idle: no event for SSE_IDLE_TIMEOUT_SECONDS, the reaper resets it.
        await wait_until(lambda: "reason=idle" in server.logs(), what="the idle close")
        assert await ends_with_reset(idle)
        await wait_until(lambda: _equals(admin.streams, 0), what="every stream unregistered")
    finally:
        for stream in (operator, overflowing, idle):
            stream.reset()


@pytest.mark.parametrize("serve", ["python -m app", "gunicorn worker"])
async def test_shutdown_ends_detached_streams_with_a_jittered_retry_and_exits(
    server_factory: Callable[..., ServerProcess],
    admin_of: Callable[[ServerProcess], Admin],
    serve: str,
) -> None:
    if serve == "python -m app":
        server = server_factory(**ENV)
    else:
        server = gunicorn(ENV | {"WEB_CONCURRENCY": "1"})
    streams: list[SseSocket] = []
    try:
        admin = admin_of(server)
        idle_tasks = await admin.tasks()
        streams = await open_many(server, "/events/shutdown", 5)
        await wait_until(lambda: _equals(admin.tasks, idle_tasks), what="every stream detached")
        await admin.aclose()
        server.signal(signal.SIGTERM)
        for stream in streams:
            with pytest.raises(EOFError):
                while True:
                    await stream.next_messages()
            assert not stream.reset_by_server and stream.body.finished  # type: ignore[union-attr]
            assert stream.parser.retry is not None and 400 <= stream.parser.retry <= 800
        assert server.process is not None
        await wait_until(lambda: server.process.poll() is not None, what="the server's exit")  # type: ignore[union-attr]
    finally:
        for stream in streams:
            stream.reset()
        server.close()


async def test_max_requests_recycles_a_worker_holding_detached_streams(
    admin_of: Callable[[ServerProcess], Admin],
) -> None:
    server = gunicorn(
        ENV | {"WEB_CONCURRENCY": "1"}, "--max-requests", "8", "--max-requests-jitter", "0"
    )
    streams: list[SseSocket] = []
    try:
        admin = admin_of(server)
        idle_tasks = await admin.tasks()
        first_worker = (await admin.metrics())["worker"]
        streams = await open_many(server, "/events/recycle", 3)
        # Live once its position arrived, and detached before it was sent on. Polling the
        # task count would itself be requests toward max-requests: one look.
        for stream in streams:
            await stream.read_until(b"id: ")
        assert await admin.tasks() == idle_tasks
        for _ in range(8):  # past max-requests: the worker drains
            await admin.metrics()
        for stream in streams:
            with pytest.raises(EOFError):
                while True:
                    await stream.next_messages()
            assert stream.parser.retry is not None and stream.parser.retry >= 400

        async def replaced() -> bool:
            try:
                return bool((await admin.metrics())["worker"] != first_worker)
            except (OSError, EOFError, AssertionError):  # the old worker going, the new starting
                return False

        await wait_until(replaced, timeout=20, what="a fresh worker in the old one's place")
    finally:
        for stream in streams:
            stream.reset()
        server.close()


async def test_plain_uvicorn_keeps_the_asgi_path(
    admin_of: Callable[[ServerProcess], Admin],
) -> None:
    server = ServerProcess({**FAST_TIMERS, **ENV})
    server.argv = [
        *("nice", "-n", "0", sys.executable, "-m", "uvicorn", "app.main:app"),
        *("--host", HOST, "--port", str(server.port)),
    ]
    server.start()
    try:
        admin = admin_of(server)
        idle_tasks = await admin.tasks()
        streams = await open_many(server, "/events/plain", 3)
        # The ASGI path: each stream keeps its request task and its disconnect watcher.
        await wait_until(
            lambda: _equals(admin.tasks, idle_tasks + 2 * len(streams)), what="two tasks each"
        )
        await admin.publish("plain", "still streams")
        for stream in streams:
            assert await data_of(stream, 1) == ["still streams"]
            await stream.read_until(b": ping")
        for stream in streams:
            await stream.close()
        await wait_until(lambda: _equals(admin.streams, 0), what="the clients noticed")
    finally:
        server.close()


async def test_mercure_subscriptions_detach_and_end_with_their_inactive_state(
    server_factory: Callable[..., ServerProcess], admin_of: Callable[[ServerProcess], Admin]
) -> None:
    server = server_factory(**ENV, **MERCURE_ENV)
    admin = admin_of(server)
    idle_tasks = await admin.tasks()
    topic = "https://example.com/books/1"
    watcher = token(detail(["subscribe"], "/.well-known/mercure/subscriptions"))
    listing = KeepAliveClient(HOST, server.port, headers={"Authorization": f"Bearer {watcher}"})
    streams = await open_many(server, "/.well-known/mercure?" + urlencode({"match": topic}), 3)
    try:
        await wait_until(lambda: _equals(admin.tasks, idle_tasks), what="no task per subscription")
        await admin.publish(topic, "hello")
        for stream in streams:
            assert await data_of(stream, 1) == ["hello"]

        async def listed() -> int:
            document = await listing.get_json("/.well-known/mercure/subscriptions")
            return len(document["subscriptions"])

        assert await listed() == 3
        for stream in streams:
            await stream.close()
        await wait_until(lambda: _equals(admin.streams, 0), what="the subscribers' leaving")
        # Their ending ran once they ended: removed from the subscription API's list.
        await wait_until(lambda: _equals(listed, 0), what="the subscriptions removed")
    finally:
        await listing.aclose()
        for stream in streams:
            stream.reset()


async def _equals(read: Callable[[], Any], expected: int) -> bool:
    return bool(await read() == expected)
