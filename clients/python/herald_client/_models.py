"""What a publish sends (``BatchItem``) and what it gets back (``PublishResult``,
``BatchResult``).

Wherever the client takes channels it takes one name or several: a string is one channel
(never its characters), anything else an iterable of names.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["BatchItem", "BatchResult", "PublishResult", "channel_names"]


def channel_names(channels: str | Iterable[str]) -> tuple[str, ...]:
    """``channels`` as a tuple of names; ValueError when there is none or one is not a string."""
    names = (channels,) if isinstance(channels, str) else tuple(channels)
    if not names:
        raise ValueError("name at least one channel")
    for name in names:
        if not isinstance(name, str):
            raise ValueError(f"a channel name is a string, not {name!r}")
    return names


@dataclass(frozen=True, slots=True, init=False)
class BatchItem:
    """One event of a batch: ``data`` (any JSON value; a string goes out as itself) on
    ``channels`` (one name or several: one event, one id, listed under each), with an SSE
    ``event`` name and ``private`` (only subscribers granted a channel of it see it)."""

    channels: tuple[str, ...]
    data: object
    event: str | None
    private: bool

    def __init__(
        self,
        channels: str | Iterable[str],
        data: object,
        *,
        event: str | None = None,
        private: bool = False,
    ) -> None:
        object.__setattr__(self, "channels", channel_names(channels))
        object.__setattr__(self, "data", data)
        object.__setattr__(self, "event", event)
        object.__setattr__(self, "private", private)


@dataclass(frozen=True, slots=True)
class PublishResult:
    """A published event: its ``id`` and ``channels`` as Herald answered; ``subscribers``
    counts the streams the answering worker delivered it to (other workers' are not
    counted); ``replayed`` is True when Herald answered a repeated ``idempotency_key`` with
    the first answer (the event was published once, by an earlier attempt or call);
    ``attempts`` is how many requests the call took."""

    id: str
    channels: tuple[str, ...]
    subscribers: int
    replayed: bool
    idempotency_key: str
    attempts: int


@dataclass(frozen=True, slots=True)
class BatchResult:
    """A published batch: its events' ``ids`` in request order (consecutive in Herald's
    sequence); ``replayed``, ``idempotency_key`` and ``attempts`` as in ``PublishResult``."""

    ids: tuple[str, ...]
    replayed: bool
    idempotency_key: str
    attempts: int
