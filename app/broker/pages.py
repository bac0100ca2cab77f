"""Replay pages: merging what bounded reads of several sources returned into one page.

A source is one ordered run of events: a channel's log or stream, or the whole
event log for a pattern subscription. A paged replay reads each source from the
cursor (the last event sent) with a bound, then merges the runs by id.

Design decisions (read before changing):

1. Only the merged events at or below the *bound* are in order and complete: the
   smallest last id among the runs that stopped at their read limit. A source
   that stopped there may hold, right after its run, an event older than what
   another run returned; below that id every source's events were read. The
   rest is left for the next page, read again from the cursor: a page costs one
   bounded read per source, never the history.
2. Each source gets an even share of the page (``ReadSize``): a page then reads
   about one page of entries, however many sources, and at least one entry per
   source, so every page makes progress (the source holding the bound back
   contributes its run up to the bound, at least one event).
3. Bytes: a read cannot be bounded in bytes by Redis, so the share in entries
   follows the largest entry expected: from the first read on, the largest event
   the broker's reader saw lately (:class:`RecentLargest`), then also the largest
   this replay has seen. A replay of large events therefore asks for a few of
   them from its first read: a first read sized in events alone would bring a
   hundred large events into the worker to keep four, and a crowd resuming at
   once would multiply that. The page itself is cut at ``PageLimit.bytes``
   after the merge, at least one event.
4. An event on several of the sources is in several runs under one id: the
   merge keeps it once.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from heapq import merge

from app.broker.base import PageLimit
from app.wire.event import Event

__all__ = ["RECENT_WINDOW_SECONDS", "ReadSize", "RecentLargest", "cut_page", "merge_runs"]

RECENT_WINDOW_SECONDS = 60.0
"""How long an event's size counts as recent for :class:`RecentLargest`."""


class RecentLargest:
    """The largest event a broker saw in the last one or two windows of
    :data:`RECENT_WINDOW_SECONDS`, in frame bytes; ``assumed`` (the largest event a
    publish may carry) until it has seen a window with traffic, or again after a window
    without any, so a replay never sizes its reads on sizes it has not seen."""

    __slots__ = ("_assumed", "_clock", "_current", "_previous", "_rotate_at", "_window")

    def __init__(
        self,
        assumed: int,
        window_seconds: float = RECENT_WINDOW_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._assumed = max(1, assumed)
        self._window = window_seconds
        self._clock = clock
        self._current = 0
        self._previous = 0
        self._rotate_at = clock() + window_seconds

    def saw(self, size: int) -> None:
        """An event of ``size`` frame bytes went by (called by the reader for every entry:
        a comparison, no clock)."""
        if size > self._current:
            self._current = size

    def largest(self) -> int:
        now = self._clock()
        if now >= self._rotate_at:
            # Rotated when asked: a window that saw nothing leaves 0, and the assumption
            # holds again until traffic is seen.
            self._previous, self._current = self._current, 0
            self._rotate_at = now + self._window
        return max(self._previous, self._current) or self._assumed


class ReadSize:
    """How many entries one source's read asks for (design notes 2 and 3)."""

    __slots__ = ("bytes", "events", "largest")

    def __init__(self, limit: PageLimit, sources: int, expected_largest: int = 0) -> None:
        sources = max(1, sources)
        self.events = max(1, limit.events // sources)
        self.bytes = max(1, limit.bytes // sources)
        self.largest = expected_largest

    @property
    def count(self) -> int:
        if not self.largest:
            return self.events
        return max(1, min(self.events, self.bytes // self.largest))

    def saw(self, events: Iterable[Event]) -> None:
        for event in events:
            size = len(event.frame)
            if size > self.largest:
                self.largest = size


def merge_runs(runs: Iterable[Sequence[Event]]) -> Iterable[Event]:
    """The runs' events in id order, each id once (design note 4)."""
    last: Event | None = None
    for event in merge(*runs, key=lambda event: event.key):
        if last is None or event.key != last.key:
            last = event
            yield event


def cut_page(
    runs: Sequence[tuple[Sequence[Event], bool]], limit: PageLimit
) -> tuple[list[Event], bool]:
    """One page from the sources' runs, each ``(events in id order, stopped at its read
    limit)``; and whether more events may follow the page (design note 1)."""
    truncated = [run[-1].key for run, more in runs if more and run]
    bound = min(truncated) if truncated else None
    page: list[Event] = []
    size = 0
    for event in merge_runs([run for run, _ in runs]):
        if bound is not None and event.key > bound:
            return page, True
        frame = len(event.frame)
        if page and (len(page) >= limit.events or size + frame > limit.bytes):
            return page, True
        page.append(event)
        size += frame
    return page, bound is not None
