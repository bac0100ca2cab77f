"""Replays in pages through the hub (app.sse.replays; the broker's side, contract item 6 of
app.broker.base, is in tests/broker/test_contract.py), over every broker: a replay of many
pages across channels, private events and a pattern arrives complete, in order and once,
with what is published meanwhile coming live after the head; the turns of the gate; and a
real server where a crowd resumes at once under the cap."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.broker import create_broker
from app.broker.base import Draft, PageLimit
from app.core.config import load_settings
from app.sse.connection import Connection
from app.sse.hub import Hub
from app.sse.replays import ReplayGate
from app.wire.event import Event
from app.wire.event_id import parse_event_id
from tests.leak.raw_http import SseSocket, open_sse
from tests.support.redis_server import RedisServer
from tests.support.server import ServerProcess
from tests.support.waiting import wait_until

PAGE = PageLimit(events=7, bytes=900)
BODY = b"data: " + b"x" * 60 + b"\n"


@dataclass(frozen=True)
class Prefix:
    prefix: str

    def matches(self, topic: str) -> bool:
        return topic.startswith(self.prefix)


@pytest.fixture
async def hub(
    broker_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> AsyncIterator[Hub]:
    monkeypatch.chdir(tmp_path)  # no stray .env
    settings = load_settings(
        broker_url=broker_url,
        redis_key_prefix=f"p{uuid.uuid4().hex[:10]}",
        sse_queue_size=1000,
        redis_cluster_shards=4,
    )
    started = Hub(settings, create_broker(settings))
    await started.start()
    yield started
    await started.stop()


def drafts(count: int, start: int = 0) -> list[Draft]:
    """A mix on three channels (``c`` not subscribed exactly): single-channel events,
    events on two channels, private events on ``b`` (granted) and on ``a`` (not)."""
    made = []
    for n in range(start, start + count):
        channels: tuple[str, ...] = (("a",), ("b",), ("c",), ("c", "a"), ("b", "a"))[n % 5]
        private = n % 7 == 3
        made.append(Draft(channels, BODY + b"data: %d\n" % n, private))
    return made


def visible(event: Event, granted: frozenset[str], *, pattern: bool) -> bool:
    subscribed = pattern or not {"a", "b"}.isdisjoint(event.channels)
    return subscribed and event.visible_to(granted)


def in_order(events: list[Event]) -> list[Event]:
    return sorted(events, key=lambda event: event.key)


def ids_in(payload: bytes) -> list[str]:
    return [line[4:] for line in payload.decode().split("\n") if line.startswith("id: ")]


async def publish(hub: Hub, batch: list[Draft]) -> list[Event]:
    published: list[Event] = []
    for start in range(0, len(batch), 10):  # several calls: several milliseconds on Redis
        published += await hub.publish_drafts(batch[start : start + 10])
    return published


@pytest.mark.parametrize("pattern", [False, True], ids=["channels", "pattern"])
async def test_a_paged_replay_is_complete_in_order_and_once_with_live_events_after_head(
    hub: Hub, pattern: bool
) -> None:
    granted = frozenset({"b"})
    published = await publish(hub, drafts(120))
    await settled(hub, in_order(published)[-1])
    cursor = published[9]
    patterns = (Prefix(""),) if pattern else ()
    async with hub.open(["a", "b"], private_channels=granted, patterns=patterns) as connection:
        replay = await hub.catch_up(connection, cursor.id, page=PAGE)
        assert not replay.reset and replay.rest is not None
        pages = [replay.events]
        during: list[Event] = []
        while True:
            if len(pages) == 2:
                # Published while the replay runs: above its head, so live, never in a page.
                during = await publish(hub, drafts(15, start=1000))
            page = await hub.next_page(connection, replay.rest)
            assert page is not None
            if not page:
                break
            pages.append(page)
        replayed = [event.id for page in pages for event in page]
        # Positions order events (on a cluster a batch's events follow their shards).
        after = [e for e in in_order(published) if e.key > cursor.key]
        expected = [e.id for e in after if visible(e, granted, pattern=pattern)]
        assert replayed == expected
        assert len(pages) > 5
        assert all(len(page) <= PAGE.events for page in pages)
        live = [e.id for e in in_order(during) if visible(e, granted, pattern=pattern)]
        await wait_until(lambda: connection.queued >= len(live), what="the live events")
        assert ids_in(taken(connection)) == live


async def settled(hub: Hub, newest: Event) -> None:
    """Wait until a replay's head covers ``newest``: on a cluster the head waits for every
    shard's log to pass it (app.broker.redis_cluster.replay, note 1); elsewhere it already does.
    Pass the highest id (``in_order(...)[-1]``): a cluster's shards number independently,
    so the last event published is not always the newest."""

    async def covered() -> bool:
        head = parse_event_id((await hub.broker.replay([], None)).head)
        return head is not None and head >= newest.key

    await wait_until(covered, what=f"a head at or past {newest.id}")


def taken(connection: Connection) -> bytes:
    payload = b""
    while (item := connection.take()) is not None:
        payload += item[0]
    return payload


# --- the gate: turns in arrival order ---------------------------------------------------


async def test_turns_go_in_arrival_order_and_pass_on() -> None:
    gate = ReplayGate(2)
    first, second, third, fourth = (gate.turn() for _ in range(4))
    assert first.done() and second.done() and not third.done() and not fourth.done()
    assert gate.stats() | {} == {
        "running": 2,
        "waiting": 2,
        "limit": 2,
        "page_bytes": 0,
        "started": 4,
        "waited": 2,
    }
    gate.leave(first)
    assert third.done() and not fourth.done()
    gate.leave(fourth)  # left while waiting: gives up its place
    assert gate.waiting == 0
    gate.leave(second)
    gate.leave(third)
    assert gate.running == 0


async def test_a_turn_handed_to_a_stream_that_leaves_moves_on() -> None:
    gate = ReplayGate(1)
    running, handed, after = gate.turn(), gate.turn(), gate.turn()
    gate.leave(running)
    assert handed.done()
    gate.leave(handed)  # it left before using it
    assert after.done() and gate.running == 1
    gate.leave(after)
    assert gate.running == gate.waiting == 0


# --- a real server: a crowd resumes at once -----------------------------------------------

ADMIN = "a" * 40
CROWD = 10
CONCURRENCY = 3


@pytest.fixture
def replaying_server(
    server_factory: Callable[..., ServerProcess], redis_server: RedisServer
) -> Iterator[ServerProcess]:
    yield server_factory(
        BROKER_URL=redis_server.url,
        REDIS_KEY_PREFIX=f"r{uuid.uuid4().hex[:10]}",
        ADMIN_TOKEN=ADMIN,
        SSE_REPLAY_CONCURRENCY=str(CONCURRENCY),
        SSE_REPLAY_PAGE_EVENTS="20",
        SSE_REPLAY_PAGE_KB="16",
        SSE_SOCKET_SEND_BUFFER_KB="8",
        SSE_TRANSPORT_BUFFER_KB="8",
        SSE_HISTORY_SIZE="1000",
    )


async def replays_of(client: httpx.AsyncClient) -> dict[str, Any]:
    response = await client.get("/api/admin/metrics", headers={"Authorization": f"Bearer {ADMIN}"})
    assert response.status_code == 200
    replays: dict[str, Any] = response.json()["sse"]["replays"]
    return replays


async def test_a_crowd_resuming_at_once_gets_exact_replays_a_few_at_a_time(
    replaying_server: ServerProcess,
) -> None:
    server = replaying_server
    body = [{"channel": "crowd", "data": "z" * 1000} for _ in range(500)]
    async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as client:
        answer = await client.post("/events", json=body)
        assert answer.status_code == 202, answer.text
        ids: list[str] = answer.json()["ids"]
        # Every client stalls (4 KB receive buffer, not read): a replay of 500 KB each
        # cannot finish, so the turns stay taken and the rest of the crowd waits.
        crowd = await asyncio.gather(
            *(
                open_sse(
                    "127.0.0.1",
                    server.port,
                    "/events/crowd",
                    last_event_id=ids[0],
                    receive_buffer=4096,
                )
                for _ in range(CROWD)
            )
        )
        try:
            await crowd_resumes(client, crowd, ids)
        finally:
            for stream in crowd:
                await stream.close()


async def crowd_resumes(client: httpx.AsyncClient, crowd: list[SseSocket], ids: list[str]) -> None:
    deadline = time.monotonic() + 15
    while True:
        replays = await replays_of(client)
        # Stalled: the turns taken, the rest waiting, the pages of the running ones unwritten.
        if replays["waiting"] == CROWD - CONCURRENCY and replays["page_bytes"]:
            break
        assert time.monotonic() < deadline, replays
        await asyncio.sleep(0.05)
    assert replays["running"] == CONCURRENCY
    assert 0 < replays["page_bytes"] <= CONCURRENCY * (16 * 1024 + 1100)
    # A waiting stream hears retry: and heartbeats (SSE_PING_SECONDS=0.3), no events.
    for stream in crowd:
        await stream.read_until(b"retry: ")
    waiting = [s for s in crowd if b"id: " not in s.received]
    assert len(waiting) == CROWD - CONCURRENCY
    await waiting[0].read_until(b": ping", timeout=5)
    assert b"id: " not in waiting[0].received
    peak = 0

    async def read_all(stream: SseSocket) -> list[str]:
        # What read_until took is parsed first: it keeps the raw bytes only.
        already = stream.parser.feed(stream.body.feed(bytes(stream.received)))
        got = [message.id for message in already if message.data]
        while len(got) < len(ids) - 1:
            for message in await stream.next_messages(timeout=20):
                if message.data:
                    got.append(message.id)
        return got

    readers = asyncio.gather(*(read_all(stream) for stream in crowd))
    while not readers.done():
        peak = max(peak, (await replays_of(client))["running"])
        await asyncio.sleep(0.02)
    for got in await readers:
        assert got == ids[1:]  # every event after the cursor, in order, once
    assert peak <= CONCURRENCY

    async def all_done() -> bool:
        return bool((await replays_of(client))["running"] == 0)

    await wait_until(all_done, what="every replay done")
    final = await replays_of(client)
    assert final["waiting"] == final["page_bytes"] == 0
    assert final["started"] == CROWD and final["waited"] >= CROWD - CONCURRENCY
