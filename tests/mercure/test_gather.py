"""The subscription API over every worker (app.mercure.gather): real gunicorn with two
workers, over the master's shared directory (Unix sockets) and over a real Redis.

Either worker lists every worker's subscriptions, per matcher and one by one; a closed
subscription disappears; a worker that cannot answer makes the list say so (and a lookup
it might hold 503); a killed worker's subscriptions are gone and the list is complete
again within the exchange's TTL. One server per backplane (each start costs seconds),
so one test walks through it all. The budget and the query are checked as functions."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
import uuid
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any, TypeVar
from urllib.parse import quote, urlencode

import httpx
import pytest

from app.mercure.gather import SubscriptionQuery, within_budget
from tests.mercure.tokens import MERCURE_ENV, detail, token
from tests.serving.test_gunicorn import (
    AUTH,
    admin_metrics,
    backplane,
    gunicorn,
    servers,
    sharing_env,
    wait_for,
)
from tests.support.server import ServerProcess
from tests.support.sse_client import EventStream, open_stream

__all__ = ["backplane", "servers"]  # fixtures used here, defined there

HUB = "/.well-known/mercure"
SUBSCRIPTIONS = HUB + "/subscriptions"
WATCHER = {"Authorization": f"Bearer {token(detail(['subscribe'], '*'))}"}
STREAMS_PER_ROUND = 4
MAX_STREAMS = 64
TRY_PAUSE_SECONDS = (0.05, 0.3)
GATHER_TIMEOUT = "1"
# Long enough that a stopped worker stays listed (3 intervals) while it is asked twice.
SHARE_SECONDS = 2.0

_T = TypeVar("_T")


def topic_of(match: str, subscriber: str) -> str:
    return f"{SUBSCRIPTIONS}/exact/{quote(match, safe='')}/{quote(subscriber, safe='')}"


async def as_each_worker(
    server: ServerProcess, call: Callable[[httpx.AsyncClient], Awaitable[_T]]
) -> dict[str, _T]:
    """``call``'s result as answered by each of the two workers, by worker id. One
    keep-alive connection is served by one worker: the admin metrics on it name that
    worker (``host:pid``). Which worker accepts a new connection is the kernel's choice,
    and it often picks the same one; so the first worker found is paused (SIGSTOP) while
    the next connection is made, which only the other can then accept."""
    clients: dict[str, httpx.AsyncClient] = {}
    async with AsyncExitStack() as held:

        async def connect() -> None:
            client = await held.enter_async_context(
                httpx.AsyncClient(base_url=server.base_url, timeout=10)
            )
            worker = (await client.get("/api/admin/metrics", headers=AUTH)).json()["worker"]
            clients[worker] = client

        await connect()
        (first,) = clients
        paused = int(first.rsplit(":", 1)[1])
        os.kill(paused, signal.SIGSTOP)
        try:
            await connect()
        finally:
            os.kill(paused, signal.SIGCONT)
        assert len(clients) == 2, sorted(clients)
        return {worker: await call(client) for worker, client in clients.items()}


async def listing(client: httpx.AsyncClient, path: str = SUBSCRIPTIONS) -> dict[str, Any]:
    response = await client.get(path, headers=WATCHER)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    assert 'rel="mercure"' in response.headers["link"]
    assert "last-event-id=" in response.headers["link"]
    document: dict[str, Any] = response.json()
    assert document["type"] == "subscriptions" and document["id"] == path
    return document


async def listed(server: ServerProcess) -> dict[str, Any]:
    """One listing, from whichever worker takes the connection."""
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as client:
        return await listing(client)


def matches(document: dict[str, Any]) -> set[str]:
    return {s["match"] for s in document["subscriptions"]}


@pytest.mark.integration
async def test_either_worker_lists_every_workers_subscriptions(
    servers: list[ServerProcess], backplane: dict[str, str]
) -> None:
    env = {
        **MERCURE_ENV,
        **backplane,
        "MERCURE_SUBSCRIPTIONS_TIMEOUT_SECONDS": GATHER_TIMEOUT,
        "METRICS_SHARE_SECONDS": str(SHARE_SECONDS),
    }
    server = gunicorn(sharing_env(**env))
    servers.append(server)
    await wait_for(lambda: admin_metrics(server), lambda d: d["total"]["workers"] == 2)
    async with AsyncExitStack() as stack:
        # The kernel hands connections to whichever worker accepts first: open streams
        # until both workers hold at least two.
        streams: dict[str, EventStream] = {}
        per_worker: dict[str, int] = {}
        while len(streams) < MAX_STREAMS:
            # A round's streams open at once, then a pause (as_each_worker says why).
            matches_now = [
                f"https://example.com/g/{uuid.uuid4().hex[:10]}" for _ in range(STREAMS_PER_ROUND)
            ]
            opened = await asyncio.gather(
                *(
                    stack.enter_async_context(
                        open_stream(
                            server.base_url,
                            HUB + "?" + urlencode({"match": match}),
                            {
                                "Authorization": "Bearer "
                                + token(detail(["subscribe"], match, payload={"of": match}))
                            },
                        )
                    )
                    for match in matches_now
                )
            )
            streams.update(zip(matches_now, opened, strict=True))
            await asyncio.sleep(random.uniform(*TRY_PAUSE_SECONDS))
            settled = await wait_for(
                lambda: admin_metrics(server),
                lambda d: d["total"]["connections"] == len(streams),
            )
            per_worker = {w["worker"]: w["connections"] for w in settled["workers"]}
            if len(per_worker) == 2 and all(count >= 2 for count in per_worker.values()):
                break
        assert len(per_worker) == 2 and all(c >= 2 for c in per_worker.values()), per_worker
        print(f"\n{backplane['BROKER_URL'][:8]}: streams per worker {sorted(per_worker.values())}")

        # Each worker lists all of them, with their payloads, and says it is complete.
        everything = set(streams)
        first = await wait_for(lambda: listed(server), lambda d: matches(d) == everything)
        documents = {s["match"]: s for s in first["subscriptions"]}
        assert all(d["payload"] == {"of": m} and d["active"] for m, d in documents.items())
        lists = await as_each_worker(server, listing)
        for document in lists.values():
            assert document["complete"] is True
            assert sorted(document["subscriptions"], key=lambda d: d["id"]) == sorted(
                documents.values(), key=lambda d: d["id"]
            )
        one, other = lists.values()
        assert one == other, "one order whichever worker answers"

        # One by one and per matcher, from each worker: the other worker's too.
        async def lookups(client: httpx.AsyncClient) -> dict[str, Any]:
            found: dict[str, Any] = {}
            for match, document in documents.items():
                one = await client.get(document["id"], headers=WATCHER)
                per_matcher = await listing(client, f"{SUBSCRIPTIONS}/exact/{quote(match, '')}")
                assert per_matcher["subscriptions"] == [document]
                found[match] = (one.status_code, one.json())
            return found

        for found in (await as_each_worker(server, lookups)).values():
            assert found == {m: (200, d) for m, d in documents.items()}

        # A closed subscription disappears from both workers' lists and lookups.
        closed = next(iter(streams))
        await streams.pop(closed).response.aclose()
        await wait_for(lambda: listed(server), lambda d: closed not in matches(d))

        async def after_close(client: httpx.AsyncClient) -> tuple[set[str], int]:
            lookup = await client.get(documents[closed]["id"], headers=WATCHER)
            return matches(await listing(client)), lookup.status_code

        for left, status in (await as_each_worker(server, after_close)).values():
            assert (left, status) == (set(streams), 404)

        # A worker that cannot answer (stopped): the other lists its own and says so.
        settled = await wait_for(
            lambda: admin_metrics(server), lambda d: d["total"]["connections"] == len(streams)
        )
        frozen, awake = settled["workers"]
        os.kill(frozen["pid"], signal.SIGSTOP)
        try:
            started = time.monotonic()
            partial = await listed(server)
            waited = time.monotonic() - started
            unlisted = set(streams) - matches(partial)
            async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as client:
                held_there = documents[next(iter(unlisted))]["id"] if unlisted else None
                lookup = await client.get(held_there or SUBSCRIPTIONS, headers=WATCHER)
        finally:
            os.kill(frozen["pid"], signal.SIGCONT)
        print(f"one worker stopped: listed {len(partial['subscriptions'])} in {waited:.2f} s")
        assert partial["complete"] is False
        assert len(partial["subscriptions"]) == awake["connections"]
        assert len(unlisted) == frozen["connections"] and held_there is not None
        assert lookup.status_code == 503 and lookup.headers["retry-after"] == "1"

        # A killed worker: its streams end, its subscriptions are gone, and the list is
        # complete again once the exchange has dropped it (3 x METRICS_SHARE_SECONDS).
        victim = frozen
        readers = {
            asyncio.create_task(stream.until_closed(timeout=15)): match
            for match, stream in streams.items()
        }
        os.kill(victim["pid"], signal.SIGKILL)
        killed_at = time.monotonic()
        done: set[asyncio.Task[Any]] = set()
        pending = set(readers)
        while len(done) < victim["connections"] and time.monotonic() - killed_at < 10:
            more, pending = await asyncio.wait(
                pending, timeout=1, return_when=asyncio.FIRST_COMPLETED
            )
            done |= more
        survivors = {readers[task] for task in pending}
        try:
            assert len(done) == victim["connections"] and survivors == set(streams) - unlisted
            gone = await wait_for(lambda: listed(server), lambda d: matches(d) == survivors)
            gone_after = time.monotonic() - killed_at
            healed = await wait_for(
                lambda: listed(server),
                lambda d: d["complete"] is True and matches(d) == survivors,
                timeout=15,
            )
            healed_after = time.monotonic() - killed_at
        finally:
            for task in pending:  # cancelling a read closes its stream: only once checked
                task.cancel()
        print(
            f"killed worker: its subscriptions gone after {gone_after:.2f} s "
            f"(list complete: {gone['complete']}), complete again after {healed_after:.2f} s"
        )
        assert healed_after < 3 * SHARE_SECONDS + 5
        assert healed["subscriptions"] == [
            d for d in partial["subscriptions"] if d["match"] in survivors
        ]


def test_the_budget_keeps_whole_leading_documents() -> None:
    documents: list[dict[str, Any]] = [{"id": str(n), "type": "subscription"} for n in range(5)]
    size = len('{"id":"0","type":"subscription"}')
    assert within_budget(documents, size * 5) == (documents, False)
    assert within_budget(documents, size * 3 + size // 2) == (documents[:3], True)
    assert within_budget(documents, size - 1) == ([], True)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({}, SubscriptionQuery()),
        ({"match_type": "exact", "match": "a"}, SubscriptionQuery("exact", "a")),
        ({"topic": "/t"}, SubscriptionQuery(topic="/t")),
        ({"topic": 3}, None),
        ({"other": "x"}, None),
        (["exact"], None),
    ],
)
def test_a_query_from_another_worker_is_checked(
    raw: object, expected: SubscriptionQuery | None
) -> None:
    assert SubscriptionQuery.from_params(raw) == expected
    if expected is not None:  # what a worker sends is what the other reads
        assert SubscriptionQuery.from_params(expected.params()) == expected
