"""The service from its workers: who is alive, and the sums an operator asks for first.

Pure functions of snapshots, so the arithmetic is tested without processes.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal, get_args

from app.fleet.snapshot import WorkerSnapshot

__all__ = ["TOTAL_FIELDS", "TotalField", "merge_workers", "total"]

TotalField = Literal[
    "connections",
    "channels",
    "published",
    "delivered",
    "dropped",
    "overflow_disconnects",
    "reaped",
    "cache_hits",
    "cache_misses",
    "rss_bytes",
]
TOTAL_FIELDS: tuple[TotalField, ...] = get_args(TotalField)
"""Summed over workers in ``total``. ``channels`` is a sum of per-worker counts: a
channel with subscribers on two workers counts twice (each worker holds its own
subscriber table for it, which is what the figure measures)."""


def merge_workers(live: WorkerSnapshot, shared: Iterable[WorkerSnapshot]) -> list[WorkerSnapshot]:
    """Every worker once, ordered by id: ``live`` for this worker, ``shared`` for the others.

    ``shared`` usually holds this worker's own last publish too; the live figures
    replace it, so the answering worker is never seconds behind itself.
    """
    workers = {snapshot["worker"]: snapshot for snapshot in shared}
    workers[live["worker"]] = live
    return [workers[worker] for worker in sorted(workers)]


def total(workers: Iterable[WorkerSnapshot]) -> dict[str, int]:
    """The ``total`` section of the admin metrics: sums of :data:`TOTAL_FIELDS` and ``workers``."""
    sums: dict[str, int] = dict.fromkeys(TOTAL_FIELDS, 0)
    count = 0
    for snapshot in workers:
        count += 1
        for field in TOTAL_FIELDS:
            sums[field] += snapshot[field]
    return {**sums, "workers": count}
