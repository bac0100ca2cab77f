"""The nodes of a Redis Cluster as ``redis+cluster://`` uses them: the slot map of the slots
it needs, a connection pool per node (``READONLY`` ones for replicas), and one pipeline on a
slot's master that follows MOVED and ASK.

Why not redis-py's ``RedisCluster``: the broker needs ``WAIT`` on the very connection that
wrote (WAIT counts the replication of that connection's writes, and a keyless command
would be routed to any node), ``MULTI`` on a replica, and readers that stay on a node
while it answers; so it routes its own commands and reads ``CLUSTER SLOTS`` itself (at
most every ``REFRESH_INTERVAL_SECONDS``; callers at the same time share one read).
Clients never resend on their own: a publish resent after a lost answer could run twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.connection import Connection, SSLConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import (
    AskError,
    ClusterDownError,
    ConnectionError,
    MovedError,
    NoScriptError,
    RedisError,
    ResponseError,
    TryAgainError,
)
from redis.utils import str_if_bytes

from app.broker.base import BrokerUnavailableError
from app.broker.redis_connections import (
    COMMAND_TIMEOUT_SECONDS,
    CONNECT_TIMEOUT_SECONDS,
    DEFAULT_MAX_CONNECTIONS,
)
from app.core.cluster_url import ClusterURL

__all__ = ["ClusterNodes", "Node", "ReadOnlyConnection", "ReadOnlySSLConnection"]

REFRESH_INTERVAL_SECONDS = 0.1
REDIRECT_ATTEMPTS = 5
RETRY_PAUSE_SECONDS = 0.05
UNAVAILABLE = "the event backplane (Redis Cluster) is unavailable; retry later"


class _ReadOnly:
    """A connection that serves reads on a replica (``READONLY`` on every connect)."""

    async def on_connect_check_health(self, check_health: bool = True) -> None:
        await super().on_connect_check_health(check_health=check_health)  # type: ignore[misc, unused-ignore]
        await self.send_command("READONLY", check_health=False)  # type: ignore[attr-defined, unused-ignore]
        if str_if_bytes(await self.read_response()) != "OK":  # type: ignore[attr-defined, unused-ignore]
            raise ConnectionError("READONLY refused")


class ReadOnlyConnection(_ReadOnly, Connection):
    pass


class ReadOnlySSLConnection(_ReadOnly, SSLConnection):
    pass


Node = tuple[str, int]


class ClusterNodes:
    def __init__(
        self, parsed: ClusterURL, slots: set[int], max_connections: int = DEFAULT_MAX_CONNECTIONS
    ) -> None:
        self.parsed = parsed
        self.max_connections = max_connections
        self.slots = slots
        self.refreshes = 0
        self.closing = False
        self._clients: dict[tuple[Node, bool], aioredis.Redis] = {}
        # slot → (master, replicas), for the wanted slots only.
        self.routes: dict[int, tuple[Node, list[Node]]] = {}
        self._refreshing: asyncio.Task[None] | None = None
        self._refreshed_at = 0.0
        self._tasks: set[asyncio.Task[None]] = set()

    async def close(self) -> None:
        self.closing = True
        for task in list(self._tasks):
            task.cancel()
        for client in list(self._clients.values()):
            with contextlib.suppress(Exception):
                await client.aclose(close_connection_pool=True)
        self._clients.clear()

    def client(self, node: Node, readonly: bool = False) -> aioredis.Redis:
        client = self._clients.get((node, readonly))
        if client is None:
            client = self._clients[(node, readonly)] = self.new_client(
                node, readonly, COMMAND_TIMEOUT_SECONDS
            )
        return client

    def new_client(self, node: Node, readonly: bool, timeout: float) -> aioredis.Redis:
        tls = self.parsed.tls
        connection_class: type[Connection] = (
            (ReadOnlySSLConnection if tls else ReadOnlyConnection)
            if readonly
            else (SSLConnection if tls else Connection)
        )
        # Bounded and blocking, as the single-Redis broker's pool (app.broker.redis).
        pool = aioredis.BlockingConnectionPool(
            connection_class=connection_class,
            max_connections=self.max_connections,
            timeout=timeout,
            host=node[0],
            port=node[1],
            username=self.parsed.username,
            password=self.parsed.password,
            socket_timeout=timeout,
            socket_connect_timeout=CONNECT_TIMEOUT_SECONDS,
            health_check_interval=30,
            # Never resend on its own: a publish resent after a lost answer may run twice.
            retry=Retry(NoBackoff(), 0),
        )
        return aioredis.Redis(connection_pool=pool)

    def route(self, slot: int) -> tuple[Node, list[Node]]:
        route = self.routes.get(slot)
        if route is None:
            raise BrokerUnavailableError(UNAVAILABLE)
        return route

    def read_node(self, slot: int) -> tuple[Node, bool]:
        """Where a slot is read from: its first replica, else its master."""
        master, replicas = self.route(slot)
        return (replicas[0], True) if replicas else (master, False)

    async def refresh(self, *, force: bool = False) -> None:
        """Read the slot map again (at most every REFRESH_INTERVAL_SECONDS; callers at
        the same time share one read)."""
        if self._refreshing is not None:
            await asyncio.shield(self._refreshing)
            return
        if not force and time.monotonic() - self._refreshed_at < REFRESH_INTERVAL_SECONDS:
            return
        self._refreshing = asyncio.create_task(self._read_slots())
        try:
            await asyncio.shield(self._refreshing)
        finally:
            self._refreshing = None
            self._refreshed_at = time.monotonic()

    async def _read_slots(self) -> None:
        known = {node for master, replicas in self.routes.values() for node in [master, *replicas]}
        candidates = list(dict.fromkeys([*self.parsed.seeds, *sorted(known)]))
        last: BaseException | None = None
        for node in candidates:
            try:
                client = self.client(node)
                ranges = await client.execute_command("CLUSTER", "SLOTS")  # type: ignore[no-untyped-call, unused-ignore]
            except (RedisError, OSError) as exc:
                last = exc
                continue
            routes: dict[int, tuple[Node, list[Node]]] = {}
            wanted = self.slots
            for start, end, master, *replicas in ranges:
                for slot in wanted:
                    if start <= slot <= end:
                        routes[slot] = (
                            (_host(master[0], node), int(master[1])),
                            [(_host(r[0], node), int(r[1])) for r in replicas],
                        )
            if len(routes) < len(wanted):
                last = RedisError("some shard slots are not served (cluster down?)")
                continue
            self.routes = routes
            self.refreshes += 1
            return
        raise last if last is not None else RedisError("no Redis Cluster node answered")

    def refresh_soon(self) -> None:
        if self.closing:
            return
        task = asyncio.create_task(self._refresh_quietly())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _refresh_quietly(self) -> None:
        with contextlib.suppress(RedisError, OSError):
            await self.refresh()

    async def on_master(
        self, slot: int, commands: list[tuple[Any, ...]], script: tuple[str, str] | None
    ) -> list[Any]:
        """Run ``commands`` in one pipeline on ``slot``'s master, following MOVED and ASK
        and waiting out TRYAGAIN / CLUSTERDOWN (``app.broker.redis_cluster.broker``).
        ``script``: (sha, text) of an EVALSHA among them, loaded on a NOSCRIPT. Raises
        RedisError / OSError."""
        deadline = time.monotonic() + COMMAND_TIMEOUT_SECONDS
        asking: Node | None = None
        for _attempt in range(REDIRECT_ATTEMPTS * 4):
            node = asking or self.route(slot)[0]
            async with self.client(node).pipeline(transaction=False) as pipe:
                if asking is not None:
                    pipe.execute_command("ASKING")
                for command in commands:
                    pipe.execute_command(*command)
                results = await pipe.execute(raise_on_error=False)
            if asking is not None:
                results = results[1:]
            error = next((r for r in results if isinstance(r, ResponseError)), None)
            asking = None
            if error is None:
                return results
            if isinstance(error, NoScriptError) and script is not None:
                await self.client(node).script_load(script[1])
                continue
            if isinstance(error, AskError):
                asking = (_host(error.host, node), int(error.port))
                continue
            if isinstance(error, MovedError):
                await self.refresh(force=True)
                continue
            if isinstance(error, TryAgainError | ClusterDownError):
                if time.monotonic() > deadline:
                    raise error
                await asyncio.sleep(RETRY_PAUSE_SECONDS)
                if isinstance(error, ClusterDownError):
                    await self.refresh()
                continue
            raise error
        raise RedisError("too many redirections")

    async def replica_in_sync(self, node: Node) -> bool:
        try:
            info = await self.client(node).info("replication")
        except (RedisError, OSError):
            return False
        return bool(
            info.get("role") == "slave"
            and info.get("master_link_status") == "up"
            and not info.get("master_sync_in_progress")
        )


def _host(host: bytes | str, asked: Node) -> str:
    """A node's address as the cluster reports it (an empty host means the one asked)."""
    name = host.decode() if isinstance(host, bytes) else host
    return name or asked[0]
