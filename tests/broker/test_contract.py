"""The broker contract (``app.broker.base``), once, over every broker: ``memory://``,
``redis://`` and ``redis+cluster://``, each built by ``create_broker`` from its URL, as the
server builds it.

Ids order events across channels; a replay returns exactly what follows a cursor, with a
head that live delivery continues after; a new stream gets the head and nothing else; an id
the broker never issued resets with ``unknown_id``, a cursor older than what history keeps
with ``history_expired``; a batch is numbered all at once; paged replays are bounded and
report what history lost under them; a keyed publish is numbered once per key within its
window, whichever worker gets it. What only one broker does (sweeping, faults, cluster
topology) is tested beside that broker.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from app.broker import create_broker
from app.broker.base import (
    Broker,
    Draft,
    IdempotencyConflictError,
    PageLimit,
    PublishKey,
    page_bytes,
)
from app.broker.idempotency import fingerprint
from app.core.config import Settings, load_settings
from app.wire.encoding import encode_frame
from app.wire.event import Event
from app.wire.event_id import EARLIEST, EventKey, format_event_id, parse_event_id
from tests.support.publishing import publish_one
from tests.support.redis_cluster import RedisCluster
from tests.support.waiting import wait_until

HISTORY_SIZE = 100
CLUSTER_SHARDS = 4  # several shards per master: channels and batches span shards
CHANNELS = [f"ch{i}" for i in range(12)]
BODY = b"data: " + b"x" * 60 + b"\n"


@dataclass
class Backend:
    """A connected broker and what its listener got: one worker, without the hub."""

    broker: Broker
    trim: Callable[[str, int], Awaitable[None]]
    """Keep exactly the ``keep`` newest events of a channel's history (what a broker's own
    trimming does in its own time)."""
    single_log: bool
    """Every event is an entry of one log: the head is the newest event's id, and a batch
    is numbered in request order. A cluster merges several logs: its head is a position
    just below every shard's frontier, and a batch spanning shards follows its shards."""
    settings: Settings
    received: list[Event] = field(default_factory=list)
    resyncs: list[str] = field(default_factory=list)
    others: list[Broker] = field(default_factory=list)

    async def another_worker(
        self, listener: Callable[[Event], None] = lambda event: None, **overrides: object
    ) -> Broker:
        """A second broker on the same backplane (the same process's broker on
        ``memory://``, which has no other worker), as another worker would have;
        ``overrides``: settings of its own (a new broker, with ``listener``, even on
        ``memory://``)."""
        if self.settings.broker_url.startswith("memory") and not overrides:
            return self.broker
        broker = create_broker(self.settings.model_copy(update=overrides))
        await broker.connect(listener)
        self.others.append(broker)
        return broker

    async def head(self) -> EventKey:
        key = parse_event_id((await self.broker.replay([], None)).head)
        assert key is not None
        return key

    async def settled(self, *events: Event) -> None:
        """Until a replay's head covers ``events``: on a cluster the head waits for every
        shard's log to pass them; a single log's head is there at once. The highest id
        counts, not the last published: a batch across shards follows its shards."""
        newest = max(events, key=lambda event: event.key)

        async def covered() -> bool:
            return await self.head() >= newest.key

        await wait_until(covered, what=f"a head at or past {newest.id}")

    async def publish(self, channels: Iterable[str], body: bytes = BODY) -> list[Event]:
        return [await publish_one(self.broker, channel, body) for channel in channels]


