"""Operator actions on every worker: the medium is chosen like the metrics exchange.

* ``BROKER_URL=redis://…`` → :class:`~app.cluster.actions.redis.RedisBus`:
  every worker of every instance on that Redis (and key prefix).
* else ``HERALD_STATS_DIR`` set (gunicorn.conf.py does it) →
  :class:`~app.cluster.actions.sockets.SocketBus`: the workers of one master.
* else → :class:`~app.cluster.actions.local.LocalBus`: this process only.

Which workers exist is the metrics exchange's answer (``app.cluster.view``):
every worker publishes its snapshot before it takes requests, so a worker
that can be asked is one that the exchange lists.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from app.broker.base import Broker
from app.broker.capabilities import lends_redis
from app.cluster import STATS_DIR_VARIABLE
from app.cluster.actions.base import ActionBus, ActionBusError, Answer, Handler, Request
from app.core.config import Settings

__all__ = ["ActionBus", "ActionBusError", "Answer", "Handler", "Request", "create_bus"]


def create_bus(
    settings: Settings, broker: Broker, worker: str, *, environ: Mapping[str, str] = os.environ
) -> ActionBus:
    stats_dir = environ.get(STATS_DIR_VARIABLE, "").strip()
    if lends_redis(broker):
        from app.cluster.actions.redis import RedisBus

        return RedisBus(broker, worker)
    if stats_dir:
        from app.cluster.actions.sockets import SocketBus

        return SocketBus(stats_dir, worker)
    from app.cluster.actions.local import LocalBus

    return LocalBus(worker)
