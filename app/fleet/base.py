"""The exchange interface: where workers leave their snapshots for each other.

Lifecycle: an exchange belongs to one worker (it knows that worker's id).
:meth:`StatsExchange.publish` replaces the worker's snapshot and keeps it alive
for ``ttl_seconds``; :meth:`StatsExchange.collect` returns every snapshot still
alive, this worker's included; :meth:`StatsExchange.remove` takes this worker's
snapshot away when it stops. A worker that dies without ``remove`` drops out
by itself once its TTL has passed. Each method raises
:class:`ExchangeUnavailableError` when the medium fails; callers carry on with
this worker's own figures.

Implementations beside it: ``local`` (this process only), ``files`` (the
workers of one gunicorn master), ``redis`` (every worker sharing a Redis).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

from app.fleet.snapshot import WorkerSnapshot

__all__ = ["ExchangeUnavailableError", "StatsExchange"]


class ExchangeUnavailableError(Exception):
    """The exchange could not be read or written (Redis down, directory unwritable)."""


class StatsExchange(ABC):
    kind: ClassVar[str]
    """Shown in the admin metrics (``exchange.kind``): ``local``, ``files`` or ``redis``."""

    def __init__(self, worker: str, ttl_seconds: float) -> None:
        self.worker = worker
        self.ttl_seconds = ttl_seconds

    @abstractmethod
    async def publish(self, snapshot: WorkerSnapshot) -> None:
        """Replace this worker's snapshot; it expires after ``ttl_seconds``."""

    @abstractmethod
    async def collect(self) -> list[WorkerSnapshot]:
        """Every live worker's latest snapshot (stale and unreadable ones are skipped)."""

    @abstractmethod
    async def remove(self) -> None:
        """Take this worker's snapshot away (on shutdown)."""
