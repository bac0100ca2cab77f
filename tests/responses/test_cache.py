"""Tests for the byte-bounded LRU response cache and its key function."""

from __future__ import annotations

import math

import pytest

from app.responses.cache import CacheStats, ResponseCache, make_cache_key
from app.responses.producers.base import Message
from tests.support.clock import FakeClock

# A 64-hex key, like the ones make_cache_key produces, costs this many bytes.
KEY_BYTES = 64


def entry_size(key: str, value: str) -> int:
    return len(key.encode("utf-8")) + len(value.encode("utf-8"))


def test_item_bound_evicts_least_recently_used() -> None:
    cache = ResponseCache(max_items=2)

    assert cache.set("a", "1")
    assert cache.set("b", "2")
    assert cache.set("c", "3")

    assert cache.items == 2
    assert cache.get("a") is None
    assert cache.get("b") == "2"
    assert cache.get("c") == "3"
    assert cache.stats().evictions["items"] == 1
    assert cache.stats().evictions["bytes"] == 0


def test_byte_bound_counts_utf8_bytes_not_characters() -> None:
    # "é" is 2 bytes and "😀" is 4 in UTF-8: by characters all three entries
    # would fit in 40; by bytes only the last two do.
    value_a = "é" * 10  # 10 chars, 20 bytes
    value_b = "😀" * 4  # 4 chars, 16 bytes
    value_c = "x" * 2  # 2 chars, 2 bytes
    cache = ResponseCache(max_items=10, max_bytes=40)

    cache.set("a", value_a)
    assert cache.bytes == entry_size("a", value_a) == 21
    cache.set("b", value_b)
    assert cache.bytes == 21 + 17
    cache.set("c", value_c)  # 38 + 3 = 41 > 40: "a" must go

    assert cache.get("a") is None
    assert cache.get("b") == value_b
    assert cache.get("c") == value_c
    assert cache.bytes == 17 + 3
    assert cache.stats().evictions["bytes"] == 1
    assert cache.stats().evictions["items"] == 0


def test_multibyte_value_round_trips_unchanged() -> None:
    cache = ResponseCache()
    text = "naïve café — 日本語 😀"

    cache.set("k", text)

    assert cache.get("k") == text
    assert cache.bytes == entry_size("k", text)


def test_oversized_entry_is_rejected_counted_and_not_stored() -> None:
    cache = ResponseCache(max_items=10, max_bytes=20)
    cache.set("small", "ok")

    stored = cache.set("big", "x" * 20)  # 3 + 20 bytes > 20

    assert stored is False
    assert cache.get("big") is None
    assert cache.get("small") == "ok"  # nothing was evicted to make room
    stats = cache.stats()
    assert stats.rejected == 1
    assert stats.items == 1
    assert stats.bytes == entry_size("small", "ok")
    assert sum(stats.evictions.values()) == 0


def test_oversized_replacement_removes_stale_older_entry() -> None:
    cache = ResponseCache(max_bytes=20)
    cache.set("k", "old")

    assert cache.set("k", "n" * 50) is False

    assert cache.get("k") is None
    assert cache.bytes == 0
    assert cache.stats().rejected == 1


def test_entry_exactly_max_bytes_is_stored() -> None:
    cache = ResponseCache(max_bytes=10)

    assert cache.set("k", "v" * 9)

    assert cache.bytes == 10
    assert cache.get("k") == "v" * 9


def test_ttl_expired_entry_is_a_miss_via_get() -> None:
    clock = FakeClock()
    cache = ResponseCache(ttl_seconds=60.0, clock=clock)
    cache.set("k", "value")

    clock.advance(59.0)
    assert cache.get("k") == "value"

    clock.advance(1.0)
    assert cache.get("k") is None

    stats = cache.stats()
    assert stats.items == 0
    assert stats.bytes == 0
    assert stats.evictions["ttl"] == 1
    assert (stats.hits, stats.misses) == (1, 1)


def test_ttl_counts_from_set_not_from_last_get() -> None:
    clock = FakeClock()
    cache = ResponseCache(ttl_seconds=60.0, clock=clock)
    cache.set("k", "value")

    for _ in range(3):
        clock.advance(25.0)
        cache.get("k")

    assert cache.get("k") is None  # 75 s after set, despite reads at 25 and 50


def test_replacing_an_entry_restarts_its_ttl() -> None:
    clock = FakeClock()
    cache = ResponseCache(ttl_seconds=60.0, clock=clock)
    cache.set("k", "v1")
    clock.advance(50.0)
    cache.set("k", "v2")
    clock.advance(50.0)

    assert cache.get("k") == "v2"


def test_expire_removes_only_expired_entries_and_returns_bytes_freed() -> None:
    clock = FakeClock()
    cache = ResponseCache(ttl_seconds=60.0, clock=clock)
    cache.set("old1", "aaaa")
    cache.set("old2", "bbbbbb")
    clock.advance(30.0)
    cache.set("new", "cc")
    clock.advance(30.0)

    freed = cache.expire()

    assert freed == entry_size("old1", "aaaa") + entry_size("old2", "bbbbbb")
    assert cache.items == 1
    assert cache.bytes == entry_size("new", "cc")
    assert cache.stats().evictions["ttl"] == 2
    assert cache.get("new") == "cc"


