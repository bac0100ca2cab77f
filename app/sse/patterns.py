"""Subscriptions by pattern: which connections want an event, at a bounded cost.

Exact channels are a dict lookup in the hub. A pattern (a Mercure URL pattern,
the ``*`` wildcard) has to be *evaluated* against the event's channel, and doing
that for every pattern subscriber on every event is the cost that grows with the
crowd. So this index keeps the shape of Mercure's ``subscriberlist.go``:

1. Equal patterns are one key: a thousand subscribers of ``/books/:id`` cost one
   evaluation per channel, not a thousand.
2. A bounded LRU cache maps a channel to the patterns that match it. A pattern is
   evaluated once per distinct channel while both stay, not once per event.
3. The cache is incremental, not flushed: every pattern gets a sequence number
   when it first appears, a cache entry remembers up to which number it was
   computed, and a lookup evaluates only the patterns added since. A pattern that
   goes away takes its number with it; stale numbers are pruned at the next
   lookup. Subscribers coming and going therefore never recompute the cache.
4. Bounds: ``cache_size`` entries, each listing at most the patterns that match
   its channel; patterns are bounded by the connections that hold them.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Iterator
from typing import Generic, Protocol, TypeVar

__all__ = ["PatternIndex", "TopicPattern"]


class TopicPattern(Hashable, Protocol):
    def matches(self, topic: str) -> bool: ...


S = TypeVar("S")


class PatternIndex(Generic[S]):
    """Subscribers (any hashable, the hub's connections) by pattern, with the match cache."""

    def __init__(self, cache_size: int) -> None:
        self.cache_size = cache_size
        self._next = 0
        self._by_pattern: dict[TopicPattern, tuple[int, set[S]]] = {}
        self._by_number: dict[int, TopicPattern] = {}  # insertion order = number order
        # channel -> (numbers below this were evaluated, numbers of the patterns that match)
        self._cache: OrderedDict[str, tuple[int, list[int]]] = OrderedDict()
        self.evaluations = 0
        self.hits = 0

    def __bool__(self) -> bool:
        return bool(self._by_pattern)

    def __len__(self) -> int:
        return len(self._by_pattern)

    @property
    def cached(self) -> int:
        return len(self._cache)

    def add(self, pattern: TopicPattern, subscriber: S) -> None:
        entry = self._by_pattern.get(pattern)
        if entry is None:
            number = self._next
            self._next += 1
            entry = self._by_pattern[pattern] = (number, set())
            self._by_number[number] = pattern
        entry[1].add(subscriber)

    def discard(self, pattern: TopicPattern, subscriber: S) -> None:
        entry = self._by_pattern.get(pattern)
        if entry is None:
            return
        entry[1].discard(subscriber)
        if not entry[1]:
            del self._by_pattern[pattern]
            del self._by_number[entry[0]]

    def patterns_for(self, channel: str) -> list[TopicPattern]:
        """The current patterns matching ``channel`` (through the cache)."""
        by_number = self._by_number
        cached = self._cache.get(channel)
        if cached is not None:
            self._cache.move_to_end(channel)
            computed, numbers = cached
            self.hits += 1
        else:
            computed, numbers = 0, []
            if len(self._cache) >= self.cache_size:
                self._cache.popitem(last=False)
        live = [n for n in numbers if n in by_number]
        if computed < self._next:
            # Only the patterns added since this entry was computed (newest first).
            fresh: list[int] = []
            for number in reversed(by_number):
                if number < computed:
                    break
                self.evaluations += 1
                if by_number[number].matches(channel):
                    fresh.append(number)
            fresh.reverse()
            live.extend(fresh)
        if computed < self._next or len(live) != len(numbers):
            self._cache[channel] = (self._next, live)
        return [by_number[n] for n in live]

    def subscribers_for(self, channel: str) -> Iterator[set[S]]:
        """The subscriber sets of every pattern matching ``channel`` (may overlap)."""
        by_pattern = self._by_pattern
        for pattern in self.patterns_for(channel):
            yield by_pattern[pattern][1]

    def stats(self) -> dict[str, int]:
        return {
            "patterns": len(self._by_pattern),
            "cache_entries": len(self._cache),
            "cache_size": self.cache_size,
            "evaluations": self.evaluations,
            "cache_hits": self.hits,
        }
