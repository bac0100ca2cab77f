"""The broker interface: where events are stored for replay and how they reach every worker.

The hub (``app.sse.hub``) owns local connections and fan-out; a broker owns
event ids, history and delivery between processes. ``memory://`` keeps all of
it in this process; ``redis://`` puts it in Redis Streams so several workers
and instances act as one. The hub API does not change with the broker.

Lifecycle: ``connect(listener)`` → any number of publish/subscribe/replay →
``disconnect()``. The listener is called with every event published on a
channel this process has subscribed to, from the event loop, synchronously.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from app.sse.event import Event

__all__ = ["Broker", "BrokerUnavailableError", "EventListener", "Replay"]

EventListener = Callable[[Event], None]


class BrokerUnavailableError(Exception):
    """The backplane cannot take a publish right now (the message is client-safe)."""


@dataclass(frozen=True, slots=True)
class Replay:
    """What a resuming stream gets before going live.

    ``reset`` means events after the client's id may have been lost (its id is
    older than the retained history, or unknown); the stream then sends a
    ``reset`` event, stamped with ``head`` (the newest id at that moment) so the
    client's next resume starts from there, and goes live.
    """

    events: list[Event] = field(default_factory=list)
    reset: bool = False
    reason: str = ""
    head: str | None = None


class Broker(ABC):
    @abstractmethod
    async def connect(self, listener: EventListener) -> None: ...

    @abstractmethod
    async def disconnect(self) -> None: ...

    @abstractmethod
    async def publish(self, channel: str, body: bytes, private: bool = False) -> Event:
        """Assign an id, retain the event for replay and deliver it to every subscribed process."""

    @abstractmethod
    async def subscribe(self, channel: str) -> None:
        """This process now has a local subscriber on ``channel``."""

    @abstractmethod
    async def unsubscribe(self, channel: str) -> None:
        """One local subscriber of ``channel`` has gone."""

    @abstractmethod
    async def replay(self, channels: Sequence[str], last_event_id: str) -> Replay:
        """Retained events of ``channels`` after ``last_event_id``, oldest first."""

    @abstractmethod
    def sweep(self, now: float) -> int:
        """Housekeeping run by the reaper: drop idle channels; returns how many."""

    @abstractmethod
    def trim_history(self, keep: int) -> int:
        """Memory pressure: keep at most ``keep`` events per channel; returns bytes freed."""

    @abstractmethod
    def stats(self) -> dict[str, object]: ...