def test_expire_with_nothing_expired_frees_nothing() -> None:
    cache = ResponseCache(clock=FakeClock())
    cache.set("k", "v")

    assert cache.expire() == 0
    assert cache.items == 1


def test_get_refreshes_recency_so_another_entry_is_evicted() -> None:
    cache = ResponseCache(max_items=2)
    cache.set("a", "1")
    cache.set("b", "2")

    assert cache.get("a") == "1"  # "b" is now least recently used
    cache.set("c", "3")

    assert cache.get("b") is None
    assert cache.get("a") == "1"
    assert cache.get("c") == "3"


def test_set_of_existing_key_refreshes_recency() -> None:
    cache = ResponseCache(max_items=2)
    cache.set("a", "1")
    cache.set("b", "2")

    cache.set("a", "1 again")
    cache.set("c", "3")

    assert cache.get("b") is None
    assert cache.get("a") == "1 again"


def test_replacing_an_existing_key_adjusts_bytes() -> None:
    cache = ResponseCache()
    cache.set("k", "short")
    cache.set("other", "zz")

    cache.set("k", "a much longer value")
    assert cache.bytes == entry_size("k", "a much longer value") + entry_size("other", "zz")
    assert cache.items == 2

    cache.set("k", "é")
    assert cache.bytes == entry_size("k", "é") + entry_size("other", "zz")
    # A replacement is not an eviction.
    assert sum(cache.stats().evictions.values()) == 0


def test_replacement_that_grows_evicts_others_to_fit_bytes() -> None:
    cache = ResponseCache(max_bytes=20)
    cache.set("a", "x" * 5)  # 6 bytes
    cache.set("b", "y" * 5)  # 6 bytes

    cache.set("b", "y" * 15)  # 16 bytes: 6 + 16 > 20, so "a" goes

    assert cache.get("a") is None
    assert cache.get("b") == "y" * 15
    assert cache.bytes == 16


def test_shrink_evicts_least_recently_used_and_counts_pressure() -> None:
    cache = ResponseCache(max_items=10)
    keys = [f"k{i}" for i in range(4)]
    for key in keys:
        cache.set(key, "v" * 8)  # 10 bytes each
    cache.get("k0")  # k0 becomes most recent: k1 and k2 are the oldest now
    before = cache.bytes

    freed = cache.shrink(0.5)

    assert freed == 20
    assert cache.bytes == before - freed == 20
    assert cache.items == 2
    assert cache.get("k1") is None
    assert cache.get("k2") is None
    assert cache.get("k0") is not None
    assert cache.get("k3") is not None
    assert cache.stats().evictions["pressure"] == 2


def test_shrink_keeps_evicting_until_byte_target_is_met() -> None:
    cache = ResponseCache(max_items=10)
    cache.set("s0", "s")  # 3 bytes, least recently used
    cache.set("big", "b" * 97)  # 100 bytes
    cache.set("s1", "s")
    cache.set("s2", "s")
    # Targets: items <= floor(0.9 * 4) == 3 and bytes <= 0.9 * 109 == 98.1.
    # Evicting "s0" meets the item target but leaves 106 bytes, so "big" must
    # go too even though the item count is already low enough.
    freed = cache.shrink(0.1)

    assert freed == 103
    assert cache.items == 2
    assert cache.bytes == 6
    assert cache.get("big") is None
    assert cache.stats().evictions["pressure"] == 2


def test_shrink_avoids_float_rounding_overshoot() -> None:
    cache = ResponseCache(max_items=10)
    for i in range(10):
        cache.set(f"k{i}", "v")  # 3 bytes each

    cache.shrink(0.9)  # 1 - 0.9 == 0.0999...98 in floats; keep floor(1.0) == 1

    assert cache.items == 1
    assert cache.bytes == 3


def test_shrink_full_fraction_empties_cache() -> None:
    cache = ResponseCache()
    cache.set("a", "1")
    cache.set("b", "22")

    assert cache.shrink(1.0) == entry_size("a", "1") + entry_size("b", "22")
    assert cache.items == 0
    assert cache.bytes == 0


def test_shrink_result_matches_stated_bounds() -> None:
    cache = ResponseCache(max_items=50)
    for i in range(7):
        cache.set(f"key{i}", "x" * (i + 1) * 3)
    items_before, bytes_before = cache.items, cache.bytes

    cache.shrink(0.3)

    assert cache.items <= math.floor(0.7 * items_before)
    assert cache.bytes <= 0.7 * bytes_before


@pytest.mark.parametrize("fraction", [0.0, -0.1, 1.5, math.nan])
def test_shrink_rejects_fraction_outside_zero_one(fraction: float) -> None:
    cache = ResponseCache()
    cache.set("k", "v")

    with pytest.raises(ValueError):
        cache.shrink(fraction)
    assert cache.items == 1


