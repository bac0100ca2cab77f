"""The fleet: the worker processes serving one deployment, under one gunicorn master or on many
hosts sharing a Redis.

Each worker shares a snapshot of its figures so that any worker can report them all (this
package); an operator action reaches every worker over the action bus (:mod:`app.fleet.actions`).

The exchange is chosen like the broker, and imported lazily:

* ``BROKER_URL=redis://…`` → :class:`~app.fleet.redis.RedisExchange`: every
  worker of every instance on that Redis (and key prefix).
* else ``HERALD_STATS_DIR`` set (gunicorn.conf.py does it) →
  :class:`~app.fleet.files.FileExchange`: the workers of one gunicorn master.
* else → :class:`~app.fleet.local.LocalExchange`: this process only
  (``python -m app``).

``HERALD_STATS_DIR`` is a hand-over from the gunicorn master (:mod:`app.fleet.stats_dir`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from app.broker.base import Broker
from app.broker.capabilities import lends_redis
from app.core.config import Settings
from app.fleet.base import ExchangeUnavailableError, StatsExchange
from app.fleet.snapshot import WorkerSnapshot, take_snapshot, worker_id
from app.fleet.stats_dir import stats_dir
from app.fleet.view import TTL_INTERVALS, FleetReading, FleetView

__all__ = [
    "ExchangeUnavailableError",
    "FleetReading",
    "FleetView",
    "StatsExchange",
    "WorkerSnapshot",
    "create_exchange",
    "take_snapshot",
    "worker_id",
]


def create_exchange(
    settings: Settings,
    broker: Broker,
    worker: str,
    *,
    environ: Mapping[str, str] = os.environ,
) -> StatsExchange:
    ttl_seconds = settings.metrics_share_seconds * TTL_INTERVALS
    shared_dir = stats_dir(environ)
    if lends_redis(broker):
        from app.fleet.redis import RedisExchange

        return RedisExchange(broker, worker, ttl_seconds)
    if shared_dir:
        from app.fleet.files import FileExchange

        return FileExchange(shared_dir, worker, ttl_seconds)
    from app.fleet.local import LocalExchange

    return LocalExchange(worker, ttl_seconds)
