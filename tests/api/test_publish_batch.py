"""Batches (``POST /events``) and events on several channels, on both brokers, against real
servers.

"Nothing published" is checked the strong way, as in test_publish.py: a stream that
listened all along receives only the next good event after a refused batch.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterator

import httpx
import jwt
import pytest

from tests.support.server import ServerProcess
from tests.support.sse_client import open_stream

pytestmark = pytest.mark.integration

SECRET = "batch-test-secret-0123456789abcdef"


@pytest.fixture(scope="module")
def server(broker_env: Callable[[], dict[str, str]]) -> Iterator[ServerProcess]:
    from tests.conftest import FAST_TIMERS

    env = {
        **FAST_TIMERS,
        **broker_env(),
        "PUBLISH_BATCH_MAX": "50",
        "MAX_BATCH_BYTES": "20000",
        "MAX_EVENT_BYTES": "1024",
        "JWT_SECRET": SECRET,
    }
    started = ServerProcess(env).start()
    yield started
    started.close()


def bearer(publish: list[str] | None = None, subscribe: list[str] | None = None) -> dict[str, str]:
    claims = {"mercure": {"publish": publish or [], "subscribe": subscribe or []}}
    return {"Authorization": "Bearer " + jwt.encode(claims, SECRET, algorithm="HS256")}


PUBLISHER = bearer(publish=["*"])
SUBSCRIBER = bearer(subscribe=["*"])


def key(event_id: str) -> tuple[int, int]:
    ms, seq = event_id.split("-")
    return int(ms), int(seq)


async def test_a_batch_is_published_in_request_order_with_consecutive_ids(
    server: ServerProcess, broker_env: Callable[[], dict[str, str]]
) -> None:
    if broker_env()["BROKER_URL"].startswith("redis+cluster"):
        # Its log shards number their entries apart (app/broker/redis_cluster/publishing.py):
        # request order holds within a shard; tests/broker/test_contract.py checks it per
        # channel.
        pytest.skip("a batch across log shards is not one step of a sequence")
    items = [{"channel": "batch/a" if i % 2 else "batch/b", "data": {"n": i}} for i in range(20)]
    async with (
        open_stream(server.base_url, "/events?channel=batch/a&channel=batch/b") as stream,
        httpx.AsyncClient(base_url=server.base_url) as client,
    ):
        answer = await client.post("/events", json=items, headers=PUBLISHER)
        assert answer.status_code == 202, answer.text
        ids = answer.json()["ids"]
        got = await stream.events(20)
    assert [event.data for event in got] == [f'{{"n":{i}}}' for i in range(20)]
    assert [event.id for event in got] == ids
    keys = [key(event_id) for event_id in ids]
    assert keys == sorted(keys) and len(set(keys)) == 20
    # One step of the sequence: nothing else was numbered between the batch's events.
    for before, after in itertools.pairwise(keys):
        assert after == (before[0], before[1] + 1) or after[0] > before[0]


BAD_BATCHES: list[tuple[str, object, int, str]] = [
    ("bad item shape", [{"channel": "t", "data": 1}, 5], 422, "item 1: must be a JSON object"),
    ("no channel", [{"channel": "t", "data": 1}, {"data": 2}], 422, "item 1: names no channel"),
    (
        "bad channel",
        [{"channel": "t", "data": 1}, {"channel": "t", "data": 1}, {"channel": "a b", "data": 2}],
        422,
        "item 2: invalid channel name",
    ),
    ("unknown field", [{"channel": "t", "data": 1, "evnt": "x"}], 422, "item 0: unknown field"),
    ("bad encoding", [{"channel": "t", "data": "a\rb"}], 422, "item 0: data holds a carriage"),
    ("missing data", [{"channel": "t"}], 422, 'item 0: missing required field "data"'),
    ("channels not a list", [{"channels": "t", "data": 1}], 422, 'item 0: field "channels"'),
    ("empty batch", [], 422, "empty batch"),
    ("not a batch", "hello", 422, "JSON array"),
    ("too many events", [{"channel": "t", "data": i} for i in range(51)], 413, "PUBLISH_BATCH_MAX"),
    ("too many bytes", [{"channel": "t", "data": "x" * 900}] * 30, 413, "MAX_BATCH_BYTES"),
    ("event too large", [{"channel": "t", "data": "x" * 1100}], 413, "item 0: event larger"),
]


@pytest.mark.parametrize(
    ("body", "status", "detail"),
    [case[1:] for case in BAD_BATCHES],
    ids=[case[0] for case in BAD_BATCHES],
)
async def test_a_bad_batch_is_refused_whole_and_publishes_nothing(
    server: ServerProcess, body: object, status: int, detail: str
) -> None:
    async with (
        open_stream(server.base_url, "/events/t") as stream,
        httpx.AsyncClient(base_url=server.base_url) as client,
    ):
        refused = await client.post("/events", json=body, headers=PUBLISHER)
        assert refused.status_code == status, refused.text
        assert refused.json()["detail"].startswith(detail) or detail in refused.json()["detail"]
        await client.post("/events/t", json={"data": "after"}, headers=PUBLISHER)
        assert (await stream.next_event()).data == "after"


async def test_jwt_grants_are_checked_for_every_channel_of_every_item(
    server: ServerProcess,
) -> None:
    orders_only = bearer(publish=["orders/{id}"])
    items = [
        {"channel": "orders/1", "data": 1},
        {"channels": ["orders/2", "users/9"], "data": 2},
    ]
    async with (
        open_stream(server.base_url, "/events/orders/1") as stream,
        httpx.AsyncClient(base_url=server.base_url) as client,
    ):
        refused = await client.post("/events", json=items, headers=orders_only)
        assert refused.status_code == 403
        assert refused.json()["detail"] == "item 1: token does not grant publishing to 'users/9'"
        allowed = await client.post("/events", json=items[:1], headers=orders_only)
        assert allowed.status_code == 202
        assert (await stream.next_event()).data == "1"
        no_token = await client.post("/events", json=items[:1])
        assert no_token.status_code == 401


async def test_an_event_on_several_channels_reaches_each_stream_once_live_and_in_replay(
    server: ServerProcess, broker_env: Callable[[], dict[str, str]]
) -> None:
    # On a cluster a batch's events on different log shards follow their positions, not the
    # request (app/broker/redis_cluster/publishing.py): every stream sees one order, maybe not
    # this one.
    in_request_order = not broker_env()["BROKER_URL"].startswith("redis+cluster")
    both = "/events?channel=multi/a&channel=multi/b"
    async with httpx.AsyncClient(base_url=server.base_url) as client:
        async with (
            open_stream(server.base_url, both) as on_both,
            open_stream(server.base_url, "/events/multi/b") as on_b,
        ):
            start = await on_both.position()
            single = await client.post(
                "/events/multi/a", json={"data": "one", "channels": ["multi/b"]}, headers=PUBLISHER
            )
            assert single.json()["channels"] == ["multi/a", "multi/b"]
            assert single.json()["subscribers"] == 2  # the stream on both counts once
            batch = await client.post(
                "/events",
                json=[
                    {"channels": ["multi/a", "multi/b", "multi/c"], "data": "two"},
                    {"channel": "multi/b", "data": "three"},
                ],
                headers=PUBLISHER,
            )
            assert batch.status_code == 202
            live = await on_both.events(3)
            on_b_seen = [e.data for e in await on_b.events(3)]
        assert [e.data for e in live] == on_b_seen  # one order for every stream
        if in_request_order:
            assert on_b_seen == ["one", "two", "three"]
        else:
            assert on_b_seen[0] == "one" and sorted(on_b_seen[1:]) == ["three", "two"]
        async with open_stream(server.base_url, both, {"Last-Event-ID": start}) as resumed:
            replayed = await resumed.events(3)
            await client.post("/events/multi/a", json={"data": "four"}, headers=PUBLISHER)
            assert (await resumed.next_event()).data == "four"  # nothing twice in between
    assert [(e.data, e.id) for e in replayed] == [(e.data, e.id) for e in live]


async def test_a_private_event_on_several_channels_is_seen_by_a_grant_of_any_of_them(
    server: ServerProcess,
) -> None:
    # Granted priv/a only, the event is on priv/a and priv/b: any one of its channels suffices.
    streams = "/events/priv/a"
    granted_a = bearer(subscribe=["priv/a"])
    async with httpx.AsyncClient(base_url=server.base_url) as client:
        async with (
            open_stream(server.base_url, streams, granted_a) as granted,
            open_stream(server.base_url, streams) as anonymous,
        ):
            start = await granted.position()
            await client.post(
                "/events",
                json=[
                    {"channels": ["priv/a", "priv/b"], "data": "secret", "private": True},
                    {"channel": "priv/a", "data": "public"},
                ],
                headers=PUBLISHER,
            )
            assert [e.data for e in await granted.events(2)] == ["secret", "public"]
            assert (await anonymous.next_event()).data == "public"
        resume = {**granted_a, "Last-Event-ID": start}
        async with open_stream(server.base_url, streams, resume) as replay:
            assert [e.data for e in await replay.events(2)] == ["secret", "public"]
        async with open_stream(server.base_url, streams, {"Last-Event-ID": start}) as replay:
            assert (await replay.next_event()).data == "public"


def test_one_object_on_post_events_is_a_single_publish(server: ServerProcess) -> None:
    answer = httpx.post(
        server.base_url + "/events",
        json={"channels": ["one/a", "one/b"], "data": 1},
        headers=PUBLISHER,
    )
    assert answer.status_code == 202
    assert answer.json()["channels"] == ["one/a", "one/b"]
    text = httpx.post(
        server.base_url + "/events",
        content=b"hi",
        headers={**PUBLISHER, "content-type": "text/plain"},
    )
    assert text.status_code == 415


def test_too_many_channels_on_one_event_is_422(server: ServerProcess) -> None:
    names = [f"wide/{i}" for i in range(17)]  # PUBLISH_MAX_CHANNELS is 16
    answer = httpx.post(
        server.base_url + "/events", json=[{"channels": names, "data": 1}], headers=PUBLISHER
    )
    assert answer.status_code == 422
    assert "item 0: too many channels" in answer.json()["detail"]


async def test_values_past_the_fast_json_path_are_published_or_refused_as_before(
    server: ServerProcess,
) -> None:
    # orjson parses and encodes the usual batch; what it refuses (an integer past 64 bits,
    # a lone surrogate escape) takes the stdlib path: published, or refused with its reason.
    huge = 2**80
    async with (
        open_stream(server.base_url, "/events/wide-values") as stream,
        httpx.AsyncClient(base_url=server.base_url) as client,
    ):
        body = b'[{"channel": "wide-values", "data": {"n": %d}}]' % huge
        answer = await client.post(
            "/events", content=body, headers={**PUBLISHER, "content-type": "application/json"}
        )
        assert answer.status_code == 202, answer.text
        assert json.loads((await stream.next_event()).data) == {"n": huge}
        surrogate = (
            b'[{"channel": "wide-values", "data": "ok"}, {"channel": "x", "data": "\\ud800"}]'
        )
        refused = await client.post(
            "/events", content=surrogate, headers={**PUBLISHER, "content-type": "application/json"}
        )
        assert refused.status_code == 422
        assert refused.json()["detail"].startswith("item 1: data is not valid Unicode")
        await client.post("/events/wide-values", json={"data": "after"}, headers=PUBLISHER)
        assert (await stream.next_event()).data == "after"  # the refused batch published nothing
