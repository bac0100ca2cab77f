"""A byte-bounded LRU cache of finished responses.

When the same producer is asked the same question in the same conversation, the
full text of an earlier answer can be replayed instead of running the producer
again. This module holds those texts; it does no I/O and knows nothing of SSE.

Design decisions (read the reason before "fixing" one):

* **Bounded by items AND bytes.** An item cap alone lets a few huge responses
  take unbounded memory; a byte cap alone lets millions of tiny entries pay
  per-entry overhead. Either bound being exceeded evicts least-recently-used
  entries until both hold.
* **Bytes are counted, not guessed.** Values are stored as UTF-8 ``bytes`` and an
  entry's size is ``len(value_utf8) + len(key_utf8)``. ``sys.getsizeof`` of a
  ``str`` depends on CPython's internal representation and would make the byte
  bound meaningless for non-ASCII text. Object headers are not counted: they are
  a constant per entry that ``max_items`` already bounds.
* **Oversized entries are refused, not admitted then evicted.** Admitting an
  entry larger than ``max_bytes`` would flush every other entry and then the
  entry itself. Refusing it leaves the cache intact; the refusal is counted in
  ``rejected`` so an undersized ``max_bytes`` shows up in the stats.
* **TTL is checked lazily in ``get`` and in bulk by ``expire()``.** Checking on
  every access keeps ``get``/``set`` O(1); a periodic ``expire()`` (O(n)) frees
  the memory of entries nobody asks for again. An entry whose age is at least
  ``ttl_seconds`` is expired.
* **An entry remembers the conversation that stored it** (``set(...,
  conversation=...)``), so an operator can drop one conversation's answers
  (:meth:`ResponseCache.clear_conversation`) without a second index: that walk
  is O(n) over at most ``max_items`` entries and runs only on request. The
  id's bytes count towards the entry's size. A key does not depend on the
  conversation id (two new conversations asking the same first question share
  one entry), so such an entry belongs to whichever conversation stored it.
* **The clock is injectable** (``time.monotonic`` by default, immune to wall-clock
  jumps) so tests drive expiry without sleeping.
* **No locks.** Every method is synchronous and never awaits, so under asyncio
  each call is atomic with respect to other coroutines. Do not share one
  instance between threads.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
import unicodedata
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal, NamedTuple

from app.responses.producers.base import Message

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_ITEMS",
    "DEFAULT_TTL_SECONDS",
    "EVICTION_REASONS",
    "CacheStats",
    "EvictionReason",
    "ResponseCache",
    "make_cache_key",
    "normalize_input",
]

DEFAULT_MAX_ITEMS = 50
DEFAULT_MAX_BYTES = 10 * 1024 * 1024
DEFAULT_TTL_SECONDS = 3600.0

EvictionReason = Literal["items", "bytes", "ttl", "pressure", "operator"]
EVICTION_REASONS: tuple[EvictionReason, ...] = ("items", "bytes", "ttl", "pressure", "operator")

# "surrogatepass" so a response carrying a lone surrogate (possible in a Python
# str, invalid in UTF-8) round-trips instead of crashing the caller; for every
# valid string the byte count equals the plain UTF-8 length.
_ENCODING = "utf-8"
_ENCODING_ERRORS = "surrogatepass"

# shrink() computes "keep (1 - fraction) of n" in floating point, where
# 1 - 0.9 == 0.09999999999999998; rounding first stops 10 * that from flooring
# to 0 and evicting one entry more than asked.
_SHRINK_ROUND_DIGITS = 9


def _encode(text: str) -> bytes:
    return text.encode(_ENCODING, _ENCODING_ERRORS)


class _Entry(NamedTuple):
    """One stored response: the UTF-8 value, its accounted size, birth time and the
    conversation that stored it (``None`` outside conversations)."""

    value: bytes
    size: int
    stored_at: float
    conversation: str | None = None


@dataclass(frozen=True, slots=True)
class CacheStats:
    """A snapshot of a cache's occupancy and counters; safe to hand to a client."""

    items: int
    bytes: int
    max_items: int
    max_bytes: int
    hits: int
    misses: int
    hit_rate: float
    evictions: Mapping[str, int]
    rejected: int

    def as_dict(self) -> dict[str, int | float | dict[str, int]]:
        """Plain, JSON-serializable form (``evictions`` copied into a ``dict``)."""
        return {
            "items": self.items,
            "bytes": self.bytes,
            "max_items": self.max_items,
            "max_bytes": self.max_bytes,
            "hits": self.hits,
            "misses": self.misses,
            "hit_rate": self.hit_rate,
            "evictions": dict(self.evictions),
            "rejected": self.rejected,
        }


