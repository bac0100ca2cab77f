"""Token buckets: burst, refill, the wait they report, and the bound on the table."""

from __future__ import annotations

import pytest

from app.limits.buckets import BucketTable, retry_after_seconds
from tests.support.clock import FakeClock


def test_a_burst_is_allowed_then_refused_with_the_wait_until_the_next_token() -> None:
    clock = FakeClock()
    table = BucketTable(rate_per_second=2, burst=3, max_keys=10, clock=clock)
    assert [table.take("k") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert table.take("k") == pytest.approx(0.5)
    clock.advance(0.25)
    assert table.take("k") == pytest.approx(0.25)
    clock.advance(0.25)
    assert table.take("k") == 0.0


def test_refill_is_capped_at_the_burst() -> None:
    clock = FakeClock()
    table = BucketTable(rate_per_second=10, burst=2, max_keys=10, clock=clock)
    table.take("k")
    clock.advance(3600)
    assert [table.take("k") for _ in range(3)][:2] == [0.0, 0.0]
    assert table.take("k") > 0


def test_keys_have_their_own_buckets() -> None:
    table = BucketTable(rate_per_second=1, burst=1, max_keys=10, clock=FakeClock())
    assert table.take("a") == 0.0
    assert table.take("a") > 0
    assert table.take("b") == 0.0


def test_the_table_never_holds_more_than_max_keys_and_evicts_the_least_recent() -> None:
    table = BucketTable(rate_per_second=1, burst=1, max_keys=3, clock=FakeClock())
    for key in ("a", "b", "c"):
        table.take(key)
    table.take("a")  # refused, but "a" is now the most recently used
    table.take("d")
    assert len(table) == 3
    assert table.evicted == 1
    assert table.take("a") > 0  # still remembered: "b" was evicted, not "a"
    assert table.take("b") == 0.0  # forgotten, so it starts full again


def test_a_refused_take_does_not_spend_a_token() -> None:
    clock = FakeClock()
    table = BucketTable(rate_per_second=1, burst=1, max_keys=10, clock=clock)
    table.take("k")
    for _ in range(5):
        table.take("k")
    clock.advance(1.0)
    assert table.take("k") == 0.0


@pytest.mark.parametrize(("wait", "header"), [(0.001, 1), (1.0, 1), (1.01, 2), (30.5, 31)])
def test_retry_after_is_whole_seconds_rounded_up(wait: float, header: int) -> None:
    assert retry_after_seconds(wait) == header
