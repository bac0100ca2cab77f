"""GET /.well-known/mercure against a real server, on both brokers: matchers, private
updates, one hub with Herald's own channels, resume with publisher ids, earliest and the
Mercure-Last-Event-ID header, subscription events and the subscription API, token exp."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable, Iterator
from urllib.parse import quote, urlencode

import httpx
import pytest

from tests.mercure.tokens import MERCURE_ENV, detail, token
from tests.support.server import ServerProcess
from tests.support.sse_client import EventStream, open_stream

pytestmark = pytest.mark.integration

HUB = "/.well-known/mercure"
PUBLISHER = token(detail(["publish"], "*"))
SUBSCRIBER = token(detail(["subscribe"], "*"))
HERALD_PUBLISH_TOKEN = "herald-own-publish-token"
QUIET = 0.6  # how long "nothing arrives" is watched


@pytest.fixture(scope="module")
def server(broker_env: Callable[[], dict[str, str]]) -> Iterator[ServerProcess]:
    env = {**MERCURE_ENV, **broker_env(), "MERCURE_MAX_MATCHERS": "4", "SSE_PING_SECONDS": "0.3"}
    env["PUBLISH_TOKEN"] = HERALD_PUBLISH_TOKEN
    process = ServerProcess({**env, "MERCURE_MAX_MATCHER_LENGTH": "64"}).start()
    yield process
    process.close()


def unique(prefix: str = "t") -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


def publish(server: ServerProcess, **fields: str | list[str]) -> str:
    response = httpx.post(
        server.base_url + HUB,
        content=urlencode(fields, doseq=True).encode(),
        headers={
            "Authorization": f"Bearer {PUBLISHER}",
            "Content-Type": "application/x-www-form-urlencoded",
        },
    )
    assert response.status_code == 200, response.text
    return response.text


def herald_publish(server: ServerProcess, channel: str, data: str) -> str:
    """Through Herald's own API (``POST /events/<channel>``)."""
    response = httpx.post(
        f"{server.base_url}/events/{channel}",
        json={"data": data},
        headers=bearer(HERALD_PUBLISH_TOKEN),
    )
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def api_get(server: ServerProcess, url_path: str, access_token: str) -> httpx.Response:
    return httpx.get(server.base_url + url_path, headers=bearer(access_token))


def path(*params: tuple[str, str]) -> str:
    return HUB + "?" + urlencode(params)


