"""Bounded per-channel history for replay, within one global byte budget.

Bounds: at most ``max_events`` per channel, ``max_bytes`` over all channels
(each event counted as its frame plus ``EVENT_OVERHEAD_BYTES`` of bookkeeping),
at most ``max_channels`` channel logs beyond those with local subscribers, and a
channel with no subscribers and no activity for ``ttl_seconds`` is dropped.

Every eviction raises the channel's *loss floor*: the newest id that may have
been lost. A client resuming from an id at or above every floor of its channels
gets an exact replay; below it, it is told to reset. Ids are ordered across
channels (one generator), so the globally oldest event is at the front of one
insertion-ordered map and the byte budget evicts it in O(1).

An event published on several channels is kept once — one entry of that map,
its bytes counted once — and listed in each of its channels' logs. Leaving one
log (that channel's cap, or the channel dropped) raises that log's floor only;
the event and its bytes go when the last log holding it lets go, counted by
``_holders`` (multi-channel events only, so the usual single-channel event
costs nothing extra). The byte budget evicts the globally oldest event from
every log still holding it: being the oldest retained, it is at the front of
each. Replay merges the channels' runs in id order and keeps each event once.

A paged replay (``page``) reads at most a page of each log, from the newest end
back to the cursor, then merges them (``app.broker.pages``): the events are
already here, so a page holds references, not copies, but its size is what the
stream writes before reading on, and the hub counts it.

Publisher-supplied ids (Mercure's ``id`` field) are cursors too: an index maps
each to the position of the earliest retained event that carries it, and an
entry leaves with its event, so the index is bounded by the history itself.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Iterable, Sequence
from heapq import merge
from itertools import islice

from app.broker.base import PageLimit
from app.broker.pages import cut_page
from app.wire.event import Event
from app.wire.event_id import EventKey, format_event_id

__all__ = ["EVENT_OVERHEAD_BYTES", "EXTRA_CHANNEL_OVERHEAD_BYTES", "HistoryStore", "event_cost"]

# Event object, its id string, key tuple and the two container slots, measured
# with tracemalloc on CPython 3.11 (see tests/broker/test_history.py).
EVENT_OVERHEAD_BYTES = 400
# A channel log is a list up to this many events (see _ChannelLog).
SMALL_LOG_EVENTS = 16
# Each further channel of one event: its slot in that log's deque, its share of the
# holders entry and the longer channels tuple (estimated as for the above).
EXTRA_CHANNEL_OVERHEAD_BYTES = 120


def event_cost(event: Event) -> int:
    """The bytes one retained event is counted for in the budget."""
    extra = len(event.channels) - 1
    return len(event.frame) + EVENT_OVERHEAD_BYTES + extra * EXTRA_CHANNEL_OVERHEAD_BYTES


def _run(
    events: Sequence[Event], after: EventKey, head: EventKey, count: int
) -> tuple[list[Event], bool]:
    """At most ``count`` events of one log after ``after`` up to ``head``, and whether
    more follow: found by walking back from the newest (what is newer than the cursor)."""
    newer = 0
    for event in reversed(events):
        if event.key <= after:
            break
        newer += 1
    run: list[Event] = []
    for event in islice(events, len(events) - newer, None):
        if event.key > head:
            return run, False
        if len(run) == count:
            return run, True
        run.append(event)
    return run, False


class _ChannelLog:
    """One channel's retained events, oldest first.

    A list while it holds at most ``SMALL_LOG_EVENTS``, a deque past that: a deque's
    first block is ~600 B however few events it holds, and many logs hold one or two (a
    Mercure subscription's topic holds its subscription's events), while taking the
    oldest off a list moves every other reference: cheap for a short list only.
    """

    __slots__ = ("events", "floor", "interest", "last_activity")

    def __init__(self, floor: EventKey, now: float) -> None:
        self.events: list[Event] | deque[Event] = []
        self.floor = floor
        self.interest = 0
        self.last_activity = now

    def add(self, event: Event) -> int:
        """Append ``event``; returns how many the log then holds."""
        events = self.events
        events.append(event)
        held = len(events)
        if held > SMALL_LOG_EVENTS and isinstance(events, list):
            self.events = deque(events)
        return held

    def pop_oldest(self) -> Event:
        events = self.events
        return events.popleft() if isinstance(events, deque) else events.pop(0)


class HistoryStore:
    def __init__(
        self,
        *,
        max_events: int,
        max_bytes: int,
        max_channels: int,
        ttl_seconds: float,
        floor: EventKey,
    ) -> None:
        self.max_events = max_events
        self.max_bytes = max_bytes
        self.max_channels = max_channels
        self.ttl_seconds = ttl_seconds
        self.bytes = 0
        self.evicted = 0
        self.channels_dropped = 0
        # Newest id lost with a dropped channel log: a log created later cannot
        # know what it missed, so it starts from here.
        self._dropped_floor = floor
        self._logs: OrderedDict[str, _ChannelLog] = OrderedDict()
        self._all: OrderedDict[EventKey, Event] = OrderedDict()
        # Publisher-supplied id -> position of the earliest retained event carrying it.
        self._supplied_ids: dict[str, EventKey] = {}
        # How many logs still hold each multi-channel event (single-channel: one, implied).
        self._holders: dict[EventKey, int] = {}

    def __len__(self) -> int:
        return len(self._all)

    @property
    def channel_count(self) -> int:
        return len(self._logs)

    def _log(self, channel: str, now: float) -> _ChannelLog:
        log = self._logs.get(channel)
        if log is None:
            if len(self._logs) >= self.max_channels:
                self._drop_least_recent_unwatched()
            log = self._logs[channel] = _ChannelLog(self._dropped_floor, now)
        else:
            self._logs.move_to_end(channel)
        log.last_activity = now
        return log

    def append(self, event: Event, now: float, *, supplied_id: bool = False) -> None:
        """Retain one event (the usual publish: ``extend``'s batch bookkeeping skipped)."""
        key, channels = event.key, event.channels
        self._all[key] = event
        if supplied_id:
            self._supplied_ids.setdefault(event.id, key)
        self.bytes += event_cost(event)
        if len(channels) > 1:
            self._holders[key] = len(channels)
        for channel in channels:
            log = self._log(channel, now)
            if log.add(event) > self.max_events:
                self._drop_oldest(log)
        if self.bytes > self.max_bytes:
            self._keep_within_bytes()

    def extend(self, events: Iterable[Event], now: float, *, supplied_ids: bool = False) -> None:
        """``append`` each of ``events`` in order. A batch looks each channel's log up once,
        not once per event; ``supplied_ids``: some carry a publisher-supplied id."""
        logs: dict[str, _ChannelLog] = {}
        dropped = self.channels_dropped
        everything, max_events = self._all, self.max_events
        for event in events:
            key, channels = event.key, event.channels
            everything[key] = event
            if supplied_ids and event.id != format_event_id(key):
                self._supplied_ids.setdefault(event.id, key)
            self.bytes += event_cost(event)
            if len(channels) > 1:
                self._holders[key] = len(channels)
            for channel in channels:
                log = logs.get(channel)
                if log is None:
                    log = logs[channel] = self._log(channel, now)
                    if self.channels_dropped != dropped:
                        # Making room dropped a log: it may be one looked up for this batch.
                        dropped = self.channels_dropped
                        logs = {channel: log}
                if log.add(event) > max_events:
                    self._drop_oldest(log)
            if self.bytes > self.max_bytes:
                self._keep_within_bytes()

    def _drop_oldest(self, log: _ChannelLog) -> None:
        """A full log lets go of its oldest event. That happens once per event appended,
        so the usual event (one channel, no supplied ids) skips ``_evict`` and ``_release``."""
        oldest = log.pop_oldest()
        if len(oldest.channels) == 1 and not self._supplied_ids:
            log.floor = max(log.floor, oldest.key)
            self.evicted += 1
            del self._all[oldest.key]
            self.bytes -= event_cost(oldest)
        else:
            self._evict(log, oldest)

    def _keep_within_bytes(self) -> None:
        everything = self._all
        while self.bytes > self.max_bytes and everything:
            oldest = next(iter(everything.values()))
            for channel in oldest.channels:
                # The oldest retained event is at the front of every log still holding it.
                holder = self._logs.get(channel)
                if holder is not None and holder.events and holder.events[0] is oldest:
                    self._evict(holder, holder.pop_oldest())

    def resolve(self, supplied_id: str) -> EventKey | None:
        """The position of the earliest retained event whose publisher gave it this id."""
        return self._supplied_ids.get(supplied_id)

    def _evict(self, log: _ChannelLog, event: Event) -> None:
        log.floor = max(log.floor, event.key)
        self.evicted += 1
        self._release(event)

    def _release(self, event: Event) -> None:
        """One log let go of ``event``: forget it once the last one has."""
        key = event.key
        if len(event.channels) > 1:
            left = self._holders[key] - 1
            if left:
                self._holders[key] = left
                return
            del self._holders[key]
        del self._all[key]
        if self._supplied_ids and self._supplied_ids.get(event.id) == key:
            del self._supplied_ids[event.id]
        self.bytes -= event_cost(event)

    def since(
        self, channels: Iterable[str], after: EventKey, *, exact: bool = True
    ) -> list[Event] | None:
        """Events after ``after`` on ``channels`` in id order, or None if some may be lost
        (``exact=False``: whatever is retained, lost or not)."""
        runs: list[list[Event]] = []
        for channel in channels:
            log = self._logs.get(channel)
            floor = log.floor if log is not None else self._dropped_floor
            if exact and after < floor:
                return None
            if log is None:
                continue
            run: list[Event] = []
            for event in reversed(log.events):
                if event.key <= after:
                    break
                run.append(event)
            run.reverse()
            runs.append(run)
        if len(runs) == 1:
            return runs[0]
        merged: list[Event] = []
        for event in merge(*runs, key=lambda event: event.key):
            # An event on several of these channels is in several runs: keep it once.
            if not merged or merged[-1] is not event:
                merged.append(event)
        return merged

    def since_all(self, after: EventKey, *, exact: bool = True) -> list[Event] | None:
        """Events after ``after`` on every channel, in id order (the replay of a pattern
        subscription), or None if some may be lost; costs what is newer than ``after``."""
        if exact:
            floors = (log.floor for log in self._logs.values())
            if after < max(floors, default=self._dropped_floor) or after < self._dropped_floor:
                return None
        run: list[Event] = []
        for key, event in reversed(self._all.items()):
            if key <= after:
                break
            run.append(event)
        run.reverse()
        return run

    def page(
        self,
        channels: Iterable[str] | None,
        after: EventKey,
        head: EventKey,
        limit: PageLimit,
        *,
        exact: bool = True,
    ) -> tuple[list[Event], bool] | None:
        """One page of the events after ``after`` up to ``head`` on ``channels`` (None:
        every channel), in id order, and whether more follow; None if some may be lost
        (``exact=False``: whatever is retained, lost or not)."""
        if channels is None:
            return self._page_all(after, head, limit, exact=exact)
        runs: list[tuple[Sequence[Event], bool]] = []
        for channel in channels:
            log = self._logs.get(channel)
            floor = log.floor if log is not None else self._dropped_floor
            if exact and after < floor:
                return None
            if log is not None:
                runs.append(_run(log.events, after, head, limit.events))
        return cut_page(runs, limit)

    def _page_all(
        self, after: EventKey, head: EventKey, limit: PageLimit, *, exact: bool
    ) -> tuple[list[Event], bool] | None:
        if exact:
            floors = (log.floor for log in self._logs.values())
            if after < max(floors, default=self._dropped_floor) or after < self._dropped_floor:
                return None
        # Walking back from the newest, the last ``limit.events`` seen are the oldest.
        oldest: deque[Event] = deque(maxlen=limit.events)
        seen = 0
        for key, event in reversed(self._all.items()):
            if key <= after:
                break
            if key <= head:
                oldest.append(event)
                seen += 1
        run = list(reversed(oldest))
        return cut_page([(run, seen > len(run))], limit)

    def add_interest(self, channel: str, now: float) -> None:
        self._log(channel, now).interest += 1

    def remove_interest(self, channel: str, now: float) -> None:
        log = self._logs.get(channel)
        if log is not None:
            log.interest = max(0, log.interest - 1)
            log.last_activity = now
            self._logs.move_to_end(channel)

    def sweep(self, now: float) -> int:
        """Drop logs with no subscribers and no activity for ``ttl_seconds``."""
        stale = [
            channel
            for channel, log in self._logs.items()
            if log.interest == 0 and now - log.last_activity > self.ttl_seconds
        ]
        for channel in stale:
            self._drop(channel)
        return len(stale)

    def trim(self, keep: int) -> int:
        """Keep at most ``keep`` events per channel; returns bytes freed."""
        before = self.bytes
        for log in self._logs.values():
            while len(log.events) > keep:
                self._evict(log, log.pop_oldest())
        return before - self.bytes

    def _drop_least_recent_unwatched(self) -> None:
        for channel, log in self._logs.items():
            if log.interest == 0:
                self._drop(channel)
                return
        # Every log has a local subscriber: the count is then bounded by
        # connections x channels per stream, so letting it grow is safe.

    def _drop(self, channel: str) -> None:
        log = self._logs.pop(channel)
        newest = log.events[-1].key if log.events else log.floor
        self._dropped_floor = max(self._dropped_floor, newest, log.floor)
        while log.events:
            self._release(log.pop_oldest())
        self.channels_dropped += 1

    def stats(self) -> dict[str, int]:
        return {
            "channels": len(self._logs),
            "events": len(self._all),
            "supplied_ids": len(self._supplied_ids),
            "bytes": self.bytes,
            "max_bytes": self.max_bytes,
            "evicted": self.evicted,
            "channels_dropped": self.channels_dropped,
        }
