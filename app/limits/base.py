"""Per-client limits: open streams per client address, and publishes per second.

Exceptions::

    LimitExceededError  — answered with 429 and ``Retry-After``

Both limits are off when their setting is 0 (``SSE_MAX_CONNECTIONS_PER_IP``,
``PUBLISH_RATE_PER_SECOND``); then no work at all is done per request. The
in-process implementation counts one worker's clients; the Redis one
(:mod:`app.limits.redis`) counts every worker on the backplane.
"""

from __future__ import annotations

import hashlib
import time
from abc import ABC, abstractmethod
from collections.abc import Callable

from app.core.config import Settings
from app.limits.buckets import BucketTable, retry_after_seconds

__all__ = [
    "ClientLimits",
    "LimitExceededError",
    "LocalClientLimits",
    "StreamLease",
    "publisher_key",
]

STREAM_RETRY_AFTER_SECONDS = 10
"""Suggested wait after a refused stream: we cannot know when the client's others close."""


def publisher_key(token: str | None, client: str) -> str:
    """Whose bucket a publish spends: its token's (hashed: tables and Redis keys never hold
    a credential), or its address when it came without one."""
    if token:
        return "token:" + hashlib.sha256(token.encode()).hexdigest()[:32]
    return "address:" + client


class LimitExceededError(Exception):
    def __init__(self, detail: str, retry_after: int) -> None:
        super().__init__(detail)
        self.detail = detail
        self.retry_after = retry_after


class StreamLease:
    """One open stream counted against its client; handed back on release."""

    __slots__ = ("client", "member", "shared_key")

    def __init__(self, client: str, shared_key: str = "", member: str = "") -> None:
        self.client = client
        # Set when the stream is counted in Redis (key and sorted-set member).
        self.shared_key = shared_key
        self.member = member


class ClientLimits(ABC):
    def __init__(self, settings: Settings) -> None:
        self.max_streams_per_client = settings.sse_max_connections_per_ip
        self.publish_rate = settings.publish_rate_per_second
        self.publish_burst = settings.publish_burst

    @property
    def streams_limited(self) -> bool:
        return self.max_streams_per_client > 0

    @property
    def publishes_limited(self) -> bool:
        return self.publish_rate > 0

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Begin background work (the Redis implementation renews its leases)."""

    async def stop(self) -> None:  # noqa: B027 - optional hook
        """End background work."""

    @abstractmethod
    async def acquire_stream(self, client: str) -> StreamLease | None:
        """Count one more open stream for ``client``; raises :class:`LimitExceededError`
        when it already has the maximum. None when streams are not limited."""

    @abstractmethod
    async def release_stream(self, lease: StreamLease) -> None: ...

    @abstractmethod
    async def take_publish(self, key: str) -> None:
        """Spend one publish for ``key``; raises :class:`LimitExceededError` when its
        bucket is empty."""

    @abstractmethod
    def stats(self) -> dict[str, object]: ...

    def _streams_refused(self, client: str, open_streams: int) -> LimitExceededError:
        return LimitExceededError(
            f"too many open streams from {client} ({open_streams}, limit "
            f"{self.max_streams_per_client}); close one and retry",
            STREAM_RETRY_AFTER_SECONDS,
        )

    def _publish_refused(self, wait_seconds: float) -> LimitExceededError:
        return LimitExceededError(
            f"publish rate limit exceeded ({self.publish_rate:g}/s, burst {self.publish_burst});"
            " slow down",
            retry_after_seconds(wait_seconds),
        )


class LocalClientLimits(ClientLimits):
    """Counts in this process: exact for one worker, per worker for several."""

    def __init__(self, settings: Settings, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(settings)
        # client -> open streams; an entry exists only while the client has one,
        # so the table is bounded by SSE_MAX_CONNECTIONS.
        self._open: dict[str, int] = {}
        self.buckets = BucketTable(
            self.publish_rate or 1.0, self.publish_burst, settings.publish_rate_max_clients, clock
        )
        self.streams_refused = 0
        self.publishes_refused = 0

    def open_streams(self, client: str) -> int:
        return self._open.get(client, 0)

    async def acquire_stream(self, client: str) -> StreamLease | None:
        if not self.streams_limited:
            return None
        return self.acquire_local(client)

    def acquire_local(self, client: str) -> StreamLease:
        open_streams = self._open.get(client, 0)
        if open_streams >= self.max_streams_per_client:
            self.streams_refused += 1
            raise self._streams_refused(client, open_streams)
        self._open[client] = open_streams + 1
        return StreamLease(client)

    async def release_stream(self, lease: StreamLease) -> None:
        self.release_local(lease)

    def release_local(self, lease: StreamLease) -> None:
        left = self._open.get(lease.client, 0) - 1
        if left > 0:
            self._open[lease.client] = left
        else:
            self._open.pop(lease.client, None)

    async def take_publish(self, key: str) -> None:
        if self.publishes_limited:
            self.take_local(key)

    def take_local(self, key: str) -> None:
        wait = self.buckets.take(key)
        if wait > 0:
            self.publishes_refused += 1
            raise self._publish_refused(wait)

    def stats(self) -> dict[str, object]:
        return {
            "kind": "local",
            "max_streams_per_client": self.max_streams_per_client,
            "clients_with_streams": len(self._open),
            "streams_refused": self.streams_refused,
            "publish_rate_per_second": self.publish_rate,
            "publish_burst": self.publish_burst,
            "publish_buckets": len(self.buckets),
            "publish_buckets_evicted": self.buckets.evicted,
            "publishes_refused": self.publishes_refused,
        }
