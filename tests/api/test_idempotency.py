"""``Idempotency-Key`` on ``POST /events/{channel}`` and ``POST /events``, against real
servers: a retry is answered with the first answer and publishes nothing, on any worker
and any instance on the same Redis; a key reused with another request, or malformed, is
refused and publishes nothing.

"Publishes nothing" is checked the strong way, as in ``test_publish``: a subscriber
listening all along receives only the next good event, and its id follows the previous
good one (no id was consumed).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable

import httpx
import pytest

from app.publishing.idempotency import MAX_KEY_LENGTH
from tests.serving.test_gunicorn import gunicorn
from tests.support.redis_server import RedisServer
from tests.support.server import ServerProcess
from tests.support.sse_client import open_stream

pytestmark = pytest.mark.integration

REPLAYED = "idempotent-replayed"


def new_key() -> str:
    return str(uuid.uuid4())


def keyed(key: str) -> dict[str, str]:
    return {"Idempotency-Key": key}


async def test_a_retry_gets_the_first_answer_and_publishes_nothing(
    herald: ServerProcess,
) -> None:
    key = new_key()
    async with (
        open_stream(herald.base_url, "/events/retried") as stream,
        httpx.AsyncClient(base_url=herald.base_url) as client,
    ):
        await stream.position()
        first = await client.post("/events/retried", json={"data": 1}, headers=keyed(key))
        # The same request as the draft writes it (a quoted string), with other whitespace.
        again = await client.post(
            "/events/retried",
            content=b'{ "data" : 1 }',
            headers={"Idempotency-Key": f'"{key}"', "content-type": "application/json"},
        )
        after = await client.post("/events/retried", json={"data": "after"})
        received = [await stream.next_event(), await stream.next_event()]
    assert first.status_code == again.status_code == 202
    assert REPLAYED not in first.headers
    assert again.headers[REPLAYED] == "true"
    assert again.json() == first.json()
    assert [event.id for event in received] == [first.json()["id"], after.json()["id"]]


async def test_a_batch_is_one_unit_under_its_key(herald: ServerProcess) -> None:
    key = new_key()
    batch = [{"channel": "batch-a", "data": i} for i in range(3)]
    async with httpx.AsyncClient(base_url=herald.base_url) as client:
        first = await client.post("/events", json=batch, headers=keyed(key))
        again = await client.post("/events", json=batch, headers=keyed(key))
        changed = await client.post("/events", json=batch[:2], headers=keyed(key))
    assert first.status_code == again.status_code == 202
    assert again.headers[REPLAYED] == "true" and again.json() == first.json()
    assert len(first.json()["ids"]) == 3
    assert changed.status_code == 422


async def test_the_answer_of_a_replay_counts_todays_subscribers(herald: ServerProcess) -> None:
    key = new_key()
    async with httpx.AsyncClient(base_url=herald.base_url) as client:
        first = await client.post("/events/counted", json={"data": 1}, headers=keyed(key))
        async with open_stream(herald.base_url, "/events/counted") as stream:
            await stream.position()
            again = await client.post("/events/counted", json={"data": 1}, headers=keyed(key))
    assert first.json()["subscribers"] == 0
    assert again.json() == {**first.json(), "subscribers": 1}


async def expect_nothing_published(
    server: ServerProcess,
    channel: str,
    refuse: Callable[[httpx.AsyncClient], Awaitable[httpx.Response]],
) -> httpx.Response:
    """Publish, ``refuse`` (a request that must be refused), publish: a subscriber gets the
    two good events, with consecutive ids. Returns the refusal."""
    async with (
        open_stream(server.base_url, f"/events/{channel}") as stream,
        httpx.AsyncClient(base_url=server.base_url) as client,
    ):
        before = await client.post(f"/events/{channel}", json={"data": "before"})
        assert (await stream.next_event()).data == "before"
        refused = await refuse(client)
        after = await client.post(f"/events/{channel}", json={"data": "after"})
        assert (await stream.next_event()).data == "after"
    before_ms, before_seq = map(int, before.json()["id"].split("-"))
    after_ms, after_seq = map(int, after.json()["id"].split("-"))
    if after_ms == before_ms:
        assert after_seq == before_seq + 1, "a refused publish consumed an id"
    return refused


async def test_a_key_used_with_another_request_is_refused_and_publishes_nothing(
    herald: ServerProcess,
) -> None:
    key = new_key()
    async with httpx.AsyncClient(base_url=herald.base_url) as client:
        first = await client.post("/events/reused", json={"data": 1}, headers=keyed(key))
    assert first.status_code == 202

    async def reuse(client: httpx.AsyncClient) -> httpx.Response:
        return await client.post("/events/reused", json={"data": 2}, headers=keyed(key))

    refused = await expect_nothing_published(herald, "reused", reuse)
    assert refused.status_code == 422
    assert refused.json() == {"detail": "Idempotency-Key was used with a different request"}


BAD_KEYS: list[tuple[str, list[tuple[str, bytes]], str]] = [
    ("empty", [("Idempotency-Key", b"")], "1 to 255 characters"),
    ("empty quoted", [("Idempotency-Key", b'""')], "1 to 255 characters"),
    ("too long", [("Idempotency-Key", b"k" * (MAX_KEY_LENGTH + 1))], "1 to 255 characters"),
    ("a space", [("Idempotency-Key", b"two words")], "visible ASCII"),
    ("a quote inside", [("Idempotency-Key", b'"a"b"')], "visible ASCII"),
    ("an escape", [("Idempotency-Key", b'"a\\"b"')], "visible ASCII"),
    ("a backslash", [("Idempotency-Key", b"a\\b")], "visible ASCII"),
    ("not ASCII", [("Idempotency-Key", "clé".encode("latin-1"))], "visible ASCII"),
    ("half quoted", [("Idempotency-Key", b'"open')], "visible ASCII"),
    ("twice", [("Idempotency-Key", b"one"), ("Idempotency-Key", b"two")], "one Idempotency-Key"),
]


@pytest.mark.parametrize(
    ("headers", "detail"), [case[1:] for case in BAD_KEYS], ids=[case[0] for case in BAD_KEYS]
)
async def test_a_malformed_key_is_refused_and_publishes_nothing(
    herald: ServerProcess, headers: list[tuple[str, bytes]], detail: str
) -> None:
    async def malformed(client: httpx.AsyncClient) -> httpx.Response:
        return await client.post("/events/malformed", json={"data": 1}, headers=headers)

    refused = await expect_nothing_published(herald, "malformed", malformed)
    assert refused.status_code == 422, refused.text
    assert detail in refused.json()["detail"]


async def test_the_longest_key_is_accepted(herald: ServerProcess) -> None:
    key = "~" * MAX_KEY_LENGTH
    async with httpx.AsyncClient(base_url=herald.base_url) as client:
        first = await client.post("/events/longest", json={"data": 1}, headers=keyed(key))
        again = await client.post("/events/longest", json={"data": 1}, headers=keyed(f'"{key}"'))
    assert first.status_code == 202 and again.headers[REPLAYED] == "true"


async def test_a_window_of_zero_turns_keys_off(
    server_factory: Callable[..., ServerProcess],
) -> None:
    server = server_factory(PUBLISH_IDEMPOTENCY_SECONDS="0")
    async with httpx.AsyncClient(base_url=server.base_url) as client:
        answers = [
            await client.post("/events/off", json={"data": 1}, headers=keyed("same"))
            for _ in range(2)
        ]
    assert [a.status_code for a in answers] == [202, 202]
    assert answers[0].json()["id"] != answers[1].json()["id"]
    assert not any(REPLAYED in a.headers for a in answers)


async def racing_retries(
    servers: list[ServerProcess], channel: str, tries: int
) -> list[httpx.Response]:
    """``tries`` requests with one key at once, spread over ``servers`` on new connections
    (each may land on any worker); then a marker, so the stream has had everything."""
    key = new_key()

    async def attempt(server: ServerProcess) -> httpx.Response:
        async with httpx.AsyncClient(base_url=server.base_url) as client:
            return await client.post(f"/events/{channel}", json={"data": 1}, headers=keyed(key))

    answers = await asyncio.gather(*(attempt(servers[i % len(servers)]) for i in range(tries)))
    async with httpx.AsyncClient(base_url=servers[0].base_url) as client:
        await client.post(f"/events/{channel}", json={"data": "marker"})
    return list(answers)


async def test_retries_on_two_instances_on_one_redis_publish_once(
    server_factory: Callable[..., ServerProcess], redis_server: RedisServer
) -> None:
    env = {"BROKER_URL": redis_server.url, "REDIS_KEY_PREFIX": f"i{uuid.uuid4().hex[:10]}"}
    one, other = server_factory(**env), server_factory(**env)
    async with open_stream(other.base_url, "/events/instances") as stream:
        await stream.position()
        answers = await racing_retries([one, other], "instances", tries=8)
        events = [await stream.next_event(), await stream.next_event()]
    assert {a.status_code for a in answers} == {202}
    assert len({a.json()["id"] for a in answers}) == 1
    assert sum(REPLAYED not in a.headers for a in answers) == 1
    assert [e.data for e in events] == ["1", "marker"]
    assert events[0].id == answers[0].json()["id"]


async def test_retries_on_two_gunicorn_workers_publish_once(
    redis_server: RedisServer,
) -> None:
    server = gunicorn(
        {
            "BROKER_URL": redis_server.url,
            "REDIS_KEY_PREFIX": f"g{uuid.uuid4().hex[:10]}",
            "WEB_CONCURRENCY": "2",
        }
    )
    try:
        async with open_stream(server.base_url, "/events/workers") as stream:
            await stream.position()
            answers = await racing_retries([server], "workers", tries=10)
            events = [await stream.next_event(), await stream.next_event()]
    finally:
        server.close()
    assert len({a.json()["id"] for a in answers}) == 1
    assert sum(REPLAYED not in a.headers for a in answers) == 1
    assert [e.data for e in events] == ["1", "marker"]
