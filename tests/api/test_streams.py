"""The subscribe side of the hub, end to end against a real server process."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import Callable, Iterator

import httpx
import pytest

from app.wire.event_id import parse_event_id
from tests.conftest import FAST_TIMERS
from tests.support.server import ServerProcess
from tests.support.sse_client import open_stream
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration


# The hub's behaviour must hold on every broker: this whole module runs once per broker.
@pytest.fixture(scope="module")
def herald(broker_env: Callable[[], dict[str, str]]) -> Iterator[ServerProcess]:
    server = ServerProcess({**FAST_TIMERS, **broker_env()}).start()
    yield server
    server.close()


@pytest.fixture
def server_factory(
    server_factory: Callable[..., ServerProcess], broker_env: Callable[[], dict[str, str]]
) -> Callable[..., ServerProcess]:
    return lambda **env: server_factory(**broker_env(), **env)


async def publish(base_url: str, channel: str, data: object, event: str | None = None) -> str:
    body: dict[str, object] = {"data": data}
    if event is not None:
        body["event"] = event
    async with httpx.AsyncClient(base_url=base_url) as client:
        response = await client.post(f"/events/{channel}", json=body)
    assert response.status_code == 202, response.text
    event_id: str = response.json()["id"]
    return event_id


async def connections(base_url: str) -> int:
    async with httpx.AsyncClient(base_url=base_url, timeout=5) as client:
        count: int = (await client.get("/health")).json()["connections"]
    return count


async def wait_for_subscribers(base_url: str, count: int, timeout: float = 15.0) -> None:
    # A deadline, not a number of tries: on a loaded machine each /health may take a while.
    async def subscribed() -> bool:
        return await connections(base_url) >= count

    await wait_until(subscribed, timeout=timeout, what=f"{count} connections")


async def wait_for_no_streams(base_url: str) -> None:
    async def none_left() -> bool:
        return await connections(base_url) == 0

    await wait_until(none_left, what="every stream unregistered")


async def wait_for_log(server: ServerProcess, text: str) -> None:
    await wait_until(lambda: text in server.logs(), what=repr(text))


async def test_round_trip_multiline_unicode_and_json(herald: ServerProcess) -> None:
    text = "first line\nsecond line: ünïcödé ✓ 🚀\n\n  indented"
    async with open_stream(herald.base_url, "/events/rt") as stream:
        await wait_for_subscribers(herald.base_url, 1)
        first = await publish(herald.base_url, "rt", text, event="note")
        second = await publish(herald.base_url, "rt", {"a": [1, 2.5, None, True], "s": "x\ny"})
        third = await publish(herald.base_url, "rt", "")
        got = await stream.events(3)
    assert (got[0].event, got[0].data, got[0].id) == ("note", text, first)
    assert (got[1].event, json.loads(got[1].data), got[1].id) == (
        "message",
        {"a": [1, 2.5, None, True], "s": "x\ny"},
        second,
    )
    assert got[1].data == '{"a":[1,2.5,null,true],"s":"x\\ny"}'  # compact JSON
    assert (got[2].data, got[2].id) == ("", third)


async def test_text_plain_body_is_the_data_string(herald: ServerProcess) -> None:
    async with open_stream(herald.base_url, "/events/plain") as stream:
        await wait_for_subscribers(herald.base_url, 1)
        async with httpx.AsyncClient(base_url=herald.base_url) as client:
            response = await client.post(
                "/events/plain",
                content="line 1\nline 2 ✓".encode(),
                headers={"content-type": "text/plain; charset=utf-8"},
            )
        assert response.status_code == 202
        assert (await stream.next_event()).data == "line 1\nline 2 ✓"


async def test_stream_headers_and_retry_first(herald: ServerProcess) -> None:
    async with open_stream(herald.base_url, "/events/headers") as stream:
        headers = stream.response.headers
        assert headers["content-type"].startswith("text/event-stream")
        assert headers["cache-control"] in ("no-store", "no-cache")
        assert headers["x-accel-buffering"] == "no"
        await wait_for_subscribers(herald.base_url, 1)
        await publish(herald.base_url, "headers", "x")
        await stream.next_event()
        assert stream.received.startswith(b"retry: 3000\n\n")


async def test_multi_channel_stream_and_slash_names(herald: ServerProcess) -> None:
    path = "/events?channel=orders/42&channel=alerts&channel=orders/42"
    async with open_stream(herald.base_url, path) as stream:
        await wait_for_subscribers(herald.base_url, 1)
        ids = [
            await publish(herald.base_url, "orders/42", "o1"),
            await publish(herald.base_url, "alerts", "a1"),
            await publish(herald.base_url, "unrelated", "nope"),
            await publish(herald.base_url, "orders/42", "o2"),
        ]
        got = await stream.events(3)
    assert [m.data for m in got] == ["o1", "a1", "o2"]
    assert [m.id for m in got] == [ids[0], ids[1], ids[3]]


@pytest.mark.parametrize("how", ["header", "query"])
async def test_replay_after_last_event_id(herald: ServerProcess, how: str) -> None:
    channel = f"replay-{how}"
    ids = [await publish(herald.base_url, channel, f"m{i}") for i in range(5)]
    if how == "header":
        path, headers = f"/events/{channel}", {"Last-Event-ID": ids[1]}
    else:
        path, headers = f"/events/{channel}?last_event_id={ids[1]}", {}
    async with open_stream(herald.base_url, path, headers) as stream:
        replayed = await stream.events(3)
        await wait_for_subscribers(herald.base_url, 1)
        live_id = await publish(herald.base_url, channel, "live")
        live = await stream.next_event()
    assert [m.data for m in replayed] == ["m2", "m3", "m4"]
    assert [m.id for m in replayed] == ids[2:]
    assert (live.data, live.id) == ("live", live_id)


async def test_multi_channel_replay_with_one_id(herald: ServerProcess) -> None:
    plan = [("mc-a", "a1"), ("mc-b", "b1"), ("mc-a", "a2"), ("mc-b", "b2"), ("mc-a", "a3")]
    ids = [await publish(herald.base_url, channel, data) for channel, data in plan]
    headers = {"Last-Event-ID": ids[1]}
    async with open_stream(herald.base_url, "/events?channel=mc-a&channel=mc-b", headers) as s:
        replayed = await s.events(3)
    assert [m.data for m in replayed] == ["a2", "b2", "a3"]


async def test_no_gap_no_duplicate_between_replay_and_live(herald: ServerProcess) -> None:
    """Publishing continuously while a client resumes: every id exactly once, in order."""
    channel = "seamless"
    first = await publish(herald.base_url, channel, 0)
    stop = asyncio.Event()
    published: list[str] = [first]

    async def keep_publishing() -> None:
        i = 1
        while not stop.is_set():
            published.append(await publish(herald.base_url, channel, i))
            i += 1

    publisher = asyncio.create_task(keep_publishing())
    await asyncio.sleep(0.1)
    async with open_stream(herald.base_url, f"/events/{channel}", {"Last-Event-ID": first}) as s:
        await asyncio.sleep(0.3)
        stop.set()
        await publisher
        expected = published[1:]
        got = await s.events(len(expected))
    assert [m.id for m in got] == expected


async def test_unknown_or_garbage_last_event_id_gets_reset_then_live(
    herald: ServerProcess,
) -> None:
    for bad in [b"not-an-id", b"99999999999999-0", "\u00b2\u00b3".encode(), b"x" * 500]:
        async with open_stream(herald.base_url, "/events/resets", {"Last-Event-ID": bad}) as s:
            reset = await s.next_event()
            assert reset.event == "reset"
            assert json.loads(reset.data)["reason"] == "unknown_id"
            await wait_for_subscribers(herald.base_url, 1)
            live_id = await publish(herald.base_url, "resets", "after")
            live = await s.next_event()
            assert (live.data, live.id) == ("after", live_id)


async def test_too_old_id_gets_reset(
    server_factory: Callable[..., ServerProcess], broker_env: Callable[[], dict[str, str]]
) -> None:
    server = server_factory(SSE_HISTORY_SIZE="3")
    # Enough to be trimmed on every broker (Redis trims MAXLEN ~ by whole stream nodes).
    ids = [await publish(server.base_url, "short", i) for i in range(250)]
    async with open_stream(server.base_url, "/events/short", {"Last-Event-ID": ids[0]}) as s:
        reset = await s.next_event()
    assert reset.event == "reset"
    assert json.loads(reset.data) == {"reason": "history_expired", "last_event_id": ids[0]}
    if broker_env()["BROKER_URL"].startswith("redis+cluster"):
        # The head is a position just below every log shard's frontier, not always an
        # event's id (app/broker/redis_cluster/replay.py note 1); what is above it arrives live.
        assert parse_event_id(reset.id) is not None
    else:
        assert reset.id == ids[-1]  # the next resume starts from the newest id
    # An id still inside the history replays exactly.
    async with open_stream(server.base_url, "/events/short", {"Last-Event-ID": ids[-3]}) as s:
        assert [m.data for m in await s.events(2)] == ["248", "249"]


async def test_heartbeat_comment_arrives(herald: ServerProcess) -> None:
    async with open_stream(herald.base_url, "/events/heartbeat") as stream:
        assert await stream.wait_for_comment(timeout=3) == "ping"


async def test_idle_stream_is_reaped_despite_heartbeats(
    server_factory: Callable[..., ServerProcess],
) -> None:
    server = server_factory(SSE_IDLE_TIMEOUT_SECONDS="1")
    started = time.monotonic()
    async with open_stream(server.base_url, "/events/quiet") as stream:
        await stream.until_closed(timeout=5)
        assert stream.parser.comments, "heartbeats were sent meanwhile"
    # Not before its idle timeout, however slow the machine (the reaper's deadline itself
    # is tested on a driven clock: tests/sse/test_hub.py).
    assert time.monotonic() - started >= 1
    await wait_for_log(server, "reason=idle")
    assert await connections(server.base_url) == 0


async def test_active_stream_is_not_reaped(server_factory: Callable[..., ServerProcess]) -> None:
    server = server_factory(SSE_IDLE_TIMEOUT_SECONDS="1")
    async with open_stream(server.base_url, "/events/busy") as stream:
        for i in range(8):
            await publish(server.base_url, "busy", i)
            assert (await stream.next_event()).data == str(i)
            await asyncio.sleep(0.25)
        assert not stream.ended
    assert "reason=idle" not in server.logs()


async def test_connection_cap_answers_503_with_retry_after(
    server_factory: Callable[..., ServerProcess],
) -> None:
    server = server_factory(SSE_MAX_CONNECTIONS="2")
    async with (
        open_stream(server.base_url, "/events/cap"),
        open_stream(server.base_url, "/events/cap"),
    ):
        await wait_for_subscribers(server.base_url, 2)
        async with httpx.AsyncClient(base_url=server.base_url) as client:
            refused = await client.get("/events/cap")
    assert refused.status_code == 503
    assert refused.headers["retry-after"].isdigit()
    assert "too many open streams" in refused.json()["detail"]
    # A slot frees when a stream ends.
    await wait_for_no_streams(server.base_url)
    async with open_stream(server.base_url, "/events/cap") as stream:
        assert stream.response.status_code == 200


async def test_a_refused_event_source_is_deferred_not_failed(
    server_factory: Callable[..., ServerProcess],
) -> None:
    # EventSource gives up for good on any status but 200: a browser at the cap is told when
    # to come back instead, with a jittered retry and no id (its Last-Event-ID stays).
    server = server_factory(SSE_MAX_CONNECTIONS="1", SSE_RETRY_MS="1000")
    browser = {"Accept": "text/event-stream", "Last-Event-ID": "1-0"}
    async with open_stream(server.base_url, "/events/cap"):
        await wait_for_subscribers(server.base_url, 1)
        async with httpx.AsyncClient(base_url=server.base_url) as client:
            retries = set()
            for _ in range(5):
                deferred = await client.get("/events/cap", headers=browser)
                assert deferred.status_code == 200
                assert deferred.headers["content-type"].startswith("text/event-stream")
                assert deferred.headers["x-herald-deferred"] == "1"
                assert deferred.headers["connection"] == "close"
                lines = deferred.text.splitlines()
                assert lines[0].startswith(": ") and "too many open streams" in lines[0]
                assert not any(line.startswith(("id:", "data:")) for line in lines)
                [retry] = [int(line[7:]) for line in lines if line.startswith("retry: ")]
                retries.add(retry)
            # The refusal's Retry-After (5 s) plus up to as much again.
            assert all(5000 <= retry < 10_000 for retry in retries)
            assert len(retries) > 1
            api = await client.get("/events/cap", headers={"Accept": "application/json"})
            assert api.status_code == 503 and api.headers["retry-after"] == "5"


async def test_overflow_disconnect_then_resume_without_loss(
    server_factory: Callable[..., ServerProcess],
) -> None:
    """A client that stops reading is cut off; it resumes from history and misses nothing."""
    server = server_factory(SSE_QUEUE_SIZE="5", SSE_HISTORY_MAX_MB="64")
    blob = "x" * 60_000  # large events fill the socket buffers quickly
    async with open_stream(server.base_url, "/events/flood") as stream:
        await wait_for_subscribers(server.base_url, 1)
        ids = [await publish(server.base_url, "flood", f"{i}:{blob}") for i in range(150)]
        got = await stream.until_closed(timeout=10)
    assert stream.ended
    assert len(got) < len(ids), "the stream was cut before everything arrived"
    last = got[-1].id if got else None
    assert [m.id for m in got] == ids[: len(got)]
    await wait_for_log(server, "reason=overflow")
    headers = {"Last-Event-ID": last} if last else {}
    path = "/events/flood" if last else f"/events/flood?last_event_id={ids[0]}"
    async with open_stream(server.base_url, path, headers) as resumed:
        rest = await resumed.events(len(ids) - len(got) - (0 if last else 1), timeout=10)
    # Every event after the last one received, once and in order; a stream cut before its
    # first event resumed from ids[0], so its rest starts after that.
    expected = ids[len(got) :] if last else ids[1:]
    assert [m.id for m in rest] == expected


async def test_overflow_drop_oldest_marks_the_gap(
    server_factory: Callable[..., ServerProcess],
) -> None:
    server = server_factory(SSE_QUEUE_SIZE="5", SSE_OVERFLOW="drop_oldest")
    blob = "y" * 60_000
    async with open_stream(server.base_url, "/events/lossy") as stream:
        await wait_for_subscribers(server.base_url, 1)
        ids = [await publish(server.base_url, "lossy", f"{i}:{blob}") for i in range(150)]
        received = []
        gaps = []
        while len(received) < 1 or received[-1] != ids[-1]:
            message = await stream.next_event(timeout=10)
            if message.event == "gap":
                gaps.append(json.loads(message.data)["dropped"])
            else:
                received.append(message.id)
        assert not stream.ended, "drop_oldest keeps the stream open"
    assert gaps and sum(gaps) == len(ids) - len(received)
    assert received == sorted(received, key=lambda i: tuple(map(int, i.split("-"))))


async def test_head_does_not_open_a_stream(herald: ServerProcess) -> None:
    async with httpx.AsyncClient(base_url=herald.base_url, timeout=3) as client:
        response = await client.head("/events/head")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")


async def test_sigterm_closes_streams_within_two_seconds(
    server_factory: Callable[..., ServerProcess],
) -> None:
    server = server_factory(SSE_RETRY_MS="1000")
    async with (
        open_stream(server.base_url, "/events/bye") as one,
        open_stream(server.base_url, "/events?channel=bye&channel=other") as two,
    ):
        await wait_for_subscribers(server.base_url, 2)
        started = time.monotonic()
        server.signal(signal.SIGTERM)
        await asyncio.gather(one.until_closed(timeout=2), two.until_closed(timeout=2))
        assert server.process is not None
        exit_code = await asyncio.to_thread(server.process.wait, 2)
        elapsed = time.monotonic() - started
    # uvicorn re-raises the captured SIGTERM after a clean shutdown.
    assert exit_code in (0, -signal.SIGTERM)
    assert elapsed < 2.0
    # The farewell frame tells clients to come back after a jittered delay.
    assert one.parser.retry is not None and 1000 <= one.parser.retry <= 2000
    assert server.logs().count("reason=shutdown") == 2


async def test_stream_end_is_logged_once_with_reason_duration_and_count(
    server_factory: Callable[..., ServerProcess],
) -> None:
    server = server_factory()
    async with open_stream(server.base_url, "/events/logged") as stream:
        await wait_for_subscribers(server.base_url, 1)
        await publish(server.base_url, "logged", 1)
        await publish(server.base_url, "logged", 2)
        await stream.events(2)
    await asyncio.sleep(0.3)
    lines = [line for line in server.logs().splitlines() if "stream closed" in line]
    assert len(lines) == 1
    assert "reason=client_gone" in lines[0]
    assert "delivered=2" in lines[0]
    assert "duration=" in lines[0]


async def test_disconnected_clients_leave_the_registry(herald: ServerProcess) -> None:
    for _ in range(20):
        async with open_stream(herald.base_url, "/events/churn"):
            pass
    await wait_for_no_streams(herald.base_url)
