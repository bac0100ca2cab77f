"""``redis+cluster://`` / ``rediss+cluster://``: Herald's event log spread over a Redis Cluster.

One module per concern, each opening with the decisions it rests on and why (read
them before changing anything):

- ``shards``: the log shards, one order across them (positions and frontiers), and
  the state every concern shares.
- ``publishing``: a call's part on each shard in one script call, ``WAIT`` for
  replicas, an event on several shards written once with references elsewhere.
- ``merge``: one reader per shard, the merge of their logs into one order, ticks
  that move idle shards on, and the bound on what the merge holds back.
- ``replay``: an exact head from per-shard snapshots, and replays read in pages.
- ``nodes``: the slot map, a connection pool per node, commands on a slot's master.
- ``broker``: ``RedisClusterBroker``, those put together, and its lifecycle.
"""

from __future__ import annotations

from app.broker.redis_cluster.broker import RedisClusterBroker

__all__ = ["RedisClusterBroker"]
