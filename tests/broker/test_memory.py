"""MemoryBroker: ids, retained history, delivery to the listener, replay and reset reasons."""

from __future__ import annotations

import pytest

from app.broker.base import Replay
from app.broker.memory import MemoryBroker
from app.sse.encoding import encode_body, encode_frame
from app.sse.event import Event
from app.sse.event_id import EventIdGenerator, format_event_id, parse_event_id
from tests.support.clock import FakeClock
from tests.support.publishing import publish_one


class FakeMsClock:
    """Wall-clock milliseconds that advance one per reading."""

    def __init__(self, start: int = 1_700_000_000_000) -> None:
        self.ms = start

    def __call__(self) -> int:
        self.ms += 1
        return self.ms


def make_broker(
    *,
    history_size: int = 100,
    history_max_bytes: int = 1 << 30,
    history_max_channels: int = 100,
    ttl: float = 60.0,
    clock: FakeClock | None = None,
) -> MemoryBroker:
    return MemoryBroker(
        history_size=history_size,
        history_max_bytes=history_max_bytes,
        history_max_channels=history_max_channels,
        channel_ttl_seconds=ttl,
        clock=clock or FakeClock(0.0),
        ids=EventIdGenerator(clock_ms=FakeMsClock()),
    )


async def publish_many(broker: MemoryBroker, channels: str) -> list[Event]:
    return [
        await publish_one(broker, channel, encode_body(i)) for i, channel in enumerate(channels)
    ]


# --- publish ---------------------------------------------------------------------


async def test_publish_assigns_increasing_ids_and_frames_the_body() -> None:
    broker = make_broker()
    body = encode_body("hello")
    first = await publish_one(broker, "a", body)
    second = await publish_one(broker, "b", body)
    assert parse_event_id(first.id) == first.key
    assert first.key < second.key
    assert first.frame == encode_frame(first.id, body)
    assert (first.channels, second.channels) == (("a",), ("b",))


async def test_publish_delivers_the_retained_event_to_the_listener() -> None:
    broker = make_broker()
    received: list[Event] = []
    await broker.connect(received.append)
    first = await publish_one(broker, "a", encode_body(1))
    second = await publish_one(broker, "a", encode_body(2))
    assert received == [first, second]
    # The listener gets the very object history keeps: one encoding for all.
    (replayed,) = (await broker.replay(["a"], first.id)).events
    assert replayed is received[1]


async def test_publish_after_disconnect_is_retained_but_not_delivered() -> None:
    broker = make_broker()
    received: list[Event] = []
    await broker.connect(received.append)
    before = await publish_one(broker, "a", encode_body(1))
    await broker.disconnect()
    after = await publish_one(broker, "a", encode_body(2))
    assert received == [before]
    assert (await broker.replay(["a"], before.id)).events == [after]


async def test_publish_without_listener_is_retained() -> None:
    broker = make_broker()
    first, second = await publish_many(broker, "aa")
    assert (await broker.replay(["a"], first.id)).events == [second]


# --- replay --------------------------------------------------------------------------


async def test_replay_returns_exactly_the_events_after_the_id() -> None:
    broker = make_broker()
    events = await publish_many(broker, "abaab")
    a = [event for event in events if event.channels == ("a",)]
    replay = await broker.replay(["a"], events[0].id)
    assert replay == Replay(head=events[-1].id, events=a[1:])
    assert not replay.reset


async def test_replay_from_the_newest_id_is_empty_not_a_reset() -> None:
    broker = make_broker()
    events = await publish_many(broker, "ab")
    assert await broker.replay(["a"], events[-1].id) == Replay(head=events[-1].id)


async def test_a_new_stream_gets_no_events_and_the_head_as_its_position() -> None:
    broker = make_broker()
    events = await publish_many(broker, "ab")
    assert await broker.replay(["a"], None) == Replay(head=events[-1].id)


async def test_replay_of_several_channels_is_merged_in_id_order() -> None:
    broker = make_broker()
    events = await publish_many(broker, "abcabcab")
    replay = await broker.replay(["b", "a"], events[0].id)
    assert replay.events == [e for e in events[1:] if e.channels[0] in ("a", "b")]


