"""Merging bounded reads into one page (app.broker.pages): only what every source has read
up to goes, at most a page of events and bytes but never less than one event, each id once."""

from __future__ import annotations

from app.broker.base import PageLimit
from app.broker.pages import ReadSize, RecentLargest, cut_page
from app.wire.event import Event


def event(seq: int, size: int = 10) -> Event:
    return Event((1, seq), f"1-{seq}", ("a",), b"x" * size)


def test_a_page_stops_at_its_events_and_its_bytes() -> None:
    run = [event(n) for n in range(10)]
    page, more = cut_page([(run, False)], PageLimit(events=4, bytes=1000))
    assert [e.key[1] for e in page] == [0, 1, 2, 3] and more
    page, more = cut_page([(run, False)], PageLimit(events=100, bytes=35))
    assert [e.key[1] for e in page] == [0, 1, 2] and more
    page, more = cut_page([(run, False)], PageLimit(events=100, bytes=1000))
    assert len(page) == 10 and not more


def test_an_event_larger_than_the_page_goes_alone() -> None:
    page, more = cut_page([([event(0, 500), event(1)], False)], PageLimit(events=10, bytes=100))
    assert [e.key[1] for e in page] == [0] and more


def test_a_run_cut_at_its_read_limit_bounds_the_page() -> None:
    # Source one stopped at its limit after 4: source two's 5 and 6 may have company unread.
    one = [event(1), event(4)]
    two = [event(2), event(5), event(6)]
    page, more = cut_page([(one, True), (two, False)], PageLimit(events=100, bytes=1000))
    assert [e.key[1] for e in page] == [1, 2, 4] and more


def test_an_event_in_two_runs_is_kept_once() -> None:
    shared = event(3)
    page, _ = cut_page([([event(1), shared], False), ([shared], False)], PageLimit(9, 999))
    assert [e.key[1] for e in page] == [1, 3]


def test_reads_ask_for_a_share_and_fewer_once_entries_are_large() -> None:
    size = ReadSize(PageLimit(events=100, bytes=4000), sources=4)
    assert size.count == 25
    size.saw([event(0, 500)])
    assert size.count == 2  # 1,000 bytes of share / 500-byte entries
    size.saw([event(1, 5000)])
    assert size.count == 1


def test_reads_are_sized_on_the_expected_largest_from_the_first() -> None:
    size = ReadSize(PageLimit(events=100, bytes=256_000), sources=1, expected_largest=64_000)
    assert size.count == 4  # not 100 large events to keep four


def test_recent_largest_assumes_the_limit_until_traffic_is_seen() -> None:
    now = [0.0]
    recent = RecentLargest(assumed=65_000, window_seconds=60, clock=lambda: now[0])
    assert recent.largest() == 65_000
    recent.saw(2_000)
    recent.saw(500)
    assert recent.largest() == 2_000
    now[0] = 61.0  # one window on: the last window's largest still counts
    assert recent.largest() == 2_000
    recent.saw(700)
    now[0] = 122.0  # two windows on: only what was seen since
    assert recent.largest() == 700
    now[0] = 183.0  # a window without traffic: back to the assumption
    assert recent.largest() == 65_000
