"""Token buckets for publish rate limits, kept in a bounded LRU table.

A bucket holds up to ``burst`` tokens and refills at ``rate`` tokens per
second; each publish takes one. A full bucket carries no information (it is
what a new client gets), so evicting the least recently used bucket when the
table is full forgets only how much of its burst a quiet client had spent.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable

__all__ = ["BUCKET_ENTRY_BYTES", "BucketTable", "retry_after_seconds"]

BUCKET_ENTRY_BYTES = 250
"""Measured size of one table entry (key string, tuple, two floats, dict slot), rounded up."""


def retry_after_seconds(wait: float) -> int:
    """A ``Retry-After`` value (whole seconds, at least 1) for a wait in seconds."""
    return max(1, math.ceil(wait))


class BucketTable:
    """Token buckets by key, at most ``max_keys`` of them (least recently used evicted)."""

    def __init__(
        self,
        rate_per_second: float,
        burst: int,
        max_keys: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate = rate_per_second
        self.burst = float(burst)
        self.max_keys = max_keys
        self.clock = clock
        self.evicted = 0
        # key -> (tokens left, when they were counted)
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, key: str) -> float:
        """Take one token for ``key``: 0.0 if allowed, else the seconds until one is available."""
        now = self.clock()
        tokens, counted_at = self._buckets.pop(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - counted_at) * self.rate)
        if tokens < 1.0:
            self._buckets[key] = (tokens, now)
            return (1.0 - tokens) / self.rate
        self._buckets[key] = (tokens - 1.0, now)
        if len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)
            self.evicted += 1
        return 0.0

    def clear(self) -> None:
        self._buckets.clear()