class ResponseCache:
    """Full response texts by key, bounded by entry count, UTF-8 bytes and age."""

    def __init__(
        self,
        max_items: int = DEFAULT_MAX_ITEMS,
        max_bytes: int = DEFAULT_MAX_BYTES,
        ttl_seconds: float = DEFAULT_TTL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_items <= 0:
            raise ValueError(f"max_items must be positive, got {max_items!r}")
        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be positive, got {max_bytes!r}")
        # Written as "not >" so NaN is refused too: it would make nothing expire.
        if not ttl_seconds > 0:
            raise ValueError(f"ttl_seconds must be positive, got {ttl_seconds!r}")
        self._max_items = max_items
        self._max_bytes = max_bytes
        self._ttl = ttl_seconds
        self._clock = clock
        # Insertion order doubles as recency order: first = least recently used.
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._bytes = 0
        self._hits = 0
        self._misses = 0
        self._rejected = 0
        # Keyed by str (written only through EvictionReason-typed helpers) so a
        # snapshot can be handed out as a plain Mapping[str, int].
        self._evictions: dict[str, int] = dict.fromkeys(EVICTION_REASONS, 0)

    def get(self, key: str) -> str | None:
        """The cached text for ``key``, or ``None`` if absent or expired."""
        entry = self._entries.get(key)
        if entry is None:
            self._misses += 1
            return None
        if self._is_expired(entry, self._clock()):
            self._remove(key, "ttl")
            self._misses += 1
            return None
        self._entries.move_to_end(key)
        self._hits += 1
        return entry.value.decode(_ENCODING, _ENCODING_ERRORS)

    def set(self, key: str, value: str, *, conversation: str | None = None) -> bool:
        """Store ``value`` under ``key``; ``False`` if it is too large to cache.

        A refused value still removes an older entry under the same key: that
        entry no longer describes the latest response and must not be replayed.
        """
        encoded = _encode(value)
        size = len(encoded) + len(_encode(key))
        if conversation is not None:
            size += len(_encode(conversation))
        old = self._entries.pop(key, None)
        if old is not None:
            # A replacement, not an eviction: the key stays wanted.
            self._bytes -= old.size
        if size > self._max_bytes:
            self._rejected += 1
            return False
        self._entries[key] = _Entry(encoded, size, self._clock(), conversation)
        self._bytes += size
        # The new entry is last and fits both bounds alone, so this loop stops
        # before reaching it.
        while len(self._entries) > self._max_items:
            self._evict_oldest("items")
        while self._bytes > self._max_bytes:
            self._evict_oldest("bytes")
        return True

    def expire(self) -> int:
        """Remove every entry at least ``ttl_seconds`` old; return bytes freed."""
        now = self._clock()
        stale = [key for key, entry in self._entries.items() if self._is_expired(entry, now)]
        return sum(self._remove(key, "ttl") for key in stale)

    def shrink(self, fraction: float) -> int:
        """Evict least-recently-used entries to give back ``fraction`` of the cache.

        Called under memory pressure. Afterwards ``items <= floor((1 - fraction) *
        items_before)`` and ``bytes <= (1 - fraction) * bytes_before``;
        ``fraction=1`` empties the cache. Returns the bytes freed.
        """
        # "not (...)" so NaN, which fails every comparison, is refused as well.
        if not 0 < fraction <= 1:
            raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
        keep = 1.0 - fraction
        max_items = math.floor(round(keep * len(self._entries), _SHRINK_ROUND_DIGITS))
        max_bytes = math.floor(round(keep * self._bytes, _SHRINK_ROUND_DIGITS))
        freed = 0
        while self._entries and (len(self._entries) > max_items or self._bytes > max_bytes):
            freed += self._evict_oldest("pressure")
        return freed

    def clear(self, reason: EvictionReason = "pressure") -> int:
        """Drop every entry (counted as ``reason`` evictions); return bytes freed."""
        freed = self._bytes
        self._evictions[reason] += len(self._entries)
        self._entries.clear()
        self._bytes = 0
        return freed

    def clear_conversation(self, conversation: str) -> tuple[int, int]:
        """Drop the entries ``conversation`` stored (an operator's request);
        returns ``(items, bytes)`` freed."""
        keys = [key for key, entry in self._entries.items() if entry.conversation == conversation]
        return len(keys), sum(self._remove(key, "operator") for key in keys)

    def stats(self) -> CacheStats:
        """A snapshot of occupancy, bounds and counters."""
        lookups = self._hits + self._misses
        return CacheStats(
            items=len(self._entries),
            bytes=self._bytes,
            max_items=self._max_items,
            max_bytes=self._max_bytes,
            hits=self._hits,
            misses=self._misses,
            hit_rate=self._hits / lookups if lookups else 0.0,
            # A read-only copy: later evictions must not change a taken snapshot.
            evictions=MappingProxyType(dict(self._evictions)),
            rejected=self._rejected,
        )

    @property
    def items(self) -> int:
        """Number of stored entries (expired ones included until removed)."""
        return len(self._entries)

    @property
    def bytes(self) -> int:
        """UTF-8 bytes of all stored keys and values."""
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def _is_expired(self, entry: _Entry, now: float) -> bool:
        return now - entry.stored_at >= self._ttl

    def _remove(self, key: str, reason: EvictionReason) -> int:
        entry = self._entries.pop(key)
        self._bytes -= entry.size
        self._evictions[reason] += 1
        return entry.size

    def _evict_oldest(self, reason: EvictionReason) -> int:
        _, entry = self._entries.popitem(last=False)
        self._bytes -= entry.size
        self._evictions[reason] += 1
        return entry.size


def normalize_input(text: str) -> str:
    """Canonical form of a prompt for cache lookups.

    NFC so composed and decomposed accents match; whitespace runs (any Unicode
    whitespace) collapse to one space and the ends are stripped, since layout
    does not change a question. Case is kept: "US" and "us" are different asks.
    """
    return " ".join(unicodedata.normalize("NFC", text).split())


def make_cache_key(producer: str, input: str, context: Sequence[Message]) -> str:
    """A fixed-size key for "this producer, this input, this conversation".

    The context is part of the key because the same question in a different
    conversation can deserve a different answer. JSON gives an unambiguous
    encoding (no separator a value could forge); sha256 keeps keys at 64 hex
    characters however long the conversation, so keys cost little of the byte
    budget.
    """
    payload = [
        producer,
        normalize_input(input),
        [[message.role, message.content] for message in context],
    ]
    # ensure_ascii escapes lone surrogates, so the encoding below cannot fail.
    canonical = json.dumps(payload, ensure_ascii=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()
