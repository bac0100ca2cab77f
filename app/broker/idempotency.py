"""Idempotent publishing at the broker: a publish that carries a key is numbered once per
key within a window, and a repeat gets the first one's positions instead of new events.

Design decisions (read before changing):

1. **The check is the numbering.** A broker looks the key up in the same atomic step
   that numbers the events (``memory://``: no await between the lookup, the numbering
   and the record; ``redis://`` and ``redis+cluster://``: inside ``PUBLISH_SCRIPT``).
   There is no "in flight" state: of two publishes racing with one key, whichever the
   step runs first publishes, and the other is answered from its record. Nobody waits,
   and no 409 is needed.
2. **A key is bound to its drafts.** The record holds a ``fingerprint`` of the drafts
   (channels, encoded body, private flag, supplied id of each, in order): the same
   events give the same fingerprint whatever the JSON whitespace of their request. A
   key met again with another fingerprint is refused (``IdempotencyConflictError``)
   and publishes nothing.
3. **One key space per hub** (per process on ``memory://``, per Redis deployment
   otherwise), not per publisher: a publisher whose token is re-minted between two
   tries is still recognised. Grants are checked before any key is looked at, and a
   key is bound to its drafts, so nobody learns more from another publisher's key than
   that it is taken.
4. **Bounded.** ``memory://`` keeps ``KeyRecords``: at most ``PUBLISH_IDEMPOTENCY_MAX_KEYS``
   records of constant size (``RECORD_BYTES`` plus the key), the oldest forgotten first,
   each for ``PUBLISH_IDEMPOTENCY_SECONDS``. Redis keeps one key per record with that
   expiry (docs/memory.md sizes it).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from hashlib import blake2b

from app.broker.base import Draft
from app.wire.event_id import EventKey

__all__ = [
    "FINGERPRINT_BYTES",
    "RECORD_BYTES",
    "KeyRecord",
    "KeyRecords",
    "fingerprint",
]

FINGERPRINT_BYTES = 16
"""blake2b-128: a collision between two different requests under one key is out of reach."""
RECORD_BYTES = 300
"""One in-process record beyond its key's characters: the record (slots, its ints), its
fingerprint's ``bytes``, the key's ``str`` header and the ordered dict's entry (~290 B with
tracemalloc, 64-bit CPython). A record is this plus a byte per key character, whatever
the number of events it answers for."""


def fingerprint(drafts: Sequence[Draft]) -> bytes:
    """A digest of what ``drafts`` publish: each one's channels, encoded body, private flag
    and supplied id, in order (lengths first, so no two lists of drafts run together)."""
    parts: list[bytes] = []
    for draft in drafts:
        names = "\n".join(draft.channels).encode()
        supplied = draft.event_id
        identity = b"" if supplied is None else supplied.encode()
        parts.append(
            b"%d %d %d %d %d\n"
            % (len(names), len(draft.body), draft.private, supplied is not None, len(identity))
        )
        parts += (names, draft.body, identity)
    return blake2b(b"".join(parts), digest_size=FINGERPRINT_BYTES).digest()


@dataclass(slots=True)
class KeyRecord:
    """What ``memory://`` remembers of a keyed publish: its fingerprint and its positions
    (a publish's events are consecutive in one millisecond: ``(ms, seq)`` to
    ``(ms, seq + count - 1)``), until ``expires_at``."""

    fingerprint: bytes
    ms: int
    seq: int
    count: int
    expires_at: float

    def positions(self) -> list[EventKey]:
        return [(self.ms, seq) for seq in range(self.seq, self.seq + self.count)]


class KeyRecords:
    """The in-process records, oldest first: forgotten after ``window_seconds`` and, past
    ``max_keys``, oldest first. Every record lives the same window, so insertion order is
    expiry order and expiring is popping from the front."""

    def __init__(
        self,
        window_seconds: float,
        max_keys: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.window_seconds = window_seconds
        self.max_keys = max(1, max_keys)
        self._clock = clock
        self._records: OrderedDict[str, KeyRecord] = OrderedDict()
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._records)

    def find(self, key: str) -> KeyRecord | None:
        """``key``'s record while it lives. Forgets the records whose window has ended, so
        ``remember`` right after (no await between) need not."""
        records = self._records
        if records:
            now = self._clock()
            while records and next(iter(records.values())).expires_at <= now:
                records.popitem(last=False)
        return records.get(key)

    def remember(self, key: str, fingerprint: bytes, first: EventKey, count: int) -> None:
        """Record a publish of ``count`` consecutive positions from ``first`` under ``key``
        (which ``find`` has just not found)."""
        records = self._records
        expires_at = self._clock() + self.window_seconds
        records[key] = KeyRecord(fingerprint, first[0], first[1], count, expires_at)
        if len(records) > self.max_keys:
            records.popitem(last=False)
            self.evicted += 1

    def stats(self) -> dict[str, object]:
        return {
            "keys": len(self._records),
            "max_keys": self.max_keys,
            "window_seconds": self.window_seconds,
            "evicted": self.evicted,
        }
