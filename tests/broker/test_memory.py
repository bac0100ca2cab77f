"""MemoryBroker beyond the broker contract (tests/broker/test_contract.py): one object for
the listener and history, publishing without a listener, a restart's ids, idle channels
swept, trimming under memory pressure, stats."""

from __future__ import annotations

from app.broker.base import Replay
from app.broker.memory import MemoryBroker
from app.wire.encoding import encode_body
from app.wire.event import Event
from app.wire.event_id import EventIdGenerator, format_event_id
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


async def test_the_listener_gets_the_very_object_history_keeps() -> None:
    broker = make_broker()
    received: list[Event] = []
    await broker.connect(received.append)
    first = await publish_one(broker, "a", encode_body(1))
    second = await publish_one(broker, "a", encode_body(2))
    assert received == [first, second]
    # One encoding for all: the listener's event is the one replays return.
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


# --- resets of a process's own history --------------------------------------------------


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
