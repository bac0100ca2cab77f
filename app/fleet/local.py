"""This process only: ``python -m app`` (one uvicorn process) has no one to share with."""

from __future__ import annotations

from app.fleet.base import StatsExchange
from app.fleet.snapshot import WorkerSnapshot

__all__ = ["LocalExchange"]


class LocalExchange(StatsExchange):
    kind = "local"

    async def publish(self, snapshot: WorkerSnapshot) -> None:
        # The answering worker always reports its live values, so keeping a
        # copy of its own snapshot here would only be read back and dropped.
        return None

    async def collect(self) -> list[WorkerSnapshot]:
        return []

    async def remove(self) -> None:
        return None
