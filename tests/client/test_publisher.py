"""The publishers against real Herald processes: what they publish is what subscribers get,
Herald's refusals come back as ``PublishRejected`` after one attempt, and a 503 is waited out
as its ``Retry-After`` says. Each runs on both publishers."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import pytest
from herald_client import (
    AsyncHeraldPublisher,
    BatchItem,
    HeraldPublisher,
    PublishRejected,
    RetryPolicy,
)

from tests.client.transports import AsyncRecordingTransport, Attempt, RecordingTransport
from tests.conftest import FAST_TIMERS
from tests.support.redis_server import REDIS_SERVER, RedisServer
from tests.support.server import ServerProcess
from tests.support.sse_client import open_stream
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration


class Publisher:
    """Either publisher behind one awaitable interface (the sync one runs in a thread), with
    every attempt recorded."""

    def __init__(self, kind: str, base_url: str, **options: Any) -> None:
        self.kind = kind
        if kind == "sync":
            self.transport: RecordingTransport | AsyncRecordingTransport = RecordingTransport()
            self._http: httpx.Client | httpx.AsyncClient = httpx.Client(transport=self.transport)
            self._sync = HeraldPublisher(base_url, http_client=self._http, **options)
        else:
            self.transport = AsyncRecordingTransport()
            self._http = httpx.AsyncClient(transport=self.transport)
            self._async = AsyncHeraldPublisher(base_url, http_client=self._http, **options)

    @property
    def attempts(self) -> list[Attempt]:
        return self.transport.attempts

    async def __call__(self, method: str, *args: Any, **kwargs: Any) -> Any:
        if self.kind == "sync":
            return await asyncio.to_thread(getattr(self._sync, method), *args, **kwargs)
        return await getattr(self._async, method)(*args, **kwargs)

    async def close(self) -> None:
        if isinstance(self._http, httpx.Client):
            self._sync.close()
            self._http.close()
        else:
            await self._async.aclose()
            await self._http.aclose()


MakePublisher = Callable[..., Publisher]


@pytest.fixture(params=["sync", "async"])
async def make_publisher(request: pytest.FixtureRequest) -> AsyncIterator[MakePublisher]:
    made: list[Publisher] = []

    def make(base_url: str, **options: Any) -> Publisher:
        made.append(Publisher(request.param, base_url, **options))
        return made[-1]

    yield make
    for publisher in made:
        await publisher.close()


async def test_single_publishes_reach_subscribers_as_published(
    herald: ServerProcess, make_publisher: MakePublisher
) -> None:
    publish = make_publisher(herald.base_url)
    channel = f"client/{publish.kind}/single"
    async with open_stream(herald.base_url, f"/events/{channel}") as stream:
        await stream.position()
        first = await publish("publish", channel, {"status": "shipped"}, event="order")
        second = await publish("publish", channel, "line one\nline two")
        got = await stream.events(2)
    assert [(m.id, m.event, m.data) for m in got] == [
        (first.id, "order", '{"status":"shipped"}'),
        (second.id, "message", "line one\nline two"),
    ]
    assert first.channels == (channel,) and first.subscribers == 1
    assert not first.replayed and first.attempts == 1
    assert [attempt.key for attempt in publish.attempts] == [
        first.idempotency_key,
        second.idempotency_key,
    ]


async def test_one_event_on_several_channels_reaches_a_stream_of_both_once(
    herald: ServerProcess, make_publisher: MakePublisher
) -> None:
    publish = make_publisher(herald.base_url)
    a, b = f"client/{publish.kind}/to-a", f"client/{publish.kind}/to-b"
    async with open_stream(herald.base_url, f"/events?channel={a}&channel={b}") as stream:
        await stream.position()
        result = await publish("publish_to", [a, b], {"n": 1})
        marker = await publish("publish", a, "marker")
        got = await stream.events(2)
    assert result.channels == (a, b)
    assert [(m.id, m.data) for m in got] == [(result.id, '{"n":1}'), (marker.id, "marker")]


async def test_a_batch_arrives_in_order_with_its_ids(
    herald: ServerProcess, make_publisher: MakePublisher
) -> None:
    publish = make_publisher(herald.base_url)
    a, b = f"client/{publish.kind}/batch-a", f"client/{publish.kind}/batch-b"
    items = [
        BatchItem(a, 0, event="tick"),
        BatchItem([a, b], "both"),
        BatchItem(b, {"last": True}),
    ]
    async with (
        open_stream(herald.base_url, f"/events/{a}") as on_a,
        open_stream(herald.base_url, f"/events/{b}") as on_b,
    ):
        await asyncio.gather(on_a.position(), on_b.position())
        result = await publish("publish_batch", items)
        got_a, got_b = await on_a.events(2), await on_b.events(2)
    assert len(result.ids) == 3 and result.attempts == 1 and not result.replayed
    assert [(m.id, m.event, m.data) for m in got_a] == [
        (result.ids[0], "tick", "0"),
        (result.ids[1], "message", "both"),
    ]
    assert [(m.id, m.data) for m in got_b] == [
        (result.ids[1], "both"),
        (result.ids[2], '{"last":true}'),
    ]


@pytest.fixture(scope="module")
def guarded(request: pytest.FixtureRequest) -> Iterator[ServerProcess]:
    """A server that wants a publish token and takes small events only."""
    server = ServerProcess(
        {**FAST_TIMERS, "PUBLISH_TOKEN": "client-tests-publish-token", "MAX_EVENT_BYTES": "1024"}
    ).start()
    yield server
    server.close()


@pytest.mark.parametrize(
    ("token", "channel", "data", "status", "detail"),
    [
        (None, "ok", 1, 401, "Bearer"),
        ("wrong", "ok", 1, 403, "token"),
        ("client-tests-publish-token", "bad name!", 1, 422, "channel"),
        ("client-tests-publish-token", "ok", "x" * 2000, 413, "MAX_EVENT_BYTES"),
        ("client-tests-publish-token", "ok", "carriage\rreturn", 422, "carriage return"),
    ],
)
async def test_herald_s_refusals_are_raised_after_one_attempt(
    guarded: ServerProcess,
    make_publisher: MakePublisher,
    token: str | None,
    channel: str,
    data: object,
    status: int,
    detail: str,
) -> None:
    publish = make_publisher(guarded.base_url, token=token)
    with pytest.raises(PublishRejected) as refusal:
        await publish("publish", channel, data)
    assert refusal.value.status == status
    assert detail.lower() in str(refusal.value.detail).lower()
    assert len(publish.attempts) == 1 and refusal.value.attempts == 1


@pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed")
async def test_a_503_is_waited_out_as_retry_after_says(
    server_factory: Callable[..., ServerProcess], make_publisher: MakePublisher
) -> None:
    """Herald's broker is down (503 with ``Retry-After``) when the call starts and comes
    back while the client waits: the call succeeds, each retry no sooner than asked."""
    redis_later = RedisServer()  # its port is free: nothing listens yet
    server = server_factory(healthy=False, BROKER_URL=redis_later.url)
    policy = RetryPolicy(max_attempts=10, deadline=60, retry_after_max=30, backoff_base=0.1)
    publish = make_publisher(server.base_url, retry=policy)
    try:
        async with open_stream(server.base_url, "/events/client/degraded") as stream:
            call = asyncio.create_task(publish("publish", "client/degraded", "made it"))
            await wait_until(lambda: any(a.status == 503 for a in publish.attempts), what="a 503")
            await asyncio.to_thread(redis_later.start)
            result = await asyncio.wait_for(call, timeout=60)
            message = await stream.next_event(timeout=15)
    finally:
        redis_later.close()
    assert (message.id, message.data) == (result.id, "made it")
    statuses = [attempt.status for attempt in publish.attempts]
    assert statuses[-1] == 202 and set(statuses[:-1]) == {503}
    assert result.attempts == len(statuses) >= 2
    assert {attempt.key for attempt in publish.attempts} == {result.idempotency_key}
    retry_after = 5  # what Herald asks for while its broker is away
    gaps = [b.sent_at - a.sent_at for a, b in itertools.pairwise(publish.attempts)]
    assert all(retry_after <= gap < retry_after + 2 for gap in gaps), gaps
