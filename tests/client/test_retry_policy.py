"""The retry policy as pure functions: backoff steps and their jitter, ``Retry-After`` read
and bounded, and when a call's schedule stops, on a fake clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from herald_client import RetryPolicy
from herald_client._retry import RetrySchedule, parse_retry_after

from tests.support.clock import FakeClock

LOW, HIGH = (lambda: 0.0), (lambda: 0.999999)


def test_backoff_doubles_from_the_base_up_to_the_cap_with_half_of_each_step_random() -> None:
    policy = RetryPolicy(backoff_base=0.1, backoff_max=1.0)
    assert [policy.backoff(n, LOW) for n in range(1, 7)] == pytest.approx(
        [0.05, 0.1, 0.2, 0.4, 0.5, 0.5]
    )
    assert [policy.backoff(n, HIGH) for n in range(1, 7)] == pytest.approx(
        [0.1, 0.2, 0.4, 0.8, 1.0, 1.0], rel=1e-5
    )
    assert policy.backoff(10_000, HIGH) == pytest.approx(1.0, rel=1e-5)  # no overflow


def test_retry_after_is_honoured_up_to_its_cap_and_spread_by_the_base() -> None:
    policy = RetryPolicy(backoff_base=0.2, retry_after_max=4.0)
    assert policy.honour_retry_after(3.0, LOW) == 3.0
    assert policy.honour_retry_after(3.0, HIGH) == pytest.approx(3.2, rel=1e-5)
    assert policy.honour_retry_after(120.0, LOW) == 4.0


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (None, None),
        ("5", 5.0),
        (" 0 ", 0.0),
        ("120", 120.0),
        ("-1", None),
        ("1.5", None),  # delay-seconds is a whole number
        ("soon", None),
        ("\u00b2", None),  # a digit to str.isdigit, not to HTTP
        ("", None),
        ("Wed, 01 Jan 2031 00:00:30 GMT", 30.0),
        ("Wed, 01 Jan 2031 00:00:30", 30.0),  # no zone: GMT, as HTTP dates are
        ("Tue, 31 Dec 2030 23:59:00 GMT", 0.0),  # in the past: now
    ],
)
def test_retry_after_values(value: str | None, seconds: float | None) -> None:
    now = datetime(2031, 1, 1, tzinfo=UTC)
    assert parse_retry_after(value, now) == seconds


def test_retry_after_date_against_the_current_time() -> None:
    soon = datetime.now(UTC) + timedelta(seconds=60)
    seconds = parse_retry_after(soon.strftime("%a, %d %b %Y %H:%M:%S GMT"))
    assert seconds is not None and 55 < seconds <= 60


def test_schedule_stops_after_max_attempts() -> None:
    clock = FakeClock()
    schedule = RetrySchedule(RetryPolicy(max_attempts=3), clock=clock, random=LOW)
    waits = []
    for _ in range(5):
        schedule.start_attempt(10.0)
        waits.append(schedule.wait_before_retry())
    assert waits == [pytest.approx(0.1), pytest.approx(0.2), None, None, None]
    assert schedule.attempts == 5


def test_schedule_stops_rather_than_wait_past_the_deadline() -> None:
    clock = FakeClock()
    policy = RetryPolicy(max_attempts=100, deadline=10.0, retry_after_max=60.0)
    schedule = RetrySchedule(policy, clock=clock, random=LOW)
    schedule.start_attempt(10.0)
    assert schedule.wait_before_retry(retry_after=9.0) == 9.0
    assert schedule.wait_before_retry(retry_after=10.0) is None  # would end at the deadline
    clock.advance(9.95)
    assert schedule.wait_before_retry() is None  # 0.1 s of backoff would pass it


def test_each_attempt_may_take_only_what_remains_of_the_deadline() -> None:
    clock = FakeClock()
    schedule = RetrySchedule(RetryPolicy(deadline=30.0), clock=clock, random=LOW)
    assert schedule.start_attempt(10.0) == 10.0
    clock.advance(25.0)
    assert schedule.start_attempt(10.0) == 5.0
    clock.advance(6.0)
    assert schedule.start_attempt(10.0) == 0.0


@pytest.mark.parametrize(
    "settings",
    [
        {"max_attempts": 0},
        {"deadline": 0},
        {"deadline": float("inf")},
        {"backoff_base": -1},
        {"backoff_max": float("nan")},
        {"retry_after_max": -0.5},
    ],
)
def test_policies_that_cannot_work_are_refused(settings: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        RetryPolicy(**settings)