@pytest.mark.parametrize("garbage", ["", "nope", "12-x", "\u00b2\u00b3", "9" * 500])
async def test_garbage_id_resets_with_reason_unknown_id(garbage: str) -> None:
    broker = make_broker()
    events = await publish_many(broker, "aa")
    replay = await broker.replay(["a"], garbage)
    assert replay == Replay(head=events[-1].id, reset=True, reason="unknown_id")


async def test_future_id_resets_with_reason_unknown_id() -> None:
    broker = make_broker()
    events = await publish_many(broker, "aa")
    ms, seq = events[-1].key
    for future in [(ms, seq + 1), (ms + 1, 0), (ms * 2, 0)]:
        replay = await broker.replay(["a"], format_event_id(future))
        assert replay == Replay(head=events[-1].id, reset=True, reason="unknown_id")


async def test_id_from_before_this_process_resets_with_reason_unknown_id() -> None:
    # A client of a previous process (a restart) holds an id below our first.
    ids = EventIdGenerator(clock_ms=FakeMsClock())
    broker = MemoryBroker(
        history_size=100,
        history_max_bytes=1 << 30,
        history_max_channels=100,
        channel_ttl_seconds=60,
        clock=FakeClock(0.0),
        ids=ids,
    )
    events = await publish_many(broker, "aa")
    first_ms, _ = ids.first
    for earlier in [(first_ms - 1, 0), (first_ms - 1, 999), (1, 0), (0, 0)]:
        replay = await broker.replay(["a"], format_event_id(earlier))
        assert replay == Replay(head=events[-1].id, reset=True, reason="unknown_id"), earlier


async def test_before_anything_was_published_the_head_is_the_start_and_resumes_exactly() -> None:
    broker = make_broker()
    replay = await broker.replay(["a"], "garbage")
    assert replay.reset and replay.reason == "unknown_id"
    start = (await broker.replay(["a"], None)).head
    assert start == replay.head
    (event,) = await publish_many(broker, "a")
    # A client cut before its first event resumes from the start: nothing lost.
    assert await broker.replay(["a"], start) == Replay(head=event.id, events=[event])


async def test_id_older_than_retained_history_resets_with_reason_history_expired() -> None:
    broker = make_broker(history_size=3)
    events = await publish_many(broker, "aaaaaa")
    replay = await broker.replay(["a"], events[0].id)
    assert replay == Replay(head=events[-1].id, reset=True, reason="history_expired")
    # The newest evicted id is the oldest one that still replays exactly.
    assert (await broker.replay(["a"], events[2].id)).events == events[3:]


async def test_id_older_than_a_dropped_channel_resets_with_reason_history_expired() -> None:
    clock = FakeClock(0.0)
    broker = make_broker(ttl=10, clock=clock)
    events = await publish_many(broker, "ab")
    clock.now = 11
    assert broker.sweep(clock.now) == 2
    replay = await broker.replay(["a"], events[0].id)
    assert replay == Replay(head=events[-1].id, reset=True, reason="history_expired")


# --- interest, housekeeping, stats -----------------------------------------------------


async def test_subscribed_channel_survives_the_sweep_until_unsubscribed() -> None:
    clock = FakeClock(0.0)
    broker = make_broker(ttl=10, clock=clock)
    await broker.subscribe("a")
    await publish_one(broker, "a", encode_body(1))
    clock.now = 100
    assert broker.sweep(clock.now) == 0
    await broker.unsubscribe("a")
    assert broker.sweep(clock.now + 10) == 0
    assert broker.sweep(clock.now + 11) == 1
    assert broker.history.channel_count == 0


async def test_trim_history_returns_bytes_freed() -> None:
    broker = make_broker()
    events = await publish_many(broker, "aaab")
    before = broker.history.bytes
    freed = broker.trim_history(1)
    assert freed > 0
    assert broker.history.bytes == before - freed
    assert (await broker.replay(["a", "b"], events[1].id)).events == events[2:]


async def test_stats_shape() -> None:
    broker = make_broker()
    await publish_many(broker, "ab")
    stats = broker.stats()
    assert stats["url"] == "memory://"
    assert stats["state"] == "ok"
    assert stats["history"] == broker.history.stats()
    assert broker.history.stats()["events"] == 2
