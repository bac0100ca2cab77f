"""A publish whose answer was lost after Herald published it: the client sends it again with
the same ``Idempotency-Key``, and Herald answers with the first answer instead of publishing
twice, so subscribers get the event once. The answer is lost by a transport that lets the
request through, reads Herald's answer and drops the connection instead of handing it over
(what a reset, a proxy's timeout or a recycled worker does to a client)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
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

from tests.client.transports import (
    AsyncRecordingTransport,
    RecordingTransport,
    cut_first,
    never,
)
from tests.support.server import ServerProcess
from tests.support.sse_client import EventStream, open_stream

pytestmark = pytest.mark.integration

QUICK = RetryPolicy(backoff_base=0.01, backoff_max=0.05)


class LossyPublisher:
    """A publisher (sync or async) whose first request's answer is lost."""

    def __init__(self, kind: str, base_url: str, cut: Callable[[int], bool]) -> None:
        self.kind = kind
        self.base_url = base_url
        self.sync_transport = RecordingTransport(cut)
        self.async_transport = AsyncRecordingTransport(cut)

    @property
    def keys(self) -> list[str | None]:
        transport = self.sync_transport if self.kind == "sync" else self.async_transport
        return transport.keys

    async def __call__(self, method: str, *args: Any, **kwargs: Any) -> Any:
        if self.kind == "sync":

            def call() -> Any:
                with (
                    httpx.Client(transport=self.sync_transport) as http,
                    HeraldPublisher(self.base_url, retry=QUICK, http_client=http) as herald,
                ):
                    return getattr(herald, method)(*args, **kwargs)

            return await asyncio.to_thread(call)
        async with (
            httpx.AsyncClient(transport=self.async_transport) as http,
            AsyncHeraldPublisher(self.base_url, retry=QUICK, http_client=http) as herald,
        ):
            return await getattr(herald, method)(*args, **kwargs)


Lossy = Callable[..., LossyPublisher]


@pytest.fixture(params=["sync", "async"])
def lossy(request: pytest.FixtureRequest, herald: ServerProcess) -> Lossy:
    def make(cut: Callable[[int], bool] = cut_first) -> LossyPublisher:
        return LossyPublisher(request.param, herald.base_url, cut)

    return make


@pytest.fixture
async def subscribe(
    herald: ServerProcess,
) -> AsyncIterator[Callable[[str], Awaitable[EventStream]]]:
    async with contextlib.AsyncExitStack() as stack:

        async def open_on(channel: str) -> EventStream:
            stream = await stack.enter_async_context(
                open_stream(herald.base_url, f"/events/{channel}")
            )
            await stream.position()
            return stream

        yield open_on


async def everything_before(
    stream: EventStream, marker: str, publish: LossyPublisher, channel: str
) -> list[str]:
    """The data of every event the stream gets until ``marker``, published after them (so a
    duplicate published by a lost attempt would show before it)."""
    await publish("publish", channel, marker)
    seen: list[str] = []
    while (message := await stream.next_event()).data != marker:
        seen.append(message.data)
    return seen


async def test_a_lost_answer_is_retried_with_the_same_key_and_body(lossy: Lossy) -> None:
    publish = lossy()
    result = await publish("publish", f"client/lost/{publish.kind}", "once")
    assert result.attempts == 2
    assert publish.keys == [result.idempotency_key] * 2


async def test_a_lost_answer_publishes_once(
    lossy: Lossy, subscribe: Callable[[str], Awaitable[EventStream]]
) -> None:
    publish = lossy()
    channel = f"client/lost-once/{publish.kind}"
    stream = await subscribe(channel)
    result = await publish("publish", channel, "once")
    assert await everything_before(stream, "marker", lossy(never), channel) == ["once"]
    assert result.replayed and result.attempts == 2


async def test_a_lost_batch_answer_publishes_the_batch_once(
    lossy: Lossy, subscribe: Callable[[str], Awaitable[EventStream]]
) -> None:
    publish = lossy()
    channel = f"client/lost-batch/{publish.kind}"
    stream = await subscribe(channel)
    result = await publish("publish_batch", [BatchItem(channel, i) for i in range(3)])
    assert await everything_before(stream, "marker", lossy(never), channel) == ["0", "1", "2"]
    assert result.replayed and result.attempts == 2 and len(result.ids) == 3


async def test_a_callers_key_makes_a_second_call_a_replay(
    lossy: Lossy, subscribe: Callable[[str], Awaitable[EventStream]]
) -> None:
    publish = lossy(never)
    channel = f"client/own-key/{publish.kind}"
    stream = await subscribe(channel)
    key = f"order-42-shipped-{publish.kind}-{id(publish)}"
    first = await publish("publish", channel, {"status": "shipped"}, idempotency_key=key)
    again = await publish("publish", channel, {"status": "shipped"}, idempotency_key=key)
    assert (again.id, again.replayed, first.replayed) == (first.id, True, False)
    assert await everything_before(stream, "marker", publish, channel) == ['{"status":"shipped"}']


async def test_a_key_reused_for_another_body_is_refused(lossy: Lossy) -> None:
    publish = lossy(never)
    channel = f"client/key-reuse/{publish.kind}"
    key = f"reused-{publish.kind}-{id(publish)}"
    await publish("publish", channel, "first", idempotency_key=key)
    with pytest.raises(PublishRejected) as refusal:
        await publish("publish", channel, "second", idempotency_key=key)
    assert refusal.value.status == 422 and refusal.value.attempts == 1
