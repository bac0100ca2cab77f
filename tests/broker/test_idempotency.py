"""The in-process records of keyed publishes (``memory://``) and the drafts' fingerprint:
bounded by count and by age, on a clock the test drives."""

from __future__ import annotations

import tracemalloc

from app.broker.base import Draft
from app.broker.idempotency import RECORD_BYTES, KeyRecords, fingerprint
from tests.support.clock import FakeClock

WINDOW = 60.0


def test_a_record_lives_for_the_window_and_not_a_moment_longer() -> None:
    clock = FakeClock()
    records = KeyRecords(WINDOW, max_keys=10, clock=clock)
    records.remember("k", b"f" * 16, (5, 3), 2)
    clock.advance(WINDOW - 0.001)
    found = records.find("k")
    assert found is not None and found.fingerprint == b"f" * 16
    assert found.positions() == [(5, 3), (5, 4)]
    clock.advance(0.001)
    assert records.find("k") is None
    assert len(records) == 0


def test_past_the_count_the_oldest_key_is_forgotten_first() -> None:
    clock = FakeClock()
    records = KeyRecords(WINDOW, max_keys=3, clock=clock)
    for n in range(5):
        assert records.find(f"k{n}") is None
        records.remember(f"k{n}", b"f", (1, n), 1)
        clock.advance(1)
    assert len(records) == 3
    assert [records.find(f"k{n}") is None for n in range(5)] == [True, True, False, False, False]
    assert records.stats()["evicted"] == 2


def test_expiry_drops_every_expired_record_from_the_front() -> None:
    clock = FakeClock()
    records = KeyRecords(WINDOW, max_keys=100, clock=clock)
    for n in range(10):
        assert records.find(f"k{n}") is None
        records.remember(f"k{n}", b"f", (1, n), 1)
        clock.advance(10)
    # k0..k4 are 60 s old or more now; k5..k9 are not.
    assert records.find("k9") is not None
    assert len(records) == 5


def test_a_record_takes_at_most_its_stated_bytes_beyond_its_key() -> None:
    records = KeyRecords(WINDOW, max_keys=10_000)
    keys = [f"{n:036d}" for n in range(10_000)]  # a UUID's length
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    for n, key in enumerate(keys):
        records.remember(key, fingerprint([Draft(("c",), b"%d" % n)]), (1_796_000_000_000, n), 1)
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    grown = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    assert grown / len(keys) <= RECORD_BYTES


def test_the_fingerprint_covers_each_field_of_each_draft_in_order() -> None:
    base = [Draft(("a", "b"), b"data: 1\n"), Draft(("c",), b"data: 2\n")]
    variants = [
        [Draft(("a",), b"data: 1\n"), base[1]],
        [Draft(("a", "b"), b"data: 9\n"), base[1]],
        [Draft(("a", "b"), b"data: 1\n", private=True), base[1]],
        [Draft(("a", "b"), b"data: 1\n", event_id=""), base[1]],
        [Draft(("a", "b"), b"data: 1\n", event_id="x"), base[1]],
        [base[1], base[0]],
        base[:1],
        # Fields that run together differently must not collide.
        [Draft(("a", "b"), b"data: 1\ndata: 2\n")],
    ]
    prints = {fingerprint(drafts) for drafts in variants}
    assert len(prints) == len(variants)
    assert fingerprint(base) not in prints
    assert fingerprint([Draft(("a", "b"), b"data: 1\n"), Draft(("c",), b"data: 2\n")]) == (
        fingerprint(base)
    )
