"""Event ids: a parser that never raises, a formatter, and a monotonic generator."""

from __future__ import annotations

import pytest

from app.wire.event_id import (
    MAX_EVENT_ID_LENGTH,
    EventIdGenerator,
    format_event_id,
    parse_event_id,
)


class StepClock:
    """A millisecond clock that returns the queued readings in order, then repeats the last."""

    def __init__(self, *readings: int) -> None:
        self._readings = list(readings)

    def __call__(self) -> int:
        if len(self._readings) > 1:
            return self._readings.pop(0)
        return self._readings[0]


def test_parse_valid_id() -> None:
    assert parse_event_id("1700000000000-5") == (1_700_000_000_000, 5)
    assert parse_event_id("0-0") == (0, 0)


def test_parse_id_without_sequence_means_sequence_zero() -> None:
    assert parse_event_id("1700000000000") == (1_700_000_000_000, 0)


def test_parse_ignores_surrounding_whitespace() -> None:
    assert parse_event_id(" 12-3 ") == (12, 3)


@pytest.mark.parametrize(
    "raw",
    ["not-an-id", "-5", "12-x", "1-2-3", "1.5-0", "+1-0", "0x10-0", "12 -3", " ", "-"],
)
def test_parse_garbage_returns_none(raw: str) -> None:
    assert parse_event_id(raw) is None


def test_parse_too_long_returns_none() -> None:
    assert parse_event_id("1" * MAX_EVENT_ID_LENGTH) == (int("1" * MAX_EVENT_ID_LENGTH), 0)
    assert parse_event_id("1" * (MAX_EVENT_ID_LENGTH + 1)) is None
    assert parse_event_id("x" * 10_000) is None


@pytest.mark.parametrize(
    "raw",
    [
        "\u00b2\u00b3",  # superscript digits: str.isdigit() says yes
        "\u0661\u0662\u0663-\u0660",  # Arabic-Indic digits
        "12-\u0663",
        "\uff11\uff12-0",  # fullwidth digits
    ],
)
def test_parse_unicode_digits_returns_none(raw: str) -> None:
    assert parse_event_id(raw) is None


def test_parse_none_and_empty_return_none() -> None:
    assert parse_event_id(None) is None
    assert parse_event_id("") is None


def test_format_event_id() -> None:
    assert format_event_id((1_700_000_000_000, 42)) == "1700000000000-42"
    assert parse_event_id(format_event_id((9, 8))) == (9, 8)


def test_generator_issues_increasing_sequence_within_one_millisecond() -> None:
    ids = EventIdGenerator(clock_ms=StepClock(1000))
    assert [ids.next() for _ in range(3)] == [(1000, 1), (1000, 2), (1000, 3)]
    assert ids.last == (1000, 3)


def test_generator_restarts_sequence_when_the_clock_advances() -> None:
    ids = EventIdGenerator(clock_ms=StepClock(1000, 1000, 1000, 1005))
    assert [ids.next() for _ in range(3)] == [(1000, 1), (1000, 2), (1005, 0)]


def test_generator_stays_monotonic_when_the_clock_steps_back() -> None:
    ids = EventIdGenerator(clock_ms=StepClock(1000, 1000, 1001, 900, 1001, 1002))
    keys = [ids.next() for _ in range(5)]
    assert keys == [(1000, 1), (1001, 0), (1001, 1), (1001, 2), (1002, 0)]
    assert keys == sorted(set(keys))


def test_generator_first_is_a_position_below_every_issued_id() -> None:
    ids = EventIdGenerator(clock_ms=StepClock(5000, 5000, 4000))
    assert ids.first == ids.last == (5000, 0)  # nothing issued yet: the head is the start
    issued = [ids.next(), ids.next()]
    assert issued == [(5000, 1), (5000, 2)]
    assert all(key > ids.first for key in issued)


def test_take_numbers_a_batch_consecutively_with_one_clock_read() -> None:
    ids = EventIdGenerator(clock_ms=StepClock(1000, 1000, 1007))
    assert ids.take(3) == [(1000, 1), (1000, 2), (1000, 3)]
    assert ids.take(2) == [(1007, 0), (1007, 1)]  # one read: both in the same millisecond
    assert ids.last == (1007, 1)


def test_take_stays_monotonic_when_the_clock_steps_back() -> None:
    ids = EventIdGenerator(clock_ms=StepClock(1000, 1005, 900))
    assert ids.take(2) == [(1005, 0), (1005, 1)]
    assert ids.take(2) == [(1005, 2), (1005, 3)]
    assert ids.last == (1005, 3)
