"""HistoryStore: bounded per channel and globally, honest about what may be lost."""

from __future__ import annotations

import gc
import tracemalloc

import pytest

from app.broker.history import (
    EVENT_OVERHEAD_BYTES,
    SMALL_LOG_EVENTS,
    HistoryStore,
    event_cost,
)
from app.wire.encoding import encode_body, encode_frame
from app.wire.event import Event
from app.wire.event_id import EventIdGenerator, EventKey, format_event_id

START: EventKey = (1000, -1)  # the floor a fresh store starts from


def make_store(
    *,
    max_events: int = 100,
    max_bytes: int = 1 << 30,
    max_channels: int = 100,
    ttl_seconds: float = 60.0,
) -> HistoryStore:
    return HistoryStore(
        max_events=max_events,
        max_bytes=max_bytes,
        max_channels=max_channels,
        ttl_seconds=ttl_seconds,
        floor=START,
    )


class Publisher:
    """Appends events with ids from one generator, as a broker does."""

    def __init__(self, store: HistoryStore) -> None:
        self.store = store
        self._ms = 1000

    def __call__(self, channel: str | tuple[str, ...], now: float = 0.0, data: str = "x") -> Event:
        key = (self._ms, 0)
        self._ms += 1
        event_id = format_event_id(key)
        channels = (channel,) if isinstance(channel, str) else channel
        event = Event(key, event_id, channels, encode_frame(event_id, encode_body(data)))
        self.store.append(event, now)
        return event


def cost(event: Event) -> int:
    return len(event.frame) + EVENT_OVERHEAD_BYTES


# --- bounds --------------------------------------------------------------------


def test_fresh_store_replays_everything_after_its_start() -> None:
    store = make_store()
    publish = Publisher(store)
    events = [publish("a") for _ in range(3)]
    assert store.since(["a"], START) == events
    assert store.since(["a"], events[0].key) == events[1:]
    assert store.since(["a"], events[-1].key) == []


def test_per_channel_cap_evicts_oldest_of_that_channel_only() -> None:
    store = make_store(max_events=3)
    publish = Publisher(store)
    a = [publish("a") for _ in range(5)]
    b = [publish("b") for _ in range(2)]
    assert len(store) == 5
    assert store.evicted == 2
    assert store.since(["a"], a[1].key) == a[2:]
    assert store.since(["b"], START) == b


@pytest.mark.parametrize("count", [SMALL_LOG_EVENTS, SMALL_LOG_EVENTS + 1, 3 * SMALL_LOG_EVENTS])
def test_a_log_past_its_small_size_keeps_its_order_cap_and_floor(count: int) -> None:
    cap = 2 * SMALL_LOG_EVENTS
    store = make_store(max_events=cap)
    publish = Publisher(store)
    a = []
    for _ in range(count):
        a.append(publish("a"))
        publish("b")
    kept = a[-cap:]
    assert store.since(["a"], START, exact=False) == kept
    assert store.since(["a"], kept[0].key) == kept[1:]
    if count > cap:
        assert store.since(["a"], START) is None  # the oldest went: a reset, not a gap
        assert store.since(["a"], a[count - cap - 1].key) == kept
    assert store.trim(3) > 0
    assert store.since(["a"], START, exact=False) == a[-3:]
    store.max_bytes = 0
    store.trim(3)  # the byte budget now evicts everything, oldest first, from any log
    publish("c")
    assert len(store) == 0
    assert store.since(["a"], START, exact=False) == []


def test_since_returns_none_below_a_floor() -> None:
    store = make_store(max_events=3)
    publish = Publisher(store)
    a = [publish("a") for _ in range(5)]
    # a[1] was the newest evicted: a client that has it misses nothing; one
    # that only has a[0] may have missed a[1].
    assert store.since(["a"], a[1].key) == a[2:]
    assert store.since(["a"], a[0].key) is None
    assert store.since(["a"], START) is None


