"""The chaos test's counters on synthetic input: each fault is counted once, under its name."""

from __future__ import annotations

from load_tests.chaos_ledger import Ledger, SubscriberRecord, parse_key

CHANNELS = ["a", "b"]
OPENED_AT = 100.0


def _ledger(*acks: tuple[str, str], sent_at: float = 50.0) -> Ledger:
    """Acks numbered (0, 1), (0, 2)… as publisher 0 would make them."""
    ledger = Ledger(CHANNELS)
    for seq, (channel, event_id) in enumerate(acks, start=1):
        ledger.ack(channel, event_id, (0, seq), sent_at, sent_at + 0.01)
    return ledger


def _subscriber(ledger: Ledger, *channels: str, start: str | None = "1-0") -> SubscriberRecord:
    record = ledger.subscriber("s", frozenset(channels))
    if start is not None:
        record.saw_id(start)
    return record


def test_ids_compare_as_integer_pairs() -> None:
    assert parse_key("1796150510076-10") == (1796150510076, 10)
    assert parse_key("9-0") < parse_key("10-0")  # type: ignore[operator]
    for garbage in ("", "12", "-1", "1-", "a-1", "1-2-3", "\u0661-\u0662"):
        assert parse_key(garbage) is None, garbage


def test_an_event_never_received_is_lost_on_its_channel() -> None:
    ledger = _ledger(("a", "2-0"), ("a", "3-0"), ("b", "4-0"))
    record = _subscriber(ledger, "a", "b")
    record.delivered("a", "2-0", (0, 1))
    record.delivered("b", "4-0", (0, 3))

    verdict = ledger.verdict()

    assert verdict.lost == {"a": 1, "b": 0}
    assert verdict.failures == {"lost": 1}
    assert verdict.examples["lost"] == ["a 3-0 (s on a,b, start 1-0)"]
    assert not ledger.caught_up()


def test_only_events_after_the_starting_cursor_on_its_channels_are_owed() -> None:
    ledger = _ledger(("a", "1-0"), ("a", "0-5"), ("b", "7-0"), ("a", "8-0"))
    record = _subscriber(ledger, "a", start="1-0")
    record.delivered("a", "8-0", (0, 4))

    assert ledger.expected(record) == {("a", (8, 0))}
    assert ledger.verdict().failures == {}
    assert ledger.caught_up()


def test_the_starting_cursor_is_the_first_id_seen() -> None:
    ledger = _ledger(("a", "5-0"), ("a", "6-0"))
    record = _subscriber(ledger, "a", start="4-0")
    record.saw_id("9-0")  # later ids move the stream, not the start of what is owed

    assert ledger.expected(record) == {("a", (5, 0)), ("a", (6, 0))}


def test_a_client_without_an_id_is_owed_what_was_published_after_its_first_open() -> None:
    ledger = Ledger(CHANNELS)
    ledger.ack("a", "1-0", (0, 1), OPENED_AT - 1, OPENED_AT + 1)  # written before: not owed
    ledger.ack("a", "2-0", (0, 2), OPENED_AT + 1, OPENED_AT + 2)
    ledger.ack("a", "3-0", (0, 3), OPENED_AT + 2, OPENED_AT + 3)
    record = _subscriber(ledger, "a", start=None)
    record.opened(OPENED_AT)
    record.opened(OPENED_AT + 5)  # a later stream does not move the promise
    record.delivered("a", "3-0", (0, 3))  # its first event: the cursor starts here

    verdict = ledger.verdict()

    assert verdict.lost == {"a": 1, "b": 0}
    assert verdict.lost_before_first_id == 1


def test_a_subscriber_that_never_opened_is_owed_nothing() -> None:
    ledger = _ledger(("a", "2-0"))
    _subscriber(ledger, "a", start=None)

    assert ledger.verdict().failures == {}


def test_a_repeat_is_one_duplicate_and_not_out_of_order() -> None:
    # The live stream: …125-0, …136-0, …125-0.
    ledger = _ledger(("a", "125-0"), ("a", "136-0"))
    record = _subscriber(ledger, "a")
    for event_id, seq in (("125-0", 1), ("136-0", 2), ("125-0", 1)):
        record.delivered("a", event_id, (0, seq))

    verdict = ledger.verdict()

    assert verdict.duplicated == {"a": 1, "b": 0}
    assert verdict.out_of_order == {"a": 0, "b": 0}
    assert verdict.failures == {"duplicated": 1}
    assert verdict.examples["duplicated"] == ["a 125-0 (s on a)"]


