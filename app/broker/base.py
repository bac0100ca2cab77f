"""The broker interface: where events are stored for replay and how they reach every worker.

The hub (``app.sse.hub``) owns local connections and fan-out; a broker owns
event ids, history and delivery between processes. ``memory://`` keeps all of
it in this process; ``redis://`` puts it in Redis Streams so several workers
and instances act as one. The hub API does not change with the broker.

Lifecycle: ``connect(listener, resync)`` → any number of publish/subscribe/replay →
``disconnect()``. The listener is called with every event published on a
channel this process has subscribed to, from the event loop, synchronously, in
id order. ``connect`` never fails for a broker that is merely unreachable: the
broker reports ``state`` "down" and recovers by itself.

The contract the hub's exactly-once delivery rests on (``app.sse.hub``):

1. Ids come from one sequence per broker, so they order events across channels.
2. ``replay(channels, after)`` returns, from one consistent snapshot, every
   retained event of ``channels`` after ``after`` and ``head``: the newest
   position of the whole sequence at that snapshot.
3. Every event with an id greater than a ``head`` that ``replay`` returned is
   passed to the listener *after* that ``replay`` call began, in id order — so a
   connection registered before it calls ``replay`` sees all of them live.
4. ``publish`` takes a batch of drafts and numbers them consecutively in
   request order, all or none (a batch is one step of the sequence: no other
   publish lands between its events). A draft may name several channels; the
   event is then one entry of the sequence, listed under each channel.
5. A broker that cannot keep 3 (its live feed skipped events: a trimmed log, a
   lost data set) calls ``resync``: the hub then closes every stream, and clients
   resume from history with their ``Last-Event-ID``.
6. Paged replay: ``replay(..., page=PageLimit(events, bytes))`` returns at most
   one page in ``events`` (at least one event when any is due, however large),
   oldest first, with ``head`` fixed by that call's snapshot as in 2; when more
   events up to ``head`` remain it also returns ``rest``, whose ``next()`` reads
   the following page from the broker's state at that time: strictly after the
   last event it or the first call returned, never past ``head``. Items 2-3 hold
   for the whole sequence (it is one replay with one ``head``); what history
   lost meanwhile (trimmed before it was read) is reported, never skipped.
7. Keyed publish: ``publish_once(drafts, key)`` looks ``key`` up in the same atomic step
   that numbers the drafts (``app.broker.idempotency``). Unknown within the window:
   published as ``publish`` would, and recorded with the drafts' fingerprint. Known with
   the same fingerprint: nothing is published, and the answer is the first publish's
   events (``replayed``). Known with another fingerprint: ``IdempotencyConflictError``,
   nothing published. Of any number of publishes racing with one key, one publishes.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from app.wire.event import Event

__all__ = [
    "UNBOUNDED_PAGE",
    "Broker",
    "BrokerUnavailableError",
    "Draft",
    "EventListener",
    "IdempotencyConflictError",
    "PageLimit",
    "PublishKey",
    "Published",
    "Replay",
    "ReplayPages",
    "ResyncListener",
    "page_bytes",
]

EventListener = Callable[[Event], None]
ResyncListener = Callable[[str], None]
"""Called with a reason when the live feed may have skipped events (contract item 5)."""


class BrokerUnavailableError(Exception):
    """The backplane cannot take a publish or answer a replay right now (the message is
    client-safe)."""


@dataclass(slots=True)  # not frozen: built once per published event, and frozen costs
class Draft:
    """An event to publish, before the broker gives it a position: its distinct, valid
    channels (checked by the hub), its encoded ``event:``/``data:`` lines, its private flag,
    and optionally a publisher's own id (e.g. Mercure's ``id`` field; never one that parses
    as a position), which becomes the event's id on the wire and a resume cursor that
    resolves to the event's position for as long as the event is retained."""

    channels: tuple[str, ...]
    body: bytes
    private: bool = False
    event_id: str | None = None


class IdempotencyConflictError(Exception):
    """The key was used within the window with other drafts: nothing was published."""


@dataclass(frozen=True, slots=True)
class PublishKey:
    """A publish's idempotency key and the fingerprint of the drafts it was sent with."""

    key: str
    fingerprint: bytes


@dataclass(frozen=True, slots=True)
class Published:
    """A keyed publish's answer: its events (the first publish's, on a replay), and whether
    it was a replay (nothing published this time)."""

    events: list[Event]
    replayed: bool = False

    @property
    def ids(self) -> list[str]:
        return [event.id for event in self.events]


