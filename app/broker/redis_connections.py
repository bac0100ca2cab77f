"""How the Redis brokers use their connections: timeouts, pool size, blocking reads, and
the backoff of a reader that lost its connection."""

from __future__ import annotations

__all__ = [
    "BACKOFF_INITIAL_SECONDS",
    "BACKOFF_MAX_SECONDS",
    "COMMAND_TIMEOUT_SECONDS",
    "CONNECT_TIMEOUT_SECONDS",
    "DEFAULT_MAX_CONNECTIONS",
    "READER_SOCKET_TIMEOUT_SECONDS",
    "READER_STOP_SECONDS",
    "READ_BLOCK_MS",
    "READ_COUNT",
]

READ_BLOCK_MS = 5000
READ_COUNT = 1000
CONNECT_TIMEOUT_SECONDS = 5.0
# Longer than the block: a quiet XREAD BLOCK must not look like a dead socket.
READER_SOCKET_TIMEOUT_SECONDS = READ_BLOCK_MS / 1000 + 10
COMMAND_TIMEOUT_SECONDS = 5.0
DEFAULT_MAX_CONNECTIONS = 32
"""Command connections per worker (per node on a cluster): REDIS_MAX_CONNECTIONS."""
BACKOFF_INITIAL_SECONDS = 0.1
BACKOFF_MAX_SECONDS = 2.0
# Python 3.11's asyncio.wait_for (used by redis-py around socket I/O) can swallow a
# cancellation that lands as the I/O completes (CPython gh-86296): so stopping the
# reader is a flag it checks plus a bounded wait, never an unbounded await.
READER_STOP_SECONDS = 2.0