def test_byte_budget_evicts_the_globally_oldest_event() -> None:
    probe = Publisher(make_store())("probe")
    store = make_store(max_bytes=3 * cost(probe))
    publish = Publisher(store)
    a1, b1, a2, b2 = publish("a"), publish("b"), publish("a"), publish("b")
    assert len(store) == 3
    assert store.bytes == 3 * cost(probe) == sum(cost(e) for e in (b1, a2, b2))
    assert store.since(["a"], START) is None  # a1 is gone
    assert store.since(["a"], a1.key) == [a2]
    assert store.since(["b"], START) == [b1, b2]  # b lost nothing


def test_event_larger_than_the_byte_budget_is_not_kept() -> None:
    store = make_store(max_bytes=EVENT_OVERHEAD_BYTES + 10)
    publish = Publisher(store)
    big = publish("a", data="x" * 100)
    assert len(store) == 0
    assert store.bytes == 0
    assert store.since(["a"], big.key) == []
    assert store.since(["a"], START) is None


def test_multi_channel_since_merges_in_id_order() -> None:
    store = make_store()
    publish = Publisher(store)
    events = [publish(channel) for channel in "abacbca"]
    assert store.since(["a", "b", "c"], START) == events
    assert store.since(["c", "a"], events[1].key) == [events[2], events[3], events[5], events[6]]


def test_since_is_none_when_any_channel_is_below_its_floor() -> None:
    store = make_store(max_events=1)
    publish = Publisher(store)
    a1, b1, _ = publish("a"), publish("b"), publish("a")
    assert store.since(["b"], START) == [b1]
    assert store.since(["a", "b"], START) is None
    assert store.since(["a", "b"], a1.key) is not None


def test_since_on_a_channel_with_no_log_is_empty() -> None:
    store = make_store()
    Publisher(store)("a")
    assert store.since(["never-used"], START) == []


# --- interest and the TTL sweep -------------------------------------------------


# --- events on several channels -------------------------------------------------------


def test_an_event_on_several_channels_is_kept_and_counted_once() -> None:
    store = make_store()
    publish = Publisher(store)
    both = publish(("a", "b"))
    assert len(store) == 1
    assert store.bytes == event_cost(both) == len(both.frame) + EVENT_OVERHEAD_BYTES + 120
    assert store.since(["a"], START) == store.since(["b"], START) == [both]
    assert store.since(["a", "b"], START) == [both]  # merged runs keep it once


def test_leaving_one_channels_log_keeps_the_event_for_the_other() -> None:
    store = make_store(max_events=1)
    publish = Publisher(store)
    both = publish(("a", "b"))
    newer = publish("a")  # a's cap pushes `both` out of a's log only
    assert store.since(["a"], newer.key) == []
    assert store.since(["a"], START) is None  # a lost something after START
    assert store.since(["b"], START) == [both]
    assert len(store) == 2 and store.bytes == event_cost(both) + event_cost(newer)
    publish("b")  # now b lets go of it too: gone, its bytes with it
    assert both.key not in {event.key for event in store.since(["a", "b"], both.key) or []}
    assert len(store) == 2 and store.bytes == 2 * event_cost(newer)


def test_the_byte_budget_evicts_an_event_from_every_log_holding_it() -> None:
    probe = Publisher(make_store())("a")
    store = make_store(max_bytes=2 * event_cost(probe) + 200)
    publish = Publisher(store)
    both = publish(("a", "b"))
    publish("c")
    last = publish("c")  # over budget: the oldest (on a and b) goes from both logs
    assert len(store) == 2
    assert store.since(["a"], both.key) == [] and store.since(["b"], both.key) == []
    assert store.since(["a"], START) is None and store.since(["b"], START) is None
    assert store.since(["c"], START) == [store.since(["c"], START)[0], last]  # type: ignore[index]


def test_dropping_a_channel_keeps_its_multi_channel_events_for_the_others() -> None:
    store = make_store(ttl_seconds=1)
    publish = Publisher(store)
    both = publish(("a", "b"))
    store.add_interest("b", now=0)
    assert store.sweep(now=5) == 1  # a: unwatched and idle
    assert store.since(["b"], START) == [both]
    assert store.bytes == event_cost(both)
    store.remove_interest("b", now=5)
    store.sweep(now=10)
    assert len(store) == 0 and store.bytes == 0


