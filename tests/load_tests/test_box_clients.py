"""The box test's browsers: EventSource's bookkeeping across connections, without I/O."""

from __future__ import annotations

import random

from load_tests.box_clients import (
    DEFAULT_RETRY_MS,
    DEFERRED_SECONDS,
    FED_WINDOW_SECONDS,
    CrowdTally,
    EventSourceState,
    forwarded_address,
    source_address,
)

OPENING = b"retry: 5000\n\nid: 100-0\n\n"


def test_a_non_200_answer_stops_the_browser_for_good() -> None:
    state = EventSourceState()
    assert not state.on_response(503, "application/json", now=0.0)
    assert state.stopped and state.fatal_reason == "HTTP 503"


def test_a_200_that_is_not_an_event_stream_is_fatal_too() -> None:
    state = EventSourceState()
    assert not state.on_response(200, "application/json", now=0.0)
    assert state.fatal_reason == "content-type application/json"
    assert EventSourceState().on_response(200, "text/event-stream; charset=utf-8", now=0.0)


def test_reconnects_after_the_last_retry_read_with_the_last_dispatched_id() -> None:
    state = EventSourceState()
    assert state.reconnect_delay(random.Random(1)) >= DEFAULT_RETRY_MS / 1000
    assert not state.attempt()  # the first connection is not a reconnection
    state.on_response(200, "text/event-stream", now=0.0)
    state.feed(OPENING + b"id: 101-0\ndata: a\n\nid: 102-0\ndata: b", now=1.0)
    # The frame of 102-0 never reached its blank line: a browser has not dispatched it.
    assert state.last_event_id == "101-0"
    assert state.retry_ms == 5000
    assert state.on_end(now=30.0) == "cut"
    assert 5.0 <= state.reconnect_delay(random.Random(1)) <= 5.5
    assert state.attempt()  # the second one is
    state.on_response(200, "text/event-stream", now=40.0)
    state.feed(b"data: c\n\n", now=41.0)
    assert state.last_event_id == "101-0"  # an event without id keeps the cursor


def test_the_opening_id_line_is_a_position_before_any_event() -> None:
    state = EventSourceState()
    state.on_response(200, "text/event-stream", now=0.0)
    assert not state.positioned
    assert state.feed(OPENING, now=0.1) == []
    assert state.positioned and state.last_event_id == "100-0"


def test_a_stream_that_ends_at_once_without_events_is_deferred() -> None:
    state = EventSourceState()
    state.on_response(200, "text/event-stream", now=0.0)
    state.feed(b"retry: 10000\n\n", now=0.1)
    assert state.on_end(now=DEFERRED_SECONDS / 2) == "deferred"
    assert state.retry_ms == 10000
    state.on_response(200, "text/event-stream", now=10.0)
    assert state.on_end(now=10.0 + DEFERRED_SECONDS + 1) == "cut"


def test_fed_means_open_with_an_event_within_the_window() -> None:
    state = EventSourceState()
    state.on_response(200, "text/event-stream", now=0.0)
    assert not state.fed(now=1.0)
    state.feed(OPENING + b"id: 101-0\ndata: x\n\n", now=2.0)
    assert state.fed(now=2.0 + FED_WINDOW_SECONDS)
    assert not state.fed(now=2.0 + FED_WINDOW_SECONDS + 0.1)
    state.on_end(now=3.0)
    assert not state.fed(now=3.0)


def test_heartbeats_are_not_kept() -> None:
    state = EventSourceState()
    state.on_response(200, "text/event-stream", now=0.0)
    for _ in range(1000):
        state.feed(b": ping\n\n", now=1.0)
    assert state._parser.comments == []
    assert state.last_event_at is None  # a heartbeat is not an event


def test_tallies_of_several_processes_add_up() -> None:
    one, two = CrowdTally(browsers=10, opened=12, cuts=2), CrowdTally(browsers=5, opened=5)
    one.fatal_reasons["HTTP 503"] += 2
    two.fatal_reasons["HTTP 503"] += 1
    two.fatal_reasons["HTTP 429"] += 1
    total = CrowdTally.merged([one.as_dict(), two.as_dict()])
    assert (total.browsers, total.opened, total.cuts) == (15, 17, 2)
    assert total.fatal_reasons == {"HTTP 503": 3, "HTTP 429": 1}


def test_every_browser_has_its_own_untrusted_address_and_sources_are_shared_boundedly() -> None:
    addresses = {forwarded_address(crowd, i) for crowd in range(4) for i in range(12_000)}
    assert len(addresses) == 48_000
    assert all(a.startswith(("198.18.", "198.19.")) for a in addresses)
    sources = [source_address(0, 1, i) for i in range(3000)]
    assert max(sources.count(s) for s in set(sources)) <= 200
    assert all(s.startswith("127.10.1.") for s in sources)
