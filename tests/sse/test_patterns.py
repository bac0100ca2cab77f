"""PatternIndex: equal patterns are one key, a channel's matches are computed once and
then only for patterns added since, departed patterns leave the cache, the cache is
bounded."""

from __future__ import annotations

from dataclasses import dataclass

from app.sse.patterns import PatternIndex


@dataclass(frozen=True)
class Prefix:
    prefix: str

    def matches(self, topic: str) -> bool:
        return topic.startswith(self.prefix)


def test_equal_patterns_are_evaluated_once_per_channel() -> None:
    index: PatternIndex[str] = PatternIndex(cache_size=10)
    for n in range(100):
        index.add(Prefix("books/"), f"s{n}")
    for _ in range(50):
        (matched,) = list(index.subscribers_for("books/1"))
        assert len(matched) == 100
    print("evaluations", index.evaluations, "hits", index.hits)
    assert index.evaluations == 1


def test_patterns_added_later_are_evaluated_incrementally() -> None:
    index: PatternIndex[str] = PatternIndex(cache_size=10)
    index.add(Prefix("a"), "s1")
    assert index.patterns_for("ab") == [Prefix("a")]
    index.add(Prefix("ab"), "s2")
    index.add(Prefix("x"), "s3")
    assert index.patterns_for("ab") == [Prefix("a"), Prefix("ab")]
    assert index.evaluations == 3  # "a" once, then only "ab" and "x"


def test_a_departed_pattern_stops_matching_and_returns_fresh() -> None:
    index: PatternIndex[str] = PatternIndex(cache_size=10)
    index.add(Prefix("a"), "s1")
    assert list(index.subscribers_for("ab")) == [{"s1"}]
    index.discard(Prefix("a"), "s1")
    assert list(index.subscribers_for("ab")) == []
    assert not index
    index.add(Prefix("a"), "s2")
    assert list(index.subscribers_for("ab")) == [{"s2"}]


def test_the_cache_is_bounded() -> None:
    index: PatternIndex[str] = PatternIndex(cache_size=3)
    index.add(Prefix(""), "s")
    for n in range(20):
        index.patterns_for(f"t{n}")
    assert index.cached == 3
