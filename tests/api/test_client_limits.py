"""Per-client limits end to end: streams per address (429), publish token buckets (429),
the address taken from trusted proxies only, and both limits shared by processes on Redis."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager

import httpx
import jwt
import pytest

from tests.support.redis_server import RedisServer
from tests.support.server import ServerProcess
from tests.support.sse_client import open_stream

pytestmark = pytest.mark.integration

SECRET = "limits-jwt-secret-0123456789abcdef0123"
PUBLISH_TOKEN = "limits-simple-publish-token"


@asynccontextmanager
async def attempt(
    server: ServerProcess, path: str, headers: dict[str, str] | None = None
) -> AsyncIterator[httpx.Response]:
    """Open a stream, or get its refusal; the response stays open inside the block."""
    timeout = httpx.Timeout(10.0, read=None)
    async with (
        httpx.AsyncClient(base_url=server.base_url, timeout=timeout) as client,
        client.stream("GET", path, headers=headers) as response,
    ):
        if response.status_code != 200:
            await response.aread()
        yield response


def assert_too_many(response: httpx.Response) -> None:
    assert response.status_code == 429, response.text
    assert response.headers["content-type"] == "application/json"
    assert "too many open streams" in response.json()["detail"]
    assert int(response.headers["retry-after"]) >= 1


async def test_streams_per_address_are_capped_and_freed_on_close(
    server_factory: Callable[..., ServerProcess],
) -> None:
    server = server_factory(SSE_MAX_CONNECTIONS_PER_IP="2")
    async with AsyncExitStack() as stack:
        for _ in range(2):
            opened = await stack.enter_async_context(attempt(server, "/events/capped"))
            assert opened.status_code == 200
        async with attempt(server, "/events/other") as refused:
            assert_too_many(refused)
    # Both closed: the address may open streams again.
    await asyncio.sleep(0.3)
    async with open_stream(server.base_url, "/events/capped") as stream:
        assert stream.response.status_code == 200


async def test_the_address_comes_from_trusted_proxies_only(
    server_factory: Callable[..., ServerProcess],
) -> None:
    behind_proxy = server_factory(SSE_MAX_CONNECTIONS_PER_IP="1", TRUSTED_PROXIES="127.0.0.1/32")
    exposed = server_factory(SSE_MAX_CONNECTIONS_PER_IP="1")
    alice = {"X-Forwarded-For": "198.51.100.7"}
    bob = {"X-Forwarded-For": "198.51.100.8"}
    async with attempt(behind_proxy, "/events/p", alice) as first:
        assert first.status_code == 200
        async with attempt(behind_proxy, "/events/p", alice) as again:
            assert_too_many(again)
        async with attempt(behind_proxy, "/events/p", bob) as other:
            assert other.status_code == 200
    # Without trust, a forged header is no way around the limit: both are 127.0.0.1.
    async with attempt(exposed, "/events/p", alice) as first:
        assert first.status_code == 200
        async with attempt(exposed, "/events/p", bob) as forged:
            assert_too_many(forged)


async def test_publish_bucket_per_token_answers_429_and_changes_nothing(
    server_factory: Callable[..., ServerProcess],
) -> None:
    server = server_factory(
        PUBLISH_TOKEN=PUBLISH_TOKEN,
        JWT_SECRET=SECRET,
        PUBLISH_RATE_PER_SECOND="0.5",
        PUBLISH_BURST="3",
    )
    simple = {"Authorization": f"Bearer {PUBLISH_TOKEN}"}
    granted = jwt.encode({"mercure": {"publish": ["*"]}}, SECRET, algorithm="HS256")
    async with open_stream(server.base_url, "/events/rated") as stream:
        await stream.wait_for_comment()
        async with httpx.AsyncClient(base_url=server.base_url) as client:
            sent = [
                await client.post("/events/rated", json={"data": n}, headers=simple)
                for n in range(4)
            ]
            assert [r.status_code for r in sent] == [202, 202, 202, 429]
            refused = sent[-1]
            assert refused.json()["detail"].startswith("publish rate limit exceeded")
            assert int(refused.headers["retry-after"]) == 2
            # Another token has its own bucket.
            other = await client.post(
                "/events/rated",
                json={"data": "jwt"},
                headers={"Authorization": f"Bearer {granted}"},
            )
            assert other.status_code == 202
        received = await stream.events(4)
    assert [message.data for message in received] == ["0", "1", "2", "jwt"]
    assert PUBLISH_TOKEN not in server.logs()


async def test_both_limits_hold_across_processes_sharing_redis(
    server_factory: Callable[..., ServerProcess], redis_server: RedisServer
) -> None:
    shared = {
        "BROKER_URL": redis_server.url,
        "REDIS_KEY_PREFIX": f"lim{uuid.uuid4().hex[:10]}",
        "SSE_MAX_CONNECTIONS_PER_IP": "2",
        "PUBLISH_RATE_PER_SECOND": "0.2",
        "PUBLISH_BURST": "2",
    }
    first, second = server_factory(**shared), server_factory(**shared)
    async with (
        attempt(first, "/events/x") as one,
        attempt(second, "/events/x") as two,
    ):
        assert (one.status_code, two.status_code) == (200, 200)
        for server in (first, second):
            async with attempt(server, "/events/x") as refused:
                assert_too_many(refused)
    statuses = []
    async with httpx.AsyncClient() as client:
        for server in (first, second, first):
            published = await client.post(server.base_url + "/events/y", json={"data": 1})
            statuses.append(published.status_code)
    assert statuses == [202, 202, 429]