@dataclass(frozen=True, slots=True)
class PageLimit:
    """How much one page of a replay may hold: ``events`` events and ``bytes`` bytes of
    frames, whichever comes first, but never less than one event."""

    events: int
    bytes: int


UNBOUNDED_PAGE = PageLimit(events=2**62, bytes=2**62)
"""A replay in one page (``replay`` without ``page``): a probe, a test, a tool."""


def page_bytes(events: Sequence[Event]) -> int:
    """The bytes of frames a page holds, as ``PageLimit.bytes`` counts them."""
    return sum(len(event.frame) for event in events)


class ReplayPages(ABC):
    """The rest of a paged replay (contract item 6): one page per ``next()``."""

    @abstractmethod
    async def next(self) -> list[Event] | None:
        """The next page, oldest first: events after the last one returned, up to the
        replay's head. ``[]`` once none is left; None if history lost an event of this
        replay that was not read yet (the stream then resets, as for ``history_expired``).
        Raises ``BrokerUnavailableError`` (the same call may be made again)."""


@dataclass(frozen=True, slots=True)
class Replay:
    """What a stream gets before going live, and the position it goes live after.

    ``head`` is the newest position of the broker's sequence when the replay was
    read: every event up to it on the stream's channels is in ``events`` (or was
    before the client's id), and live delivery continues after it. ``reset``
    means only one thing: history does not reach back to the client's id
    (``history_expired``), or the id is not a position this broker issued
    (``unknown_id``); the stream then sends a ``reset`` event and goes live
    from ``head``. ``rest``: the pages after ``events`` when the replay was read in
    pages and more remain (None when ``events`` is all of it).
    """

    head: str
    events: list[Event] = field(default_factory=list)
    reset: bool = False
    reason: str = ""
    rest: ReplayPages | None = None


class Broker(ABC):
    @abstractmethod
    async def connect(self, listener: EventListener, resync: ResyncListener | None = None) -> None:
        """Start delivering to ``listener``; never fails because the broker is unreachable."""

    @abstractmethod
    async def disconnect(self) -> None: ...

    @abstractmethod
    async def publish(self, drafts: Sequence[Draft]) -> list[Event]:
        """Assign consecutive ids to ``drafts`` (all or none), retain the events for replay
        and deliver them to every subscribed process; returns them in the same order.
        Raises ``BrokerUnavailableError``."""

    @abstractmethod
    async def publish_once(self, drafts: Sequence[Draft], key: PublishKey) -> Published:
        """``publish`` at most once per ``key`` within the idempotency window (contract
        item 7). Raises ``IdempotencyConflictError`` or ``BrokerUnavailableError``."""

    @abstractmethod
    async def subscribe(self, channel: str) -> None:
        """This process now has a local subscriber on ``channel``."""

    @abstractmethod
    async def unsubscribe(self, channel: str) -> None:
        """One local subscriber of ``channel`` has gone."""

    @abstractmethod
    async def replay(
        self,
        channels: Sequence[str],
        last_event_id: str | None,
        *,
        every_channel: bool = False,
        page: PageLimit | None = None,
    ) -> Replay:
        """Retained events of ``channels`` after ``last_event_id``, oldest first, and the
        head position (no events for ``None``: a new stream starts at the head; all that is
        retained for ``EARLIEST``). ``last_event_id`` is a position or a publisher-supplied
        id. ``every_channel``: events of every channel (a pattern subscription filters
        them). ``page``: read in pages of that size (contract item 6); None reads it all
        at once. Raises ``BrokerUnavailableError`` when the broker cannot answer now."""

    async def watch_every_channel(self) -> None:  # noqa: B027 - optional capability
        """This process has a subscriber that may want any channel (a pattern); a broker
        that delivers every channel to every process anyway needs do nothing."""

    async def unwatch_every_channel(self) -> None:  # noqa: B027 - optional capability
        """One such subscriber has gone."""

    @abstractmethod
    def sweep(self, now: float) -> int:
        """Housekeeping run by the reaper: drop idle channels; returns how many."""

    @abstractmethod
    def trim_history(self, keep: int) -> int:
        """Memory pressure: keep at most ``keep`` events per channel; returns bytes freed."""

    @abstractmethod
    def stats(self) -> dict[str, object]: ...
