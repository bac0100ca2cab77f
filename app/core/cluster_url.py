"""``redis+cluster://[user:password@]host:port,host:port,...`` / ``rediss+cluster://``: the
seed nodes of a Redis Cluster and its credentials.

Settings validation (``app.core.config``) checks a ``BROKER_URL`` with it before any worker
starts, and the cluster broker connects with what it returns: the URL's grammar sits with the
settings, below the broker, and needs nothing but the standard library (no redis-py).
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote

__all__ = ["CLUSTER_SCHEMES", "ClusterURL", "parse_cluster_url"]

CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")


@dataclass(frozen=True, slots=True)
class ClusterURL:
    seeds: tuple[tuple[str, int], ...]
    username: str | None
    password: str | None
    tls: bool

    def redacted(self) -> str:
        """The URL without its password, for logs."""
        scheme = "rediss+cluster" if self.tls else "redis+cluster"
        user = ""
        if self.password is not None:
            user = f"{self.username or ''}:***@"
        elif self.username:
            user = f"{self.username}@"
        nodes = ",".join(f"{host}:{port}" for host, port in self.seeds)
        return f"{scheme}://{user}{nodes}"


def parse_cluster_url(url: str) -> ClusterURL:
    """Raises ValueError naming what is wrong (never echoing the password)."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in CLUSTER_SCHEMES:
        raise ValueError(f"not a Redis Cluster URL (use one of {CLUSTER_SCHEMES})")
    rest = rest.split("/", 1)[0].split("?", 1)[0]
    username = password = None
    if "@" in rest:
        credentials, rest = rest.rsplit("@", 1)
        user, has_password, secret = credentials.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if has_password else None
    seeds: list[tuple[str, int]] = []
    for node in rest.split(","):
        host, has_port, port = node.strip().rpartition(":")
        if not has_port or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"a Redis Cluster seed must be host:port, got {node.strip()!r}")
        seeds.append((host.strip("[]"), int(port)))
    return ClusterURL(tuple(seeds), username, password, scheme == "rediss+cluster")
