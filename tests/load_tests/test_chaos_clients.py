"""The chaos subscriber keeps its cursor as a browser does (WHATWG dispatch, Chromium resume)."""

from __future__ import annotations

import json

from load_tests.chaos_clients import StreamReading, event_document
from load_tests.chaos_ledger import Ledger, SubscriberRecord

NOW = 10.0


def _frame(event_id: str, channel: str = "a", seq: int = 1) -> bytes:
    data = json.dumps(event_document(channel, 0, seq), separators=(",", ":")).encode()
    return b"id: " + event_id.encode() + b"\ndata: " + data + b"\n\n"


def _record() -> SubscriberRecord:
    return Ledger(["a", "b"]).subscriber("s", frozenset({"a", "b"}))


def test_an_id_line_without_data_sets_the_cursor_without_an_event() -> None:
    record = _record()
    reading = StreamReading(record, "")

    reading.feed(b"retry: 3000\n\nid: 5-0\n\n", NOW)

    assert reading.last_event_id == "5-0"
    assert record.start == (5, 0)
    assert record.deliveries == 0
    assert record.opened_at == NOW


def test_an_id_whose_frame_was_cut_before_its_blank_line_does_not_count() -> None:
    record = _record()
    reading = StreamReading(record, "4-0")
    frame = _frame("7-0")

    reading.feed(frame[:-1], NOW)  # the stream is cut here: the event was never dispatched

    assert reading.last_event_id == "4-0"
    assert record.deliveries == 0
    reading.feed(frame[-1:], NOW)
    assert reading.last_event_id == "7-0"
    assert record.received == {("a", (7, 0)): (0, 1)}


def test_a_resumed_stream_keeps_the_id_until_the_server_sends_another() -> None:
    record = _record()
    reading = StreamReading(record, "5-0")  # carried over from the previous stream

    reading.feed(b"retry: 3000\n\n", NOW)

    assert reading.last_event_id == "5-0"


def test_events_are_recorded_by_the_channel_in_their_payload() -> None:
    record = _record()
    reading = StreamReading(record, "")

    reading.feed(_frame("5-0", "b", 3) + b": ping\n\n" + _frame("5-0", "a", 4), NOW)

    assert record.received == {("b", (5, 0)): (0, 3), ("a", (5, 0)): (0, 4)}
    assert record.start == (5, 0)


def test_a_reset_is_counted_and_moves_the_cursor() -> None:
    record = _record()
    reading = StreamReading(record, "1-0")

    reading.feed(b'id: 9-0\nevent: reset\ndata: {"reason":"unknown_id"}\n\n', NOW)

    assert record.resets == 1
    assert record.deliveries == 0
    assert reading.last_event_id == "9-0"


def test_data_that_is_not_a_chaos_event_is_counted_as_malformed() -> None:
    record = _record()

    StreamReading(record, "").feed(b"id: 2-0\ndata: hello\n\n", NOW)

    assert record.malformed == 1


def _multi_frame(event_id: str, channels: list[str], seq: int = 1) -> bytes:
    data = json.dumps(event_document(channels, 0, seq), separators=(",", ":")).encode()
    return b"id: " + event_id.encode() + b"\ndata: " + data + b"\n\n"


def test_an_event_on_several_channels_counts_for_each_channel_the_subscriber_asked_for() -> None:
    ledger = Ledger(["a", "b", "c"])
    record = ledger.subscriber("s", frozenset({"a", "b"}))
    reading = StreamReading(record, "")
    for channel in ("a", "b", "c"):
        ledger.ack(channel, "7-0", (0, 1), 0.0, 1.0)

    reading.feed(_multi_frame("7-0", ["a", "b", "c"]), NOW)
    assert record.received == {("a", (7, 0)): (0, 1), ("b", (7, 0)): (0, 1)}
    assert ledger.missing(record) == set()
    reading.feed(_multi_frame("7-0", ["a", "b", "c"]), NOW)  # a second copy is a duplicate
    assert sorted(record.duplicates) == [("a", (7, 0)), ("b", (7, 0))]


def test_an_event_on_none_of_the_subscribers_channels_is_misrouted() -> None:
    record = Ledger(["a", "b", "c"]).subscriber("s", frozenset({"a"}))
    StreamReading(record, "").feed(_multi_frame("7-0", ["b", "c"]), NOW)
    assert record.misrouted == 1