def test_every_extra_reception_is_a_duplicate() -> None:
    ledger = _ledger(("a", "2-0"))
    record = _subscriber(ledger, "a")
    for _ in range(3):
        record.delivered("a", "2-0", (0, 1))

    assert ledger.verdict().duplicated == {"a": 2, "b": 0}


def test_an_older_event_after_a_newer_one_on_the_same_channel_is_out_of_order() -> None:
    ledger = _ledger(("a", "2-0"), ("a", "3-0"), ("b", "1-5"))
    record = _subscriber(ledger, "a", "b", start="1-0")
    record.delivered("a", "3-0", (0, 2))
    record.delivered("b", "1-5", (0, 3))  # older, but on another channel: in order
    record.delivered("a", "2-0", (0, 1))

    verdict = ledger.verdict()

    assert verdict.out_of_order == {"a": 1, "b": 0}
    assert verdict.examples["out_of_order"] == ["a 2-0 after 3-0 (s on a,b)"]
    assert verdict.lost == {"a": 0, "b": 0}


def test_the_same_id_on_two_channels_is_two_events() -> None:
    # A same-millisecond tie: one id on chaos/c and chaos/d, one of them never delivered.
    ledger = _ledger(("a", "5-0"), ("b", "5-0"))
    record = _subscriber(ledger, "a", "b")
    record.delivered("a", "5-0", (0, 1))

    verdict = ledger.verdict()

    assert verdict.lost == {"a": 0, "b": 1}
    assert verdict.duplicated == {"a": 0, "b": 0}
    assert verdict.id_collisions == 0


def test_a_delivered_event_nobody_acked_is_reported_but_is_no_failure() -> None:
    ledger = _ledger(("a", "2-0"))
    record = _subscriber(ledger, "a")
    record.delivered("a", "2-0", (0, 1))
    record.delivered("a", "3-0", (1, 9))  # its publisher never got the 202

    verdict = ledger.verdict()

    assert verdict.delivered_never_acked == 1
    assert verdict.failures == {}


def test_resets_misrouted_mismatched_collisions_and_bad_ids_fail_the_run() -> None:
    ledger = _ledger(("a", "2-0"), ("a", "2-0"), ("a", "not-an-id"))
    record = _subscriber(ledger, "a")
    record.reset()
    record.delivered("a", "2-0", (7, 7))  # not the payload acknowledged as a 2-0
    record.delivered("b", "4-0", (0, 9))  # a channel it never asked for
    record.delivered("a", "", (0, 9))  # an event without an id

    assert ledger.verdict().failures == {
        "resets": 1,
        "misrouted": 1,
        "mismatched": 1,
        "id_collisions": 1,
        "bad_ids": 2,
    }
    assert ledger.answered == 3


def test_acks_after_a_moment_are_counted_by_their_answer_time() -> None:
    ledger = Ledger(CHANNELS)
    ledger.ack("a", "1-0", (0, 1), sent_at=9.0, acked_at=9.5)
    ledger.ack("a", "2-0", (0, 2), sent_at=9.9, acked_at=10.5)

    assert ledger.acked_after(10.0) == 1


def test_a_lost_event_is_told_apart_by_whether_the_cursor_has_passed_it() -> None:
    ledger = _ledger(("a", "2-0"), ("b", "2-0"), ("a", "3-0"), ("a", "9-0"))
    record = _subscriber(ledger, "a", "b")
    record.delivered("a", "2-0", (0, 1))
    record.saw_id("2-0")
    record.delivered("a", "3-0", (0, 3))
    record.saw_id("3-0")  # b's 2-0, a same-id twin, is now behind the cursor for good

    verdict = ledger.verdict()

    assert record.cursor == (3, 0)
    assert verdict.lost == {"a": 1, "b": 1}
    assert verdict.lost_ahead_of_cursor == 1  # a's 9-0: not reached yet


def test_one_publish_that_reached_a_channel_under_two_ids_was_published_twice() -> None:
    ledger = Ledger(["a", "b"])
    first = ledger.subscriber("first", frozenset({"a"}))
    second = ledger.subscriber("second", frozenset({"a", "b"}))
    first.saw_id("1-0")
    second.saw_id("1-0")
    ledger.ack("a", "5-0", (0, 7), 1.0, 2.0)
    # The first try's event (answer lost), and the retry published anew under another id.
    first.delivered("a", "4-0", (0, 7))
    second.delivered("a", "5-0", (0, 7))
    # One publish on two channels under one id is one publish.
    second.delivered("a", "6-0", (1, 1))
    second.delivered("b", "6-0", (1, 1))
    verdict = ledger.verdict()
    assert verdict.published_twice == 1
    assert verdict.failures["published_twice"] == 1
    assert verdict.examples["published_twice"] == ["a (0, 7) as 4-0, 5-0"]