def test_shrink_empty_cache_frees_nothing() -> None:
    assert ResponseCache().shrink(0.5) == 0


def test_clear_frees_all_bytes_and_counts_pressure() -> None:
    cache = ResponseCache()
    cache.set("a", "1")
    cache.set("b", "日本")
    expected = entry_size("a", "1") + entry_size("b", "日本")

    assert cache.clear() == expected

    assert cache.items == 0
    assert cache.bytes == 0
    assert cache.get("a") is None
    assert cache.stats().evictions["pressure"] == 2


def test_stats_shape_and_values() -> None:
    cache = ResponseCache(max_items=3, max_bytes=1000)
    cache.set("k", "v")

    stats = cache.stats()

    assert isinstance(stats, CacheStats)
    assert stats.as_dict() == {
        "items": 1,
        "bytes": 2,
        "max_items": 3,
        "max_bytes": 1000,
        "hits": 0,
        "misses": 0,
        "hit_rate": 0.0,
        "evictions": {"items": 0, "bytes": 0, "ttl": 0, "pressure": 0, "operator": 0},
        "rejected": 0,
    }


def test_hit_rate_is_hits_over_lookups() -> None:
    cache = ResponseCache()
    cache.set("k", "v")
    cache.get("k")
    cache.get("k")
    cache.get("k")
    cache.get("missing")

    stats = cache.stats()

    assert (stats.hits, stats.misses) == (3, 1)
    assert stats.hit_rate == pytest.approx(0.75)


def test_stats_snapshot_does_not_change_afterwards() -> None:
    cache = ResponseCache(max_items=1)
    snapshot = cache.stats()

    cache.set("a", "1")
    cache.set("b", "2")

    assert snapshot.items == 0
    assert snapshot.evictions["items"] == 0
    assert snapshot.as_dict()["evictions"] == {
        "items": 0,
        "bytes": 0,
        "ttl": 0,
        "pressure": 0,
        "operator": 0,
    }
    assert cache.stats().evictions["items"] == 1


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_items": 0},
        {"max_items": -1},
        {"max_bytes": 0},
        {"ttl_seconds": 0.0},
        {"ttl_seconds": -5.0},
        {"ttl_seconds": math.nan},
    ],
)
def test_constructor_rejects_non_positive_bounds(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        ResponseCache(**kwargs)  # type: ignore[arg-type]


# --- make_cache_key -------------------------------------------------------

CONTEXT = (Message("user", "hi"), Message("assistant", "hello"))


def test_cache_key_ignores_whitespace_differences() -> None:
    a = make_cache_key("echo", "what  is\tthe\n time?", CONTEXT)
    b = make_cache_key("echo", "  what is the time?  ", CONTEXT)

    assert a == b


def test_cache_key_ignores_unicode_composition() -> None:
    composed = "caf\u00e9"
    decomposed = "cafe\u0301"

    assert make_cache_key("echo", composed, ()) == make_cache_key("echo", decomposed, ())


def test_cache_key_is_case_sensitive() -> None:
    assert make_cache_key("echo", "US", ()) != make_cache_key("echo", "us", ())


def test_cache_key_depends_on_producer() -> None:
    assert make_cache_key("echo", "q", CONTEXT) != make_cache_key("llm", "q", CONTEXT)


@pytest.mark.parametrize(
    "other_context",
    [
        (),
        (Message("user", "hi"),),
        (Message("user", "hi"), Message("assistant", "hello!")),
        (Message("user", "hi"), Message("user", "hello")),
        (Message("assistant", "hello"), Message("user", "hi")),
    ],
)
def test_cache_key_depends_on_context(other_context: tuple[Message, ...]) -> None:
    assert make_cache_key("echo", "q", CONTEXT) != make_cache_key("echo", "q", other_context)


def test_cache_key_fields_cannot_bleed_into_each_other() -> None:
    # A naive "producer + input" concatenation would make these collide.
    assert make_cache_key("ab", "c", ()) != make_cache_key("a", "bc", ())


def test_cache_key_is_fixed_size_hex_and_deterministic() -> None:
    long_context = tuple(Message("user", "x" * 1000) for _ in range(50))

    key = make_cache_key("echo", "q" * 10_000, long_context)

    assert len(key) == KEY_BYTES
    assert int(key, 16) >= 0
    assert key == make_cache_key("echo", "q" * 10_000, long_context)


def test_clearing_a_conversation_drops_only_the_entries_it_stored() -> None:
    cache = ResponseCache()
    cache.set("k1", "one", conversation="c1")
    cache.set("k2", "two", conversation="c1")
    cache.set("k3", "three", conversation="c2")
    cache.set("k4", "four")
    size_c1 = len("one") + len("k1") + len("c1") + len("two") + len("k2") + len("c1")
    before = cache.bytes
    assert cache.clear_conversation("c1") == (2, size_c1)
    assert cache.bytes == before - size_c1
    assert cache.get("k1") is None and cache.get("k3") == "three" and cache.get("k4") == "four"
    assert cache.clear_conversation("nobody") == (0, 0)
    assert cache.stats().evictions["operator"] == 2
