"""The published event as it travels through Herald: encoded once, shared by all."""

from __future__ import annotations

from collections.abc import Container

from app.wire.event_id import EventKey

__all__ = ["Event"]


class Event:
    """One event, wire-ready.

    ``frame`` holds the complete encoded bytes (id, event, data, blank line).
    The same object sits in history (once, however many channel logs hold it)
    and in every subscriber's queue; ``refs`` counts the queues holding it so
    the hub can budget the bytes that queues keep alive after history has let
    go of them.

    ``channels`` are the channels the event was published on, in the
    publisher's order, without repeats (usually one). A stream subscribed to
    several of them still gets the event once: its id is one position of the
    broker's single sequence, and each stream's cursor skips what it has had.
    """

    __slots__ = ("channels", "frame", "id", "key", "private", "refs")

    def __init__(
        self,
        key: EventKey,
        event_id: str,
        channels: tuple[str, ...],
        frame: bytes,
        private: bool = False,
    ) -> None:
        self.key = key
        self.id = event_id
        self.channels = channels
        self.frame = frame
        # Private events reach only subscribers granted one of the event's channels.
        self.private = private
        self.refs = 0

    def visible_to(self, private_channels: Container[str]) -> bool:
        """Whether a stream whose grants cover ``private_channels`` (a set, or a Mercure
        token's read grant answering ``in``) may see this event."""
        return not self.private or any(channel in private_channels for channel in self.channels)

    def __repr__(self) -> str:
        return f"Event(id={self.id!r}, channels={self.channels!r}, bytes={len(self.frame)})"
