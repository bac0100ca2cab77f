"""This process only: ``python -m app`` has no other worker to ask."""

from __future__ import annotations

from collections.abc import Sequence

from app.fleet.actions.base import ActionBus, Answer, Handler, Request

__all__ = ["LocalBus"]


class LocalBus(ActionBus):
    kind = "local"

    async def start(self, handler: Handler) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def ask(
        self, request: Request, workers: Sequence[str], within_seconds: float
    ) -> dict[str, Answer]:
        # Only this process takes requests, so any other worker named (a stale
        # snapshot) is reported as not answering by the caller.
        return {}
