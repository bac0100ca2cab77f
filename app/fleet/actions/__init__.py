"""Operator actions on every worker: the medium is chosen like the metrics exchange.

* ``BROKER_URL=redis://…`` → :class:`~app.fleet.actions.redis.RedisBus`:
  every worker of every instance on that Redis (and key prefix).
* else ``HERALD_STATS_DIR`` set (gunicorn.conf.py does it) →
  :class:`~app.fleet.actions.sockets.SocketBus`: the workers of one master.
* else → :class:`~app.fleet.actions.local.LocalBus`: this process only.

Which workers exist is the metrics exchange's answer (``app.fleet.view``):
every worker publishes its snapshot before it takes requests, so a worker
that can be asked is one that the exchange lists.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from app.broker.base import Broker
from app.broker.capabilities import lends_redis
from app.core.config import Settings
from app.fleet.actions.base import ActionBus, ActionBusError, Answer, Handler, Request
from app.fleet.stats_dir import stats_dir

__all__ = ["ActionBus", "ActionBusError", "Answer", "Handler", "Request", "create_bus"]


def create_bus(
    settings: Settings, broker: Broker, worker: str, *, environ: Mapping[str, str] = os.environ
) -> ActionBus:
    shared_dir = stats_dir(environ)
    if lends_redis(broker):
        from app.fleet.actions.redis import RedisBus

        return RedisBus(broker, worker)
    if shared_dir:
        from app.fleet.actions.sockets import SocketBus

        return SocketBus(shared_dir, worker)
    from app.fleet.actions.local import LocalBus

    return LocalBus(worker)
