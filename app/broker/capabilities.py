"""Optional broker capabilities: small interfaces a broker may offer beside ``Broker``.

``Broker`` is what every broker does. What only some brokers can do is a capability
of its own, declared by the brokers that have it and discovered where it is needed,
so no broker stubs what it cannot do and no caller asks which class a broker is:

- ``RedisAccess``: a broker on one Redis lends its command connections and its key
  prefix, so the client limits, the worker figures and the action bus keep their
  state on that Redis too (``redis://``). Discovered with ``lends_redis``.
- ``BrokerHealth``: a broker that can be unreachable says so in ``state``
  (``redis://``, ``redis+cluster://``); one without it is always reachable
  (``memory://``). Discovered with ``isinstance``.
- ``ClusterTopology``: a broker whose log is spread over shards says how many and
  which shard holds a channel (``redis+cluster://``). Discovered with ``isinstance``.

``RedisAccess`` is discovered with a function, not ``isinstance``: its ``client``
raises until the broker connects, what uses it is built before that, and on Python
3.11 ``isinstance`` against a runtime-checkable protocol reads every member,
properties included. ``lends_redis`` looks the members up without reading them.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Protocol, TypeGuard, runtime_checkable

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = ["BrokerHealth", "ClusterTopology", "RedisAccess", "lends_redis"]

_REDIS_ACCESS_MEMBERS = ("client", "key_prefix")


class RedisAccess(Protocol):
    """A broker on one Redis whose connections the rest of Herald may use."""

    key_prefix: str
    """The prefix of the broker's keys; a user of its Redis puts its own keys under it."""

    @property
    def client(self) -> Redis:
        """The command connection pool (never a reader's, which blocks in ``XREAD``).
        Raises ``RuntimeError`` while the broker is not connected."""
        ...


def lends_redis(broker: object) -> TypeGuard[RedisAccess]:
    """Whether ``broker`` offers ``RedisAccess``; its members are not read."""
    missing = object()
    return all(
        inspect.getattr_static(broker, name, missing) is not missing
        for name in _REDIS_ACCESS_MEMBERS
    )


@runtime_checkable
class BrokerHealth(Protocol):
    """A broker that can be unreachable."""

    state: str
    """"ok"; "down" while the backplane is unreachable (publishes and replays raise
    ``BrokerUnavailableError`` until it is back); "disconnected" before ``connect`` and
    after ``disconnect``."""


@runtime_checkable
class ClusterTopology(Protocol):
    """A broker whose event log is spread over shards."""

    shard_count: int

    def shard_of(self, channel: str) -> int:
        """The shard that holds ``channel``'s history and numbers its events."""
        ...
