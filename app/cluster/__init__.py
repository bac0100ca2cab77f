"""Metrics across workers: each worker shares a snapshot of its figures, any worker reports all.

The exchange is chosen like the broker, and imported lazily:

* ``BROKER_URL=redis://…`` → :class:`~app.cluster.redis.RedisExchange`: every
  worker of every instance on that Redis (and key prefix).
* else ``HERALD_STATS_DIR`` set (gunicorn.conf.py does it) →
  :class:`~app.cluster.files.FileExchange`: the workers of one gunicorn master.
* else → :class:`~app.cluster.local.LocalExchange`: this process only
  (``python -m app``).

``HERALD_STATS_DIR`` is read from the environment when the worker starts, not
from ``Settings``: it is a hand-over from the gunicorn master, whose
``on_starting`` hook sets it, and with ``--preload`` the settings are read in
the master before that hook runs.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from app.broker.base import Broker
from app.broker.capabilities import lends_redis
from app.cluster.base import ExchangeUnavailableError, StatsExchange
from app.cluster.snapshot import WorkerSnapshot, take_snapshot, worker_id
from app.cluster.view import TTL_INTERVALS, ClusterReading, ClusterView
from app.core.config import Settings

__all__ = [
    "STATS_DIR_VARIABLE",
    "ClusterReading",
    "ClusterView",
    "ExchangeUnavailableError",
    "StatsExchange",
    "WorkerSnapshot",
    "create_exchange",
    "take_snapshot",
    "worker_id",
]

STATS_DIR_VARIABLE = "HERALD_STATS_DIR"


def create_exchange(
    settings: Settings,
    broker: Broker,
    worker: str,
    *,
    environ: Mapping[str, str] = os.environ,
) -> StatsExchange:
    ttl_seconds = settings.metrics_share_seconds * TTL_INTERVALS
    stats_dir = environ.get(STATS_DIR_VARIABLE, "").strip()
    if lends_redis(broker):
        from app.cluster.redis import RedisExchange

        return RedisExchange(broker, worker, ttl_seconds)
    if stats_dir:
        from app.cluster.files import FileExchange

        return FileExchange(stats_dir, worker, ttl_seconds)
    from app.cluster.local import LocalExchange

    return LocalExchange(worker, ttl_seconds)
