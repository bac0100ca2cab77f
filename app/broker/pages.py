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
   follows the largest entry this replay has seen: once large events are seen,
   reads ask for fewer of them. The page itself is cut at ``PageLimit.bytes``
   after the merge, at least one event.
4. An event on several of the sources is in several runs under one id: the
   merge keeps it once.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from heapq import merge

from app.broker.base import PageLimit
from app.wire.event import Event

__all__ = ["ReadSize", "cut_page", "merge_runs"]


class ReadSize:
    """How many entries one source's read asks for (design notes 2 and 3)."""

    __slots__ = ("bytes", "events", "largest")

    def __init__(self, limit: PageLimit, sources: int) -> None:
        sources = max(1, sources)
        self.events = max(1, limit.events // sources)
        self.bytes = max(1, limit.bytes // sources)
        self.largest = 0

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