def test_sweep_drops_a_channel_after_ttl_only_when_no_one_is_interested() -> None:
    store = make_store(ttl_seconds=10)
    publish = Publisher(store)
    publish("unwatched", now=0)
    publish("watched", now=0)
    store.add_interest("watched", now=0)

    assert store.sweep(now=10) == 0  # not yet past the TTL
    assert store.sweep(now=11) == 1
    assert store.channel_count == 1
    assert store.channels_dropped == 1

    store.remove_interest("watched", now=20)
    assert store.sweep(now=29) == 0  # losing interest counts as activity
    assert store.sweep(now=31) == 1
    assert store.channel_count == 0
    assert len(store) == 0
    assert store.bytes == 0


def test_interest_is_counted_per_subscriber() -> None:
    store = make_store(ttl_seconds=10)
    store.add_interest("a", now=0)
    store.add_interest("a", now=0)
    store.remove_interest("a", now=0)
    assert store.sweep(now=100) == 0
    store.remove_interest("a", now=0)
    assert store.sweep(now=100) == 1


def test_remove_interest_of_unknown_channel_is_harmless() -> None:
    store = make_store()
    store.remove_interest("nobody", now=0)
    assert store.channel_count == 0


def test_activity_postpones_the_sweep() -> None:
    store = make_store(ttl_seconds=10)
    publish = Publisher(store)
    publish("a", now=0)
    publish("a", now=8)
    assert store.sweep(now=15) == 0
    assert store.sweep(now=19) == 1


def test_a_dropped_channel_cannot_replay_from_before_the_drop() -> None:
    store = make_store(ttl_seconds=10)
    publish = Publisher(store)
    old = publish("a", now=0)
    store.sweep(now=11)
    assert store.since(["a"], START) is None
    # A log created later does not know what it missed either.
    new = publish("a", now=12)
    assert store.since(["a"], START) is None
    assert store.since(["a"], old.key) == [new]


# --- max channels -----------------------------------------------------------------


def test_max_channels_evicts_the_least_recently_used_unwatched_log() -> None:
    store = make_store(max_channels=3)
    publish = Publisher(store)
    watched = publish("watched")
    store.add_interest("watched", now=0)
    touched = publish("touched")
    stale = publish("stale")
    touched2 = publish("touched")  # "touched" is now used more recently than "stale"
    newcomer = publish("newcomer")

    assert store.channel_count == 3
    assert store.channels_dropped == 1
    assert store.since(["stale"], START) is None
    assert store.since(["stale"], stale.key) == []
    assert store.since(["watched"], START) == [watched]
    assert store.since(["touched"], START) == [touched, touched2]
    assert store.since(["newcomer"], stale.key) == [newcomer]
    assert len(store) == 4


def test_max_channels_never_drops_watched_logs() -> None:
    store = make_store(max_channels=2)
    publish = Publisher(store)
    for channel in ("a", "b"):
        store.add_interest(channel, now=0)
        publish(channel)
    publish("c")
    assert store.channel_count == 3
    assert store.channels_dropped == 0


# --- trim and stats --------------------------------------------------------------


def test_trim_keeps_newest_per_channel_and_returns_bytes_freed() -> None:
    store = make_store()
    publish = Publisher(store)
    a = [publish("a", data="a" * n) for n in (1, 20, 300)]
    b = [publish("b", data="b" * n) for n in (4, 50)]
    before = store.bytes

    freed = store.trim(keep=1)

    assert freed == cost(a[0]) + cost(a[1]) + cost(b[0])
    assert store.bytes == before - freed == cost(a[2]) + cost(b[1])
    assert store.since(["a"], a[1].key) == [a[2]]
    assert store.since(["b"], b[0].key) == [b[1]]
    assert store.since(["b"], START) is None
    assert store.since(["a"], a[0].key) is None
    assert store.trim(keep=1) == 0


