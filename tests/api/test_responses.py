"""Streamed responses end to end: a real Herald process relaying a real fake upstream.

Producer runs are counted where they happen — requests reaching the upstream —
so "without running the producer again" is observed, not assumed.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from dataclasses import replace

import httpx
import pytest

from app.wire.parser import SSEMessage
from tests.responses.producers.fake_upstream import Behaviour, FakeUpstream
from tests.support.server import ServerProcess
from tests.support.sse_client import open_stream

pytestmark = pytest.mark.integration

CHUNKS = ("The", " answer", " is", " forty", "-two", ".")


@pytest.fixture
def relay(server_factory: Callable[..., ServerProcess], upstream: FakeUpstream) -> ServerProcess:
    upstream.behaviour = Behaviour(chunks=CHUNKS, chunk_delay_seconds=0.15)
    return server_factory(
        UPSTREAM_BASE_URL=upstream.base_url,
        UPSTREAM_API_KEY="sk-test-key",
        DEFAULT_PRODUCER="openai",
    )


@pytest.fixture(scope="module")
def small_inputs() -> Iterator[ServerProcess]:
    server = ServerProcess({"MAX_INPUT_CHARS": "20"}).start()
    yield server
    server.close()


async def create(server: ServerProcess, **body: object) -> httpx.Response:
    async with httpx.AsyncClient(base_url=server.base_url) as client:
        return await client.post("/api/responses", json=body)


async def created(server: ServerProcess, **body: object) -> dict[str, object]:
    response = await create(server, **body)
    assert response.status_code == 201, response.text
    payload: dict[str, object] = response.json()
    return payload


async def read_all(
    server: ServerProcess, url: str, headers: dict[str, str] | None = None
) -> list[SSEMessage]:
    async with open_stream(server.base_url, url, headers) as stream:
        return await stream.until_closed(timeout=10)


async def test_stream_of_deltas_then_done_then_end(relay: ServerProcess) -> None:
    body = await created(relay, input="What is the answer?")
    assert body["cached"] is False
    assert body["stream_url"] == f"/api/responses/{body['id']}/events"
    events = await read_all(relay, str(body["stream_url"]))
    assert [e.event for e in events] == ["delta"] * len(CHUNKS) + ["done"]
    assert [json.loads(e.data)["text"] for e in events[:-1]] == list(CHUNKS)
    assert json.loads(events[-1].data) == {"text": "".join(CHUNKS), "cached": False}
    assert [e.id for e in events] == [str(i) for i in range(len(CHUNKS) + 1)]


async def test_cache_hit_serves_at_once_without_the_producer(
    relay: ServerProcess, upstream: FakeUpstream
) -> None:
    first = await created(relay, input="Cache me please")
    await read_all(relay, str(first["stream_url"]))
    assert len(upstream.requests) == 1
    # Same input up to whitespace: a hit.
    second = await created(relay, input="  Cache   me please ")
    assert second["cached"] is True
    assert second["id"] != first["id"]
    events = await read_all(relay, str(second["stream_url"]))
    assert json.loads(events[-1].data) == {"text": "".join(CHUNKS), "cached": True}
    assert len(upstream.requests) == 1, "a cache hit must not call the producer"
    # "cache": false bypasses it.
    third = await created(relay, input="Cache me please", cache=False)
    assert third["cached"] is False
    await read_all(relay, str(third["stream_url"]))
    assert len(upstream.requests) == 2


async def test_identical_requests_share_one_run(
    relay: ServerProcess, upstream: FakeUpstream
) -> None:
    bodies = await asyncio.gather(*(created(relay, input="single flight") for _ in range(5)))
    assert len({b["id"] for b in bodies}) == 1
    streams = await asyncio.gather(*(read_all(relay, str(b["stream_url"])) for b in bodies))
    assert len(upstream.requests) == 1
    assert all([e.data for e in s] == [e.data for e in streams[0]] for s in streams)


async def test_run_survives_disconnect_and_resumes_exactly(
    relay: ServerProcess, upstream: FakeUpstream
) -> None:
    body = await created(relay, input="resume me")
    url = str(body["stream_url"])
    async with open_stream(relay.base_url, url) as stream:
        first_two = await stream.events(2)
    # The browser is gone; the run goes on.
    await asyncio.sleep(0.5)
    rest = await read_all(relay, url, {"Last-Event-ID": first_two[-1].id})
    ids = [e.id for e in first_two + rest]
    assert ids == [str(i) for i in range(len(CHUNKS) + 1)]
    assert rest[-1].event == "done"
    assert json.loads(rest[-1].data)["text"] == "".join(CHUNKS)
    assert len(upstream.requests) == 1, "resuming must not run the producer again"
    # Also by query parameter.
    by_query = await read_all(relay, f"{url}?last_event_id=3")
    assert [e.id for e in by_query] == [str(i) for i in range(4, len(CHUNKS) + 1)]


async def test_second_follower_sees_the_same_events(relay: ServerProcess) -> None:
    body = await created(relay, input="two tabs")
    url = str(body["stream_url"])
    async with open_stream(relay.base_url, url) as tab1:
        first = await tab1.next_event()
        async with open_stream(relay.base_url, url) as tab2:
            one, two = await asyncio.gather(tab1.until_closed(10), tab2.until_closed(10))
    one = [first, *one]
    assert [(e.id, e.event, e.data) for e in one] == [(e.id, e.event, e.data) for e in two]
    assert [e.event for e in two] == ["delta"] * len(CHUNKS) + ["done"]


async def test_fully_delivered_run_answers_204(relay: ServerProcess) -> None:
    body = await created(relay, input="finished")
    events = await read_all(relay, str(body["stream_url"]))
    async with httpx.AsyncClient(base_url=relay.base_url) as client:
        again = await client.get(str(body["stream_url"]), headers={"Last-Event-ID": events[-1].id})
    assert again.status_code == 204  # tells EventSource to stop reconnecting


async def test_upstream_failure_midway_is_an_error_event_and_nothing_is_cached(
    relay: ServerProcess, upstream: FakeUpstream
) -> None:
    upstream.behaviour = replace(upstream.behaviour, finish="drop")
    body = await created(relay, input="this will break")
    events = await read_all(relay, str(body["stream_url"]))
    assert events[-1].event == "error"
    assert "upstream" in json.loads(events[-1].data)["detail"]
    assert "sk-test-key" not in events[-1].data
    assert [e.event for e in events[:-1]] == ["delta"] * len(CHUNKS)
    upstream.behaviour = replace(upstream.behaviour, finish="done")
    retry = await created(relay, input="this will break")
    assert retry["cached"] is False
    events = await read_all(relay, str(retry["stream_url"]))
    assert events[-1].event == "done"
    assert len(upstream.requests) == 2


async def test_upstream_http_error_becomes_error_event(
    relay: ServerProcess, upstream: FakeUpstream
) -> None:
    upstream.behaviour = Behaviour(status=500, error_body=b'{"error": {"message": "overloaded"}}')
    body = await created(relay, input="fail fast")
    events = await read_all(relay, str(body["stream_url"]))
    assert [e.event for e in events] == ["error"]
    assert "500" in json.loads(events[0].data)["detail"]


async def test_response_timeout(
    server_factory: Callable[..., ServerProcess], upstream: FakeUpstream
) -> None:
    upstream.behaviour = Behaviour(chunks=CHUNKS, stall_after=2, stall_seconds=5)
    server = server_factory(
        UPSTREAM_BASE_URL=upstream.base_url,
        DEFAULT_PRODUCER="openai",
        RESPONSE_TIMEOUT_SECONDS="0.5",
    )
    body = await created(server, input="slow")
    events = await read_all(server, str(body["stream_url"]))
    assert events[-1].event == "error"
    assert "timed out" in json.loads(events[-1].data)["detail"]


async def test_conversation_context_is_bounded_and_sent_upstream(
    server_factory: Callable[..., ServerProcess], upstream: FakeUpstream
) -> None:
    upstream.behaviour = Behaviour(chunks=("ok",))
    server = server_factory(
        UPSTREAM_BASE_URL=upstream.base_url,
        DEFAULT_PRODUCER="openai",
        MAX_MESSAGES="4",
        MAX_CONTENT_MESSAGES="2",
        MAX_CONTENT_LENGTH="10",
    )
    for turn in range(4):
        body = await created(server, input=f"turn {turn} " + "x" * 50, conversation_id="conv-1")
        await read_all(server, str(body["stream_url"]))
    messages = upstream.requests[-1].body["messages"]
    context, current = messages[:-1], messages[-1]
    assert current == {"role": "user", "content": "turn 3 " + "x" * 50}
    assert len(context) == 4  # MAX_MESSAGES
    assert [m["role"] for m in context] == ["user", "assistant", "user", "assistant"]
    assert [m["content"] for m in context[:2]] == ["", ""]  # beyond MAX_CONTENT_MESSAGES
    assert context[2]["content"] == "turn 2 xxx"  # cut to MAX_CONTENT_LENGTH
    assert context[3]["content"] == "ok"
    # A different conversation (or none) starts empty.
    body = await created(server, input="fresh", conversation_id="conv-2")
    await read_all(server, str(body["stream_url"]))
    assert upstream.requests[-1].body["messages"] == [{"role": "user", "content": "fresh"}]


async def test_echo_producer_by_name(relay: ServerProcess) -> None:
    body = await created(relay, input="echo these words", producer="echo")
    events = await read_all(relay, str(body["stream_url"]))
    assert "".join(json.loads(e.data)["text"] for e in events[:-1]) == "echo these words"


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        ({"input": ""}, "must not be empty"),
        ({"input": "   "}, "must not be empty"),
        ({"input": "x" * 21}, "MAX_INPUT_CHARS"),
        ({"input": "x", "producer": "nope"}, "unknown producer"),
        ({"input": 5}, "string"),
        ({"input": "x", "cache": "yes"}, "boolean"),
        ({"input": "x", "conversation_id": "bad id!"}, "pattern"),
        ({"input": "x", "surprise": 1}, "Extra inputs"),
        ({}, "Field required"),
    ],
)
async def test_bad_requests_are_422(
    small_inputs: ServerProcess, body: dict[str, object], detail: str
) -> None:
    response = await create(small_inputs, **body)
    assert response.status_code == 422
    assert detail in json.dumps(response.json()["detail"])


async def test_unknown_and_expired_ids(server_factory: Callable[..., ServerProcess]) -> None:
    server = server_factory(RESPONSE_RETENTION_SECONDS="0.3", ECHO_DELAY_MS="0")
    async with httpx.AsyncClient(base_url=server.base_url) as client:
        unknown = await client.get("/api/responses/nope/events")
        assert unknown.status_code == 404
        assert "unknown response id" in unknown.json()["detail"]
        body = (await client.post("/api/responses", json={"input": "short lived"})).json()
        await asyncio.sleep(0.1)
        events = await read_all(server, body["stream_url"])
        assert events[-1].event == "done"
        await asyncio.sleep(0.5)
        # Any later request prunes expired runs; then the id is known to be expired.
        await client.post("/api/responses", json={"input": "another"})
        expired = await client.get(body["stream_url"])
        assert expired.status_code == 410
        assert "expired" in expired.json()["detail"]
