"""The arithmetic of "the whole service": who counts once, and what is summed."""

from __future__ import annotations

from app.fleet.aggregate import TOTAL_FIELDS, merge_workers, total
from tests.support.snapshots import MB, make_snapshot


def test_the_live_snapshot_replaces_this_workers_shared_one() -> None:
    stale_self = make_snapshot(pid=1, connections=3, at=100.0)
    other = make_snapshot(pid=2, connections=5, at=100.0)
    live = make_snapshot(pid=1, connections=4, at=104.0)
    workers = merge_workers(live, [stale_self, other])
    assert workers == [live, other]  # once each, ordered by id


def test_this_worker_counts_even_before_its_first_share_arrives() -> None:
    live = make_snapshot(pid=7)
    assert merge_workers(live, []) == [live]
    assert merge_workers(live, [make_snapshot(pid=3)])[0]["pid"] == 3  # order by worker id


def test_total_sums_every_field_over_workers() -> None:
    workers = [
        make_snapshot(
            pid=1,
            connections=13,
            channels=2,
            published=10,
            delivered=40,
            dropped=1,
            overflow_disconnects=2,
            reaped=3,
            cache_hits=5,
            cache_misses=6,
            rss_bytes=60 * MB,
        ),
        make_snapshot(
            pid=2,
            connections=17,
            channels=2,  # the same two channels, subscribed on both workers: counted twice
            published=1,
            delivered=4,
            dropped=0,
            overflow_disconnects=1,
            reaped=0,
            cache_hits=1,
            cache_misses=0,
            rss_bytes=70 * MB,
        ),
    ]
    assert total(workers) == {
        "connections": 30,
        "channels": 4,
        "published": 11,
        "delivered": 44,
        "dropped": 1,
        "overflow_disconnects": 3,
        "reaped": 3,
        "cache_hits": 6,
        "cache_misses": 6,
        "rss_bytes": 130 * MB,
        "workers": 2,
    }


def test_total_of_no_worker_is_zero() -> None:
    assert total([]) == {**dict.fromkeys(TOTAL_FIELDS, 0), "workers": 0}
