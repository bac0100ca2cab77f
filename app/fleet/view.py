"""This worker's view of the service: it shares its own snapshot and reads everyone's.

Design decisions (read the reason before "fixing" one):

1. One task per worker publishes every ``METRICS_SHARE_SECONDS``, and a
   snapshot lives :data:`TTL_INTERVALS` times that: one late or failed publish
   never makes a live worker vanish, and a worker killed outright is gone from
   every report within three intervals (15 s by default).
2. The first publish happens in :meth:`FleetView.start`, before the worker
   takes requests, so its siblings count it at once.
3. The exchange is read per request (a scrape, an admin call), not on the
   timer: the others' figures are then at most one interval old instead of
   two, and nothing is kept between requests. The answering worker uses its
   live figures, never its own last publish.
4. Every exchange call is bounded by :data:`EXCHANGE_TIMEOUT_SECONDS`. Metrics
   matter most while something is wrong, so with Redis away they still answer,
   with this worker alone and ``exchange.state`` ``down`` so the report does not
   pass for the whole service; a warning is logged once per outage.
5. :meth:`FleetView.stop` removes this worker's snapshot: a worker leaving on
   purpose (recycled by ``--max-requests``, a deploy) drops out of every report
   at once instead of lingering, frozen, for a TTL.
6. A cancellation is never allowed to vanish inside an exchange call. On
   Python 3.11, ``asyncio.wait_for`` returns the result and drops a
   cancellation that arrives as the awaited operation completes (CPython
   gh-86296, fixed in 3.12), and redis-py wraps every socket write in it
   when a socket timeout is set. A cancelled share task would then loop on,
   and shutdown hang on it (seen: about one gunicorn stop in thirty).
   :meth:`FleetView._bounded` re-raises a cancellation requested during the
   call, and :meth:`FleetView.stop` waits for the task only so long.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from app.fleet.aggregate import merge_workers, total
from app.fleet.base import ExchangeUnavailableError, StatsExchange
from app.fleet.snapshot import WorkerSnapshot

__all__ = ["EXCHANGE_TIMEOUT_SECONDS", "TTL_INTERVALS", "FleetReading", "FleetView"]

logger = logging.getLogger("herald.fleet")

TTL_INTERVALS = 3
"""A shared snapshot lives this many publish intervals."""
EXCHANGE_TIMEOUT_SECONDS = 1.0
"""Longest wait for the exchange; Prometheus' default scrape timeout is 10 s."""

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class FleetReading:
    """Every live worker as seen by the worker answering (``worker``)."""

    worker: str
    workers: list[WorkerSnapshot]
    exchange: str
    exchange_state: str

    def total(self) -> dict[str, int]:
        return total(self.workers)


class FleetView:
    """Publishes this worker's snapshot on a timer and reads every worker's on demand."""

    def __init__(
        self,
        exchange: StatsExchange,
        take_snapshot: Callable[[], WorkerSnapshot],
        *,
        interval_seconds: float,
        timeout_seconds: float = EXCHANGE_TIMEOUT_SECONDS,
    ) -> None:
        self.exchange = exchange
        self.interval_seconds = interval_seconds
        self.timeout_seconds = timeout_seconds
        self.state = "ok"
        self.failures = 0
        self._take_snapshot = take_snapshot
        self._task: asyncio.Task[None] | None = None

    @property
    def worker(self) -> str:
        return self.exchange.worker

    # --- lifecycle -------------------------------------------------------

    async def start(self) -> None:
        await self.publish()
        self._task = asyncio.create_task(self._share_forever(), name="herald worker stats")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            # Not a bare ``await task``: shutdown must not depend on the
            # cancellation arriving (decision 6).
            await asyncio.wait({task}, timeout=self.timeout_seconds)
            if not task.done():
                logger.warning("worker stats task did not stop; leaving it behind")
            elif not task.cancelled() and task.exception() is not None:
                logger.error("worker stats task failed", exc_info=task.exception())
        await self._bounded(self.exchange.remove())

    async def _share_forever(self) -> None:
        while True:
            await asyncio.sleep(self.interval_seconds)
            try:
                await self.publish()
            except Exception:  # a broken snapshot must not stop sharing for good
                logger.exception("sharing this worker's stats failed")

    # --- the two operations ------------------------------------------------

    async def publish(self) -> None:
        """Share this worker's figures now."""
        await self._bounded(self.exchange.publish(self._take_snapshot()))

    async def read(self) -> FleetReading:
        """Every live worker: this one live, the others from their last publish."""
        live = self._take_snapshot()
        shared = await self._bounded(self.exchange.collect())
        return FleetReading(
            worker=live["worker"],
            workers=merge_workers(live, shared or ()),
            exchange=self.exchange.kind,
            exchange_state=self.state,
        )

    async def peers(self) -> list[str] | None:
        """The other live workers' ids, sorted; ``None`` when the exchange could not say.

        For callers that only need who is alive (the Mercure subscription API's
        gather): cheaper than :meth:`read`, which takes this worker's live snapshot.
        """
        shared = await self._bounded(self.exchange.collect())
        if shared is None:
            return None
        return sorted({snapshot["worker"] for snapshot in shared} - {self.worker})

    async def _bounded(self, call: Awaitable[_T]) -> _T | None:
        """``call``'s result, or ``None`` when the exchange failed or was too slow."""
        task = asyncio.current_task()
        cancels_before = task.cancelling() if task is not None else 0
        try:
            async with asyncio.timeout(self.timeout_seconds):
                result = await call
        except (ExchangeUnavailableError, TimeoutError) as exc:
            _raise_if_cancel_was_swallowed(task, cancels_before)
            self.failures += 1
            if self.state == "ok":
                logger.warning(
                    "worker stats exchange (%s) unavailable, reporting this worker alone: %s",
                    self.exchange.kind,
                    exc or "timed out",
                )
            self.state = "down"
            return None
        _raise_if_cancel_was_swallowed(task, cancels_before)
        if self.state != "ok":
            logger.info("worker stats exchange (%s) is back", self.exchange.kind)
            self.state = "ok"
        return result


def _raise_if_cancel_was_swallowed(task: asyncio.Task[object] | None, before: int) -> None:
    # asyncio.timeout withdraws its own cancellation when it fires, so a count
    # above the one on entry is somebody else's request that got lost below us.
    if task is not None and task.cancelling() > before:
        raise asyncio.CancelledError
