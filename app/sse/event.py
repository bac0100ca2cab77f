"""The published event as it travels through Herald: encoded once, shared by all."""

from __future__ import annotations

from app.sse.event_id import EventKey

__all__ = ["Event"]


class Event:
    """One event, wire-ready.

    ``frame`` holds the complete encoded bytes (id, event, data, blank line).
    The same object sits in history and in every subscriber's queue; ``refs``
    counts the queues holding it so the hub can budget the bytes that queues
    keep alive after history has let go of them.
    """

    __slots__ = ("channel", "frame", "id", "key", "private", "refs")

    def __init__(
        self, key: EventKey, event_id: str, channel: str, frame: bytes, private: bool = False
    ) -> None:
        self.key = key
        self.id = event_id
        self.channel = channel
        self.frame = frame
        # Private events reach only subscribers whose token grants the channel.
        self.private = private
        self.refs = 0

    def __repr__(self) -> str:
        return f"Event(id={self.id!r}, channel={self.channel!r}, bytes={len(self.frame)})"