@pytest.fixture
async def backend(
    broker_url: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> AsyncIterator[Backend]:
    monkeypatch.chdir(tmp_path)  # no stray .env
    settings = load_settings(
        broker_url=broker_url,
        redis_key_prefix=f"k{uuid.uuid4().hex[:10]}",  # a fresh, empty history per test
        redis_cluster_shards=CLUSTER_SHARDS,
        sse_history_size=HISTORY_SIZE,
    )
    broker = create_broker(settings)
    scheme = broker_url.split("://", 1)[0]
    if scheme == "memory":
        trim = _memory_trim(broker)
    elif scheme == "redis+cluster":
        trim = _cluster_trim(broker, request.getfixturevalue("redis_cluster"))
    else:
        trim = _redis_trim(broker)
    backend = Backend(broker, trim, single_log=scheme != "redis+cluster", settings=settings)
    await broker.connect(backend.received.append, backend.resyncs.append)
    try:
        yield backend
    finally:
        for other in backend.others:
            await other.disconnect()
        await broker.disconnect()
    assert backend.resyncs == []  # nothing here may make a live feed skip


def _memory_trim(broker: Broker) -> Callable[[str, int], Awaitable[None]]:
    async def trim(channel: str, keep: int) -> None:
        broker.trim_history(keep)  # every channel: the tests trim one that is alone

    return trim


def _redis_trim(broker: Any) -> Callable[[str, int], Awaitable[None]]:
    async def trim(channel: str, keep: int) -> None:
        await broker.client.xtrim(broker.key(channel), maxlen=keep, approximate=False)

    return trim


def _cluster_trim(broker: Any, cluster: RedisCluster) -> Callable[[str, int], Awaitable[None]]:
    async def trim(channel: str, keep: int) -> None:
        key = broker.key(channel)
        async with aioredis.Redis(port=cluster.master_of(key)) as client:
            await client.xtrim(key, maxlen=keep, approximate=False)
            # Replays read replicas: the trim is there before the test replays.
            await client.execute_command("WAIT", 1, 1000)

    return trim


def ids(events: Iterable[Event]) -> list[str]:
    return [event.id for event in events]


def in_order(events: Iterable[Event]) -> list[Event]:
    return sorted(events, key=lambda event: event.key)


# --- ids: one order for every channel -------------------------------------------------


async def test_ids_increase_across_channels_and_frame_the_body(backend: Backend) -> None:
    published = await backend.publish("abcabcab")
    keys = [event.key for event in published]
    assert keys == sorted(set(keys)), "one publish after another: increasing, never shared"
    for event, channel in zip(published, "abcabcab", strict=True):
        assert parse_event_id(event.id) == event.key
        assert event.channels == (channel,)
        assert event.frame == encode_frame(event.id, BODY)


async def test_a_resume_between_same_millisecond_events_of_two_channels_misses_none(
    backend: Backend,
) -> None:
    """Regression: each Redis channel stream numbered its own entries, so events of two
    channels published in one millisecond both got ``<ms>-0``, and a resume from the first
    skipped the second on a stream of both channels."""
    first, twin = await backend.publish(["chaos/c", "chaos/d"])
    await backend.settled(twin)
    replay = await backend.broker.replay(["chaos/c", "chaos/d"], first.id)
    assert ids(replay.events) == [twin.id] and not replay.reset


async def test_the_listener_gets_every_event_of_its_channels_in_id_order(
    backend: Backend,
) -> None:
    for channel in ("a", "b"):
        await backend.broker.subscribe(channel)
    published = await backend.publish("abbaab")
    published += await backend.broker.publish([Draft(("a",), BODY), Draft(("b",), BODY)])
    wanted = {event.id for event in published}

    def seen() -> list[str]:
        return [event.id for event in backend.received if event.id in wanted]

    await wait_until(lambda: len(seen()) >= len(published), what="every event delivered")
    assert seen() == ids(in_order(published))


# --- replay: exact from any cursor ----------------------------------------------------


async def test_a_new_stream_gets_no_events_and_the_head_it_goes_live_after(
    backend: Backend,
) -> None:
    broker = backend.broker
    await broker.subscribe("a")
    before = await backend.publish("ab")
    await backend.settled(*before)
    new = await broker.replay(["a"], None)
    assert new.events == [] and not new.reset and new.rest is None
    head = parse_event_id(new.head)
    assert head is not None and head >= before[-1].key
    if backend.single_log:
        assert new.head == before[-1].id
    after = await backend.publish("aba")
    # Everything after the head reaches the listener, and a resume from it replays exactly it.
    await wait_until(lambda: after[-1].id in ids(backend.received), what="live delivery")
    await backend.settled(*after)
    resumed = await broker.replay(["a"], new.head)
    assert ids(resumed.events) == [after[0].id, after[2].id] and not resumed.reset


async def test_a_stream_that_starts_before_anything_was_published_misses_nothing(
    backend: Backend,
) -> None:
    broker = backend.broker
    start = await broker.replay(["a"], None)
    garbage = await broker.replay(["a"], "garbage")
    assert start.events == [] and not start.reset
    assert garbage.reset and garbage.reason == "unknown_id" and garbage.events == []
    (first,) = await backend.publish("a")
    await backend.settled(first)
    # A client cut before its first event, or reset on an empty broker, resumes exactly.
    for cursor in (start.head, garbage.head):
        replay = await broker.replay(["a"], cursor)
        assert ids(replay.events) == [first.id] and not replay.reset, cursor


async def test_replay_from_any_id_is_exact_for_any_set_of_channels(backend: Backend) -> None:
    broker = backend.broker
    start = (await broker.replay(CHANNELS, None)).head
    published = await backend.publish(CHANNELS[(i * 5) % len(CHANNELS)] for i in range(30))
    await backend.settled(*published)
    order = in_order(published)
    head = await backend.head()
    subsets = [CHANNELS[:1], CHANNELS[:3], CHANNELS[3:9], CHANNELS[::2], CHANNELS]
    for cursor in [start, *ids(order)]:
        after = parse_event_id(cursor)
        assert after is not None
        for channels in subsets:
            replay = await broker.replay(channels, cursor)
            expected = [e.id for e in order if e.key > after and e.channels[0] in channels]
            assert not replay.reset, (cursor, channels, replay.reason)
            assert ids(replay.events) == expected, (cursor, channels)
            replay_head = parse_event_id(replay.head)
            assert replay_head is not None and replay_head >= head
    # From the newest id: nothing to replay, and not a reset.
    newest = await broker.replay(CHANNELS, order[-1].id)
    assert newest.events == [] and not newest.reset


UNKNOWN_IDS = ["", "nope", "12-x", "\u00b2\u00b3", "9" * 70, "9" * 500, "urn:never-published"]


@pytest.mark.parametrize("unknown", UNKNOWN_IDS)
async def test_an_id_that_is_not_a_position_resets_with_unknown_id(
    backend: Backend, unknown: str
) -> None:
    (last,) = await backend.publish("a")
    await backend.settled(last)
    replay = await backend.broker.replay(["a"], unknown)
    assert replay.reset and replay.reason == "unknown_id" and replay.events == []
    head = parse_event_id(replay.head)
    assert head is not None and head >= last.key  # it goes live from the head


async def test_an_id_never_issued_resets_with_unknown_id(backend: Backend) -> None:
    (last,) = await backend.publish("a")
    await backend.settled(last)
    ms, seq = last.key
    future = [(ms + 60_000, 0), (ms * 2, 0)]
    if backend.single_log:
        # One log's head is its newest event: any position past it was never issued.
        future += [(ms, seq + 1), (ms + 1, 0)]
    for key in future:
        replay = await backend.broker.replay(["a"], format_event_id(key))
        assert replay.reset and replay.reason == "unknown_id" and replay.events == [], key


async def test_a_trimmed_history_resets_exactly_when_an_unseen_event_was_trimmed(
    backend: Backend,
) -> None:
    events = await backend.publish("aaaaa")
    await backend.settled(*events)
    await backend.trim("a", 2)  # events 0-2 are gone
    missed_one = await backend.broker.replay(["a"], events[1].id)
    assert missed_one.reset and missed_one.reason == "history_expired"
    assert missed_one.events == []
    head = parse_event_id(missed_one.head)
    assert head is not None and head >= events[-1].key
    # The newest trimmed id is the oldest cursor that still replays exactly.
    saw_the_last_trimmed = await backend.broker.replay(["a"], events[2].id)
    assert not saw_the_last_trimmed.reset
    assert ids(saw_the_last_trimmed.events) == ids(events[3:])


# --- what an event carries --------------------------------------------------------------


async def test_the_private_flag_travels_to_the_listener_and_the_replay(backend: Backend) -> None:
    broker = backend.broker
    await broker.subscribe("secret")
    start = (await broker.replay(["secret"], None)).head
    private = await publish_one(broker, "secret", b"data: x\n", private=True)
    public = await publish_one(broker, "secret", b"data: y\n")
    expected = [(private.id, True), (public.id, False)]
    assert [(e.id, e.private) for e in (private, public)] == expected
    await wait_until(lambda: public.id in ids(backend.received), what="live delivery")
    received = [e for e in backend.received if e.channels == ("secret",)]
    assert [(e.id, e.private) for e in received] == expected
    await backend.settled(public)
    replay = await broker.replay(["secret"], start)
    assert [(e.id, e.private) for e in replay.events] == expected


async def test_an_event_on_several_channels_is_one_event_with_one_id(backend: Backend) -> None:
    broker = backend.broker
    x, y, z = CHANNELS[:3]
    for channel in (x, y, z):
        await broker.subscribe(channel)
    start = (await broker.replay([x, y, z], None)).head
    (before,) = await backend.publish([z])
    (multi,) = await broker.publish([Draft((x, y), b"data: multi\n")])
    (after,) = await backend.publish([z])
    assert multi.channels == (x, y)
    await wait_until(lambda: after.id in ids(backend.received), what="live delivery")
    # Delivered once, under the id the publisher got, with all its channels.
    assert [e.id for e in backend.received if e.channels == (x, y)] == [multi.id]
    await backend.settled(after)
    for stream in ([x], [y], [x, y], [x, y, z]):
        replayed = await broker.replay(stream, start)
        assert ids(e for e in replayed.events if e.channels == (x, y)) == [multi.id], stream
        resumed = await broker.replay(stream, multi.id)
        assert multi.id not in ids(resumed.events), stream
    just_before = await broker.replay([y], before.id)
    assert ids(just_before.events) == [multi.id]


async def test_a_publisher_id_is_the_events_id_and_a_cursor(backend: Backend) -> None:
    broker = backend.broker
    supplied = f"urn:event:{uuid.uuid4().hex}"
    (tagged,) = await broker.publish([Draft(("a",), b"data: tagged\n", event_id=supplied)])
    assert tagged.id == supplied and tagged.frame.startswith(f"id: {supplied}\n".encode())
    later = await backend.publish("aba")
    await backend.settled(*later)
    replay = await broker.replay(["a", "b"], supplied)
    assert ids(replay.events) == ids(later) and not replay.reset


# --- batches ----------------------------------------------------------------------------


async def test_a_batch_is_numbered_at_once_in_request_order_per_channel(
    backend: Backend,
) -> None:
    broker = backend.broker
    for channel in CHANNELS[:6]:
        await broker.subscribe(channel)
    batches = [
        [Draft((CHANNELS[(b + i) % 6],), b"data: %d-%d\n" % (b, i)) for i in range(12)]
        for b in range(3)
    ]
    answers = await asyncio.gather(*(broker.publish(batch) for batch in batches))
    published = [event for answer in answers for event in answer]
    for batch, answer in zip(batches, answers, strict=True):
        # Each draft's event, in the order of the request.
        assert [e.channels for e in answer] == [d.channels for d in batch]
        assert [e.frame for e in answer] == [
            encode_frame(e.id, d.body) for e, d in zip(answer, batch, strict=True)
        ]
    assert len(set(ids(published))) == len(published)
    for channel in CHANNELS[:6]:
        for answer in answers:
            keys = [e.key for e in answer if e.channels == (channel,)]
            assert keys == sorted(keys), channel
    await wait_until(lambda: len(backend.received) >= len(published), what="every event")
    assert ids(backend.received) == ids(in_order(published))
    if backend.single_log:
        # One step of the sequence each: in request order, and no other batch between.
        order = ids(in_order(published))
        for answer in answers:
            assert [e.key for e in answer] == sorted(e.key for e in answer)
            first = order.index(answer[0].id)
            assert order[first : first + len(answer)] == ids(answer)


# --- keyed publishes: once per key -------------------------------------------------------


def keyed(drafts: Sequence[Draft]) -> PublishKey:
    return PublishKey(f"key-{uuid.uuid4().hex}", fingerprint(drafts))


async def delivered_so_far(backend: Backend) -> list[Event]:
    """Everything the listener got up to now: a marker event published last has arrived."""
    await backend.broker.subscribe("marker")
    (marker,) = await backend.publish(["marker"])
    await wait_until(lambda: marker.id in ids(backend.received), what="the marker")
    return [event for event in backend.received if event.channels != ("marker",)]


async def test_a_keyed_publish_sent_again_is_not_published_again_and_gets_the_same_ids(
    backend: Backend,
) -> None:
    broker = backend.broker
    for channel in CHANNELS[:4]:
        await broker.subscribe(channel)
    # A batch over several channels (several shards on a cluster, one event on two).
    drafts = [
        Draft((CHANNELS[0],), b"data: one\n"),
        Draft((CHANNELS[1],), b"data: two\n"),
        Draft((CHANNELS[2], CHANNELS[3]), b"data: three\n"),
    ]
    key = keyed(drafts)
    first = await broker.publish_once(drafts, key)
    again = await broker.publish_once(list(drafts), key)
    assert not first.replayed and again.replayed
    assert again.ids == first.ids and [e.frame for e in again.events] == [
        e.frame for e in first.events
    ]
    assert [e.channels for e in again.events] == [d.channels for d in drafts]
    assert ids(await delivered_so_far(backend)) == ids(in_order(first.events))
    await backend.settled(*first.events)
    replay = await broker.replay(CHANNELS[:4], EARLIEST)
    assert ids(replay.events) == ids(in_order(first.events))


async def test_a_key_used_again_with_other_drafts_is_refused_and_publishes_nothing(
    backend: Backend,
) -> None:
    broker = backend.broker
    for channel in CHANNELS[:6]:
        await broker.subscribe(channel)
    original = [Draft((CHANNELS[0],), b"data: original\n")]
    key = keyed(original)
    first = await broker.publish_once(original, key)
    others = [
        [Draft((CHANNELS[0],), b"data: changed\n")],
        [Draft((CHANNELS[0],), b"data: original\n", private=True)],
        # Other channels, on other shards of a cluster: refused before anything is written.
        [Draft((CHANNELS[4],), b"data: original\n"), Draft((CHANNELS[5],), b"data: x\n")],
        original + original,
    ]
    for drafts in others:
        with pytest.raises(IdempotencyConflictError):
            await broker.publish_once(drafts, PublishKey(key.key, fingerprint(drafts)))
    assert ids(await delivered_so_far(backend)) == first.ids
    again = await broker.publish_once(original, key)
    assert again.replayed and again.ids == first.ids


async def test_a_key_is_forgotten_after_its_window(backend: Backend) -> None:
    received: list[Event] = []
    broker = await backend.another_worker(received.append, publish_idempotency_seconds=0.2)
    await broker.subscribe("a")
    drafts = [Draft(("a",), b"data: once a window\n")]
    key = keyed(drafts)
    first = await broker.publish_once(drafts, key)
    assert (await broker.publish_once(drafts, key)).replayed
    published_again: list[list[str]] = []

    async def published_anew() -> bool:
        answer = await broker.publish_once(drafts, key)
        if not answer.replayed:
            published_again.append(answer.ids)
        return not answer.replayed

    await wait_until(published_anew, what="the key to expire")
    (second_ids,) = published_again
    assert second_ids != first.ids
    await wait_until(lambda: second_ids[0] in ids(received), what="the second publish")
    assert ids(received) == [*first.ids, *second_ids]


async def test_publishes_racing_with_one_key_on_two_workers_publish_once(
    backend: Backend,
) -> None:
    worker_a, worker_b = backend.broker, await backend.another_worker()
    for channel in CHANNELS[:3]:
        await worker_a.subscribe(channel)
    single = [Draft((CHANNELS[0],), b"data: raced\n")]
    batch = [Draft((CHANNELS[i],), b"data: raced %d\n" % i) for i in range(3)]
    answers = {}
    for drafts in (single, batch):
        key = keyed(drafts)
        tries = [worker.publish_once(drafts, key) for worker in (worker_a, worker_b) * 4]
        answers[len(drafts)] = await asyncio.gather(*tries)
    for answer in answers.values():
        assert len({tuple(a.ids) for a in answer}) == 1, "every try gets the same ids"
    # One try publishes; the others are answered from its record (a batch spanning
    # shards on a cluster may be written part by part by several tries: each part once).
    assert sum(not a.replayed for a in answers[1]) == 1
    if backend.single_log:
        assert sum(not a.replayed for a in answers[3]) == 1
    expected = [*answers[1][0].events, *answers[3][0].events]
    assert ids(await delivered_so_far(backend)) == ids(in_order(expected))


# --- paged replay -------------------------------------------------------------------------


async def test_a_page_is_bounded_in_events_and_bytes(backend: Backend) -> None:
    broker = backend.broker
    published = await backend.publish(["a"] * 40)
    (big,) = await broker.publish([Draft(("a",), b"data: " + b"y" * 2000 + b"\n")])
    published += [big, *await backend.publish(["a"] * 5)]
    await backend.settled(*published)
    limit = PageLimit(events=6, bytes=300)
    replay = await broker.replay(["a"], published[0].id, page=limit)
    pages = [replay.events]
    while replay.rest is not None and (page := await replay.rest.next()):
        pages.append(page)
    assert ids(event for page in pages for event in page) == ids(published[1:])
    for page in pages:
        assert 1 <= len(page) <= limit.events
        # At most the page's bytes, unless one event alone is larger (it then goes alone).
        assert page_bytes(page) <= limit.bytes or ids(page) == [big.id]


async def test_a_replay_without_page_is_whole(backend: Backend) -> None:
    broker = backend.broker
    channels: Sequence[tuple[str, ...]] = (("a",), ("b",), ("c",), ("c", "a"), ("b", "a"))
    drafts = [Draft(channels[n % 5], BODY, private=n % 7 == 3) for n in range(30)]
    published: list[Event] = []
    for start in range(0, len(drafts), 10):
        published += await broker.publish(drafts[start : start + 10])
    await backend.settled(*published)
    cursor = published[0]
    replay = await broker.replay(["a", "b"], cursor.id)
    assert replay.rest is None
    after = [e for e in in_order(published) if e.key > cursor.key]
    assert ids(replay.events) == [e.id for e in after if not {"a", "b"}.isdisjoint(e.channels)]


async def test_history_trimmed_under_a_paged_replay_is_reported_not_skipped(
    backend: Backend,
) -> None:
    published = await backend.publish(["a"] * 20)
    await backend.settled(*published)
    replay = await backend.broker.replay(["a"], published[0].id, page=PageLimit(5, 10_000))
    first = ids(replay.events)  # one page: at most 5 events, at least one
    assert 1 <= len(first) <= 5 and first == ids(published[1 : 1 + len(first)])
    assert replay.rest is not None
    await backend.trim("a", 2)  # what the next pages would have read is gone
    assert await replay.rest.next() is None
