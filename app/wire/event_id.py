"""Event ids: ``<milliseconds>-<sequence>``, the shape of a Redis Streams entry id.

Ids come from one sequence per broker (this process's generator for ``memory://``,
the Redis deployment's event log for ``redis://``), so they are ordered across
every channel it carries and no two events share one. That is what lets a single
``Last-Event-ID`` (a browser keeps one per stream) resume a multi-channel stream
exactly: replay every retained event of every channel whose id is greater.

An id is also a *position*: every stream opens with an ``id:`` line naming the
position it starts after (see ``app.sse.stream_response``), which need not be an event's
id — e.g. ``<start-ms>-0``, the position before this process's first event.
Clients treat ids as opaque strings.

Parsing never raises: a ``Last-Event-ID`` comes from the client and may be
anything; an unparseable one is treated as unknown.
"""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = [
    "EARLIEST",
    "MAX_EVENT_ID_LENGTH",
    "EventIdGenerator",
    "EventKey",
    "format_event_id",
    "parse_event_id",
]

MAX_EVENT_ID_LENGTH = 64
EARLIEST = "earliest"
"""The reserved resume point (Mercure's): every retained event of the stream's channels."""

EventKey = tuple[int, int]


def _wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


def parse_event_id(raw: str | None) -> EventKey | None:
    if not raw or len(raw) > MAX_EVENT_ID_LENGTH:
        return None
    ms, _, seq = raw.strip().partition("-")
    seq = seq or "0"
    if not (ms.isascii() and ms.isdigit() and seq.isascii() and seq.isdigit()):
        return None
    return int(ms), int(seq)


def format_event_id(key: EventKey) -> str:
    return f"{key[0]}-{key[1]}"


class EventIdGenerator:
    """Monotonic ids even if the wall clock steps back (as Redis does)."""

    __slots__ = ("_clock_ms", "first", "last")

    def __init__(self, clock_ms: Callable[[], int] = _wall_clock_ms) -> None:
        self._clock_ms = clock_ms
        # The position before this process's first event: anything below it was
        # issued by an earlier process (or nobody). `last` is the newest position.
        self.first: EventKey = (clock_ms(), 0)
        self.last: EventKey = self.first

    def next(self) -> EventKey:
        ms = self._clock_ms()
        last_ms, last_seq = self.last
        key = (last_ms, last_seq + 1) if ms <= last_ms else (ms, 0)
        self.last = key
        return key

    def take(self, count: int) -> list[EventKey]:
        """``count`` consecutive positions with one clock read (a batch: one millisecond,
        consecutive sequence numbers, as ``next`` would give within that millisecond)."""
        ms = self._clock_ms()
        last_ms, last_seq = self.last
        first = last_seq + 1 if ms <= last_ms else 0
        ms = max(ms, last_ms)
        keys = [(ms, seq) for seq in range(first, first + count)]
        self.last = keys[-1]
        return keys
