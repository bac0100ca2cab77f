"""``memory://``: ids, history and delivery inside this one process.

Nothing to start, nothing shared: with several workers, an event published
through one worker never reaches subscribers of another (start-up warns).
Publishing is synchronous under the hood (no await between assigning the id,
storing it and fanning it out), which is what makes replay-then-live exact.

A paged replay takes its head at the first page, like a whole one; each later
page reads the history as it is then, after the last event returned and up to
that head (events published meanwhile are above it and reach the listener).
Eviction meanwhile is checked against the logs' loss floors from the cursor on,
whatever the first page's cursor was: an event evicted before it was read is a
loss even for an ``earliest`` replay.

A keyed publish (``publish_once``) looks its key up, publishes and records it with no
await in between, so the lookup is part of the step that numbers the events: two
publishes racing with one key run one after the other, and the second finds the first's
record (``app.broker.idempotency``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from app.broker.base import (
    UNBOUNDED_PAGE,
    Broker,
    Draft,
    EventListener,
    IdempotencyConflictError,
    PageLimit,
    Published,
    PublishKey,
    Replay,
    ReplayPages,
    ResyncListener,
)
from app.broker.history import HistoryStore
from app.broker.idempotency import KeyRecords
from app.wire.encoding import encode_frame
from app.wire.event import Event
from app.wire.event_id import (
    EARLIEST,
    EventIdGenerator,
    EventKey,
    format_event_id,
    parse_event_id,
)

__all__ = ["MemoryBroker"]


class MemoryBroker(Broker):
    def __init__(
        self,
        *,
        history_size: int,
        history_max_bytes: int,
        history_max_channels: int,
        channel_ttl_seconds: float,
        clock: Callable[[], float] = time.monotonic,
        ids: EventIdGenerator | None = None,
        idempotency_seconds: float = 300.0,
        idempotency_max_keys: int = 20_000,
    ) -> None:
        self._ids = ids or EventIdGenerator()
        self._clock = clock
        self.history = HistoryStore(
            max_events=history_size,
            max_bytes=history_max_bytes,
            max_channels=history_max_channels,
            ttl_seconds=channel_ttl_seconds,
            floor=self._ids.first,
        )
        self.keys = KeyRecords(idempotency_seconds, idempotency_max_keys, clock)
        self._listener: EventListener | None = None

    async def connect(self, listener: EventListener, resync: ResyncListener | None = None) -> None:
        # Delivery is synchronous with publishing: the live feed can never skip.
        self._listener = listener

    async def disconnect(self) -> None:
        self._listener = None

    async def publish(self, drafts: Sequence[Draft]) -> list[Event]:
        return self._publish_now(drafts)

    async def publish_once(self, drafts: Sequence[Draft], key: PublishKey) -> Published:
        # No await: the lookup, the numbering and the record are one step.
        record = self.keys.find(key.key)
        if record is not None:
            if record.fingerprint != key.fingerprint:
                raise IdempotencyConflictError(key.key)
            return Published(self._replayed(drafts, record.positions()), replayed=True)
        events = self._publish_now(drafts)
        self.keys.remember(key.key, key.fingerprint, events[0].key, len(events))
        return Published(events)

    @staticmethod
    def _replayed(drafts: Sequence[Draft], positions: list[EventKey]) -> list[Event]:
        """The events a keyed publish made, rebuilt from its drafts (the fingerprint says
        they are the same) and its positions."""
        events = []
        for key, draft in zip(positions, drafts, strict=True):
            event_id = draft.event_id if draft.event_id is not None else format_event_id(key)
            frame = encode_frame(event_id, draft.body)
            events.append(Event(key, event_id, draft.channels, frame, draft.private))
        return events

    def _publish_now(self, drafts: Sequence[Draft]) -> list[Event]:
        # No await: the batch is numbered, stored and fanned out in one step.
        if len(drafts) == 1:  # the usual publish: none of a batch's bookkeeping
            draft = drafts[0]
            key = self._ids.next()
            event_id = draft.event_id
            supplied_id = event_id is not None
            if event_id is None:
                event_id = format_event_id(key)
            frame = encode_frame(event_id, draft.body)
            event = Event(key, event_id, draft.channels, frame, draft.private)
            self.history.append(event, self._clock(), supplied_id=supplied_id)
            if self._listener is not None:
                self._listener(event)
            return [event]
        # A batch takes its positions with one clock read and enters history in one call
        # (one channel-log lookup per channel, not per event): per-event lookups dominate a
        # large batch's cost.
        events = []
        supplied = False
        for key, draft in zip(self._ids.take(len(drafts)), drafts, strict=True):
            event_id = draft.event_id
            if event_id is None:
                event_id = format_event_id(key)
            else:
                supplied = True
            frame = encode_frame(event_id, draft.body)
            events.append(Event(key, event_id, draft.channels, frame, draft.private))
        self.history.extend(events, self._clock(), supplied_ids=supplied)
        listener = self._listener
        if listener is not None:
            for event in events:
                listener(event)
        return events

    async def subscribe(self, channel: str) -> None:
        self.history.add_interest(channel, self._clock())

    async def unsubscribe(self, channel: str) -> None:
        self.history.remove_interest(channel, self._clock())

    async def replay(
        self,
        channels: Sequence[str],
        last_event_id: str | None,
        *,
        every_channel: bool = False,
        page: PageLimit | None = None,
    ) -> Replay:
        # No await from here on: the snapshot and the head are one instant, and every
        # later event reaches the listener after this call (the broker contract).
        head_key = self._ids.last
        head = format_event_id(head_key)
        if last_event_id is None:
            return Replay(head=head)
        exact = last_event_id != EARLIEST
        after: EventKey = (0, 0)
        if exact:
            found = parse_event_id(last_event_id) or self.history.resolve(last_event_id)
            # Garbage, an id not issued yet, or one issued before this process began
            # (a restart): unknown here, whatever the history floors say.
            if found is None or found > self._ids.last or found < self._ids.first:
                return Replay(head=head, reset=True, reason="unknown_id")
            after = found
        pages = _MemoryPages(
            self.history, None if every_channel else tuple(channels), after, head_key, page
        )
        events = pages.read(exact=exact)
        if events is None:
            return Replay(head=head, reset=True, reason="history_expired")
        if page is None:
            return Replay(head=head, events=events)  # one page holds it all
        return Replay(head=head, events=events, rest=None if pages.done else pages)

    def sweep(self, now: float) -> int:
        return self.history.sweep(now)

    def trim_history(self, keep: int) -> int:
        return self.history.trim(keep)

    def stats(self) -> dict[str, object]:
        return {
            "url": "memory://",
            "state": "ok",
            "history": self.history.stats(),
            "idempotency": self.keys.stats(),
        }


class _MemoryPages(ReplayPages):
    """A replay's cursor over this process's history: each page is read when asked for."""

    def __init__(
        self,
        history: HistoryStore,
        channels: tuple[str, ...] | None,
        after: EventKey,
        head: EventKey,
        limit: PageLimit | None,
    ) -> None:
        self._history = history
        self._channels = channels
        self._after = after
        self._head = head
        self._limit = limit or UNBOUNDED_PAGE
        self.done = False

    def read(self, *, exact: bool = True) -> list[Event] | None:
        if self.done:
            return []
        found = self._history.page(
            self._channels, self._after, self._head, self._limit, exact=exact
        )
        if found is None:
            return None
        events, more = found
        if events:
            self._after = events[-1].key
        self.done = not more
        return events

    async def next(self) -> list[Event] | None:
        return self.read()