def bearer(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


async def quiet(stream: EventStream) -> None:
    with pytest.raises(TimeoutError):
        await stream.next_event(timeout=QUIET)


@pytest.mark.parametrize(
    ("param", "matcher", "topic"),
    [
        ("match", "https://example.com/books/{u}", "https://example.com/books/{u}"),
        ("match_exact", "{u}", "{u}"),
        ("match_urlpattern", "https://example.com/{u}/:id", "https://example.com/{u}/1"),
        ("match_urlpattern", "/{u}/:id", "/{u}/7"),  # relative: against the hub's URL
        ("match", "*", "{u}"),
    ],
)
async def test_each_matcher_gets_what_it_matches_and_nothing_else(
    server: ServerProcess, param: str, matcher: str, topic: str
) -> None:
    u = unique()
    async with open_stream(server.base_url, path((param, matcher.format(u=u)))) as stream:
        await stream.position()
        if matcher != "*":
            publish(server, topic=f"https://example.com/other/{u}")
        publish(server, topic=topic.format(u=u), data="line 1\nline 2", id=f"urn:{u}", type="t")
        event = await stream.next_event()
        assert (event.id, event.event, event.data) == (f"urn:{u}", "t", "line 1\nline 2")


async def test_a_stream_on_several_matchers_gets_an_event_once(server: ServerProcess) -> None:
    u = unique()
    topic = f"https://example.com/{u}/1"
    query = path(("match", topic), ("match_urlpattern", f"https://example.com/{u}/:id"))
    async with open_stream(server.base_url, query + "&match=*") as stream:
        await stream.position()
        publish(server, topic=topic, data="once")
        assert (await stream.next_event()).data == "once"
        await quiet(stream)


async def test_alternate_topics_reach_each_topic_once(server: ServerProcess) -> None:
    u = unique()
    canonical, alternate = f"https://example.com/{u}/book", f"https://example.com/{u}/author"
    async with (
        open_stream(server.base_url, path(("match", alternate))) as by_alternate,
        open_stream(server.base_url, path(("match", canonical), ("match", alternate))) as both,
        open_stream(server.base_url, f"/events/{alternate}") as herald,
    ):
        for stream in (by_alternate, both, herald):
            await stream.position()
        event_id = publish(server, topic=[canonical, alternate, canonical], data="one update")
        for stream in (by_alternate, both, herald):
            event = await stream.next_event()
            assert (event.id, event.data) == (event_id, "one update")
        await quiet(both)  # once, though it matched two of the update's topics


async def test_a_private_update_on_alternate_topics_needs_a_grant_for_one_of_them(
    server: ServerProcess,
) -> None:
    u = unique()
    granted, other = f"https://example.com/{u}/granted", f"https://example.com/{u}/other"
    reader = token(detail(["subscribe"], granted))
    query = path(("match", other))
    async with (
        open_stream(server.base_url, query) as anonymous,
        open_stream(server.base_url, query, bearer(reader)) as authorized,
    ):
        for stream in (anonymous, authorized):
            await stream.position()
        publish(server, topic=[other, granted], data="secret", private="on")
        publish(server, topic=other, data="public")
        assert [(await authorized.next_event()).data for _ in range(2)] == ["secret", "public"]
        assert (await anonymous.next_event()).data == "public"


async def test_private_updates_need_a_subscribe_grant_for_the_topic(server: ServerProcess) -> None:
    u = unique()
    allowed = token(
        detail(["subscribe"], {"match": f"https://example.com/{u}/:id", "match_type": "urlpattern"})
    )
    other = token(detail(["subscribe"], f"https://example.com/{u}/other"))
    query = path(("match_urlpattern", f"https://example.com/{u}/:id"))
    async with (
        open_stream(server.base_url, query) as anonymous,
        open_stream(server.base_url, query, bearer(other)) as narrow,
        open_stream(server.base_url, query, bearer(allowed)) as reader,
    ):
        for stream in (anonymous, narrow, reader):
            await stream.position()
        publish(server, topic=f"https://example.com/{u}/1", data="secret", private="on")
        publish(server, topic=f"https://example.com/{u}/2", data="public")
        assert [(await reader.next_event()).data for _ in range(2)] == ["secret", "public"]
        assert (await anonymous.next_event()).data == "public"
        assert (await narrow.next_event()).data == "public"


async def test_herald_channels_and_mercure_topics_are_one_hub(server: ServerProcess) -> None:
    channel = f"orders/{unique()}"
    async with (
        open_stream(server.base_url, path(("match", channel))) as mercure,
        open_stream(server.base_url, f"/events/{channel}") as herald,
    ):
        await mercure.position()
        await herald.position()
        herald_id = herald_publish(server, channel, "from herald")
        mercure_id = publish(server, topic=channel, data="from mercure")
        for stream in (mercure, herald):
            events = [await stream.next_event() for _ in range(2)]
            assert [(e.id, e.data) for e in events] == [
                (herald_id, "from herald"),
                (mercure_id, "from mercure"),
            ]


async def test_resume_from_a_publisher_id_with_the_header_winning(server: ServerProcess) -> None:
    u = unique()
    ids = [publish(server, topic=u, data=str(n), id=f"urn:{u}:{n}") for n in range(3)]
    headers = {"Last-Event-ID": ids[0]}
    query = path(("match", u), ("last_event_id", ids[1]))
    async with open_stream(server.base_url, query, headers) as stream:
        assert stream.response.headers["mercure-last-event-id"] == ids[0]
        assert [(await stream.next_event()).data for _ in range(2)] == ["1", "2"]
    async with open_stream(server.base_url, query) as stream:
        assert stream.response.headers["mercure-last-event-id"] == ids[1]
        assert (await stream.next_event()).data == "2"


def post_update(
    server: ServerProcess, headers: dict[str, str] | None = None, **fields: str
) -> httpx.Response:
    return httpx.post(
        server.base_url + HUB,
        content=urlencode(fields).encode(),
        headers={
            "Authorization": f"Bearer {PUBLISHER}",
            "Content-Type": "application/x-www-form-urlencoded",
            **(headers or {}),
        },
    )


async def test_an_update_sent_again_with_its_id_is_dispatched_once(server: ServerProcess) -> None:
    u = unique()
    async with open_stream(server.base_url, path(("match", u))) as stream:
        await stream.position()
        first = post_update(server, topic=u, data="once", id=f"urn:{u}:1")
        again = post_update(server, topic=u, data="once", id=f"urn:{u}:1")
        # The same id with another update is a duplicate: refused, nothing dispatched.
        duplicate = post_update(server, topic=u, data="other", id=f"urn:{u}:1")
        moved = post_update(server, topic=unique(), data="once", id=f"urn:{u}:1")
        marker = publish(server, topic=u, data="marker")
        events = [await stream.next_event() for _ in range(2)]
    assert (first.status_code, first.text) == (again.status_code, again.text) == (200, f"urn:{u}:1")
    assert "idempotent-replayed" not in first.headers
    assert again.headers["idempotent-replayed"] == "true"
    assert duplicate.status_code == moved.status_code == 409
    assert "duplicate" in duplicate.json()["detail"]
    assert [(e.id, e.data) for e in events] == [(f"urn:{u}:1", "once"), (marker, "marker")]


async def test_an_idempotency_key_makes_an_update_without_an_id_dispatched_once(
    server: ServerProcess,
) -> None:
    u = unique()
    key = {"Idempotency-Key": f'"{uuid.uuid4()}"'}
    async with open_stream(server.base_url, path(("match", u))) as stream:
        await stream.position()
        first = post_update(server, key, topic=u, data="keyed")
        again = post_update(server, key, topic=u, data="keyed")
        reused = post_update(server, key, topic=u, data="another")
        malformed = post_update(server, {"Idempotency-Key": "two words"}, topic=u, data="x")
        marker = publish(server, topic=u, data="marker")
        events = [await stream.next_event() for _ in range(2)]
    assert first.status_code == again.status_code == 200
    assert first.text.startswith("urn:uuid:") and again.text == first.text
    assert again.headers["idempotent-replayed"] == "true"
    assert reused.status_code == malformed.status_code == 422
    assert [(e.id, e.data) for e in events] == [(first.text, "keyed"), (marker, "marker")]


async def test_earliest_and_unknown_ids_replay_everything_retained(server: ServerProcess) -> None:
    u = unique()
    for n in range(2):
        publish(server, topic=u, data=str(n))
    for requested in ("earliest", "never-issued"):
        query = path(("match", u), ("last_event_id", requested))
        async with open_stream(server.base_url, query) as stream:
            assert stream.response.headers["mercure-last-event-id"] == "earliest"
            assert [(await stream.next_event()).data for _ in range(2)] == ["0", "1"]


async def test_a_pattern_stream_resumes_across_channels(server: ServerProcess) -> None:
    u = unique()
    first = publish(server, topic=f"https://example.com/{u}/a", data="0", id=f"urn:{u}:0")
    publish(server, topic=f"https://example.com/{u}/b", data="1")
    publish(server, topic=f"https://example.com/other/{u}", data="no")
    publish(server, topic=f"https://example.com/{u}/c", data="2")
    query = path(("match_urlpattern", f"https://example.com/{u}/:x"), ("last_event_id", first))
    async with open_stream(server.base_url, query) as stream:
        assert [(await stream.next_event()).data for _ in range(2)] == ["1", "2"]
        await quiet(stream)


async def test_no_last_event_id_means_no_mercure_header(server: ServerProcess) -> None:
    async with open_stream(server.base_url, path(("match", unique()))) as stream:
        assert "mercure-last-event-id" not in stream.response.headers
        assert stream.response.headers["content-type"].startswith("text/event-stream")


async def test_keep_alive_comments(server: ServerProcess) -> None:
    async with open_stream(server.base_url, path(("match", unique()))) as stream:
        assert await stream.wait_for_comment(timeout=3)


@pytest.mark.parametrize(
    "query",
    [
        "",
        "topic=a",
        "matchx=a",
        "MATCH=a",
        "Match_exact=a",
        "match_regex=a",
        "match_urlpattern=https%3A%2F%2F%5B",
        "match=a%0Ab",
        "match=a%E2%80%AEb",
        "match=",
        "match=" + "a" * 65,
        "match=a&match=b&match=c&match=d&match=e",
        "match=a&last_event_id=x%0Ay",
    ],
)
def test_invalid_subscriptions_are_400(server: ServerProcess, query: str) -> None:
    response = httpx.get(f"{server.base_url}{HUB}?{query}")
    assert response.status_code == 400, (query, response.text)
    assert response.json()["detail"]


def test_a_bad_token_on_subscribe_is_401_invalid_token(server: ServerProcess) -> None:
    response = httpx.get(f"{server.base_url}{HUB}?match=a", headers=bearer("garbage"))
    assert response.status_code == 401
    assert 'error="invalid_token"' in response.headers["www-authenticate"]


async def test_the_cookie_carries_the_token_for_eventsource(server: ServerProcess) -> None:
    u = unique()
    cookie = {"Cookie": f"__Secure-mercure_access_token={SUBSCRIBER}"}
    async with open_stream(server.base_url, path(("match", u)), cookie) as stream:
        await stream.position()
        publish(server, topic=u, data="private", private="")
        assert (await stream.next_event()).data == "private"


async def test_the_stream_closes_at_the_token_exp(server: ServerProcess) -> None:
    short = token(detail(["subscribe"], "*"), exp=int(time.time()) + 2)
    async with open_stream(server.base_url, path(("match", unique())), bearer(short)) as stream:
        started = time.monotonic()
        await stream.until_closed(timeout=6)
        assert time.monotonic() - started < 5


async def test_subscription_events_and_the_subscription_api(server: ServerProcess) -> None:
    u = unique()
    watcher = token(
        detail(
            ["subscribe"],
            {"match": "/.well-known/mercure/subscriptions{/*}?", "match_type": "urlpattern"},
        )
    )
    payload: dict[str, object] = {"tenant": u}
    member = token(detail(["subscribe"], u, payload=payload))
    events_query = path(("match_urlpattern", "/.well-known/mercure/subscriptions/exact/:m/:s"))
    async with open_stream(server.base_url, events_query, bearer(watcher)) as events:
        await events.position()
        async with open_stream(server.base_url, path(("match", u)), bearer(member)) as member_s:
            await member_s.position()
            created = await events.next_event()
            assert created.event == "mercure"
            document = json.loads(created.data)
            subscriber = document["subscriber"]
            assert subscriber.startswith("urn:uuid:")
            topic = (
                f"/.well-known/mercure/subscriptions/exact/{quote(u, safe='')}"
                f"/{quote(subscriber, safe='')}"
            )
            assert document == {
                "id": topic,
                "type": "subscription",
                "match_type": "exact",
                "match": u,
                "subscriber": subscriber,
                "active": True,
                "payload": payload,
            }
            one = api_get(server, topic, watcher)
            assert one.status_code == 200
            assert one.headers["content-type"] == "application/json"
            assert 'rel="mercure"' in one.headers["link"]
            assert "last-event-id=" in one.headers["link"]
            assert one.json() == document
            listed = api_get(
                server, f"/.well-known/mercure/subscriptions/exact/{quote(u, safe='')}", watcher
            ).json()
            assert listed["type"] == "subscriptions"
            assert listed["subscriptions"] == [document]
        ended = json.loads((await events.next_event()).data)
        assert (ended["subscriber"], ended["active"]) == (subscriber, False)
        await asyncio.sleep(0.2)
        gone = api_get(server, topic, watcher)
        assert gone.status_code == 404


def test_the_subscription_api_needs_a_grant_for_the_url(server: ServerProcess) -> None:
    url = server.base_url + "/.well-known/mercure/subscriptions"
    assert httpx.get(url).status_code == 401
    narrow = token(detail(["subscribe"], "/.well-known/mercure/subscriptions/exact/x"))
    response = httpx.get(url, headers=bearer(narrow))
    assert response.status_code == 403
    assert 'error="insufficient_scope"' in response.headers["www-authenticate"]
    exact = token(detail(["subscribe"], "/.well-known/mercure/subscriptions"))
    assert httpx.get(url, headers=bearer(exact)).json()["type"] == "subscriptions"