def test_stats_shape() -> None:
    store = make_store(max_events=1, max_bytes=10_000)
    publish = Publisher(store)
    publish("a")
    last = publish("a")
    assert store.stats() == {
        "channels": 1,
        "events": 1,
        "supplied_ids": 0,
        "bytes": cost(last),
        "max_bytes": 10_000,
        "evicted": 1,
        "channels_dropped": 0,
    }


# --- the overhead constant is an honest upper estimate ---------------------------


def test_event_overhead_constant_covers_measured_bookkeeping() -> None:
    count = 2000
    # One new millisecond per event: every key gets its own int, the worst case.
    ms = iter(range(1_700_000_000_000, 1_700_000_000_000 + count + 1))
    ids = EventIdGenerator(clock_ms=lambda: next(ms))
    body = encode_body({"n": 1})
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        store = make_store(max_events=count, max_bytes=1 << 40)
        frame_bytes = 0
        for _ in range(count):
            key = ids.next()
            event_id = format_event_id(key)
            frame = encode_frame(event_id, body)
            frame_bytes += len(frame)
            store.append(Event(key, event_id, ("channel",), frame), 0.0)
        del key, event_id, frame
        gc.collect()
        traced = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(store) == count
    per_event = (traced - frame_bytes) / count
    assert 100 < per_event <= EVENT_OVERHEAD_BYTES, per_event


def test_a_log_holding_one_event_costs_less_than_a_deque_block() -> None:
    # One log per Mercure subscription topic, each holding that subscription's event:
    # what the log itself costs is paid once per idle subscriber.
    count = 2000
    channels = [f"/.well-known/mercure/subscriptions/exact/t/{n}" for n in range(count)]
    events = []
    for n, channel in enumerate(channels):
        key = (5000, n)
        event_id = format_event_id(key)
        events.append(Event(key, event_id, (channel,), encode_frame(event_id, encode_body("x"))))
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        store = make_store(max_channels=count, max_bytes=1 << 40)
        for event in events:
            store.append(event, 0.0)
        gc.collect()
        traced = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert store.channel_count == count
    per_log = traced / count
    # The map entry, the log's slots and a one-event list; an empty deque alone is ~600 B.
    assert per_log < 400, per_log


def _batch_events(count: int) -> list[Event]:
    """A mixed batch: three channels, some events on two of them, some with supplied ids."""
    channels = [("a",), ("b",), ("a", "c"), ("c",), ("b", "a")]
    events = []
    for n in range(count):
        key = (2000, n)
        event_id = f"urn:n:{n}" if n % 7 == 0 else format_event_id(key)
        frame = encode_frame(event_id, encode_body("y" * (n % 13)))
        events.append(Event(key, event_id, channels[n % len(channels)], frame))
    return events


def _observed(store: HistoryStore) -> tuple[object, ...]:
    return (
        store.stats(),
        store.evicted,
        [[e.key for e in store.since([c], (0, 0), exact=False) or []] for c in "abc"],
        [store.since([c], (2000, 10)) is None for c in "abc"],
        [store.resolve(f"urn:n:{n}") for n in range(0, 60, 7)],
    )


def test_extend_keeps_exactly_what_appending_one_by_one_keeps() -> None:
    # Per-channel caps, the byte budget, multi-channel events and supplied ids all act
    # inside the batch, in the same order as event-by-event appends.
    one_by_one = make_store(max_events=6, max_bytes=2_500)
    batched = make_store(max_events=6, max_bytes=2_500)
    events = _batch_events(60)
    for event in events:
        one_by_one.append(event, 0.0, supplied_id=event.id.startswith("urn:"))
    batched.extend(events, 0.0, supplied_ids=True)
    assert batched.evicted > 0 and batched.bytes <= 2_500
    assert _observed(batched) == _observed(one_by_one)


def test_extend_survives_a_batch_with_more_channels_than_the_store_may_keep() -> None:
    store = make_store(max_channels=2)
    events = _batch_events(10)
    store.extend(events, 0.0)
    assert store.channel_count == 2
    retained = store.since_all((0, 0), exact=False) or []
    assert retained and store.bytes == sum(event_cost(event) for event in retained)
