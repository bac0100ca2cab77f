"""The benchmark's stalled-clients step: what N clients that stopped reading cost the box.

``load_tests/benchmark.py`` runs it twice in one run, on the same machine:

* **before**: Herald without its stream socket caps -- served by plain uvicorn
  (``uvicorn app.main:app``: no transport in the scope, so no send-buffer cap, no
  transport limits, no abort) with ``SSE_SOCKET_SEND_BUFFER_KB=0``;
* **after**: ``python -m app`` with the defaults (64 KB send buffer, 64 KB
  transport buffer, overflow closes abort).

Each opens ``streams`` streams whose clients set a 4 KB receive buffer, read the
response head and then nothing, publishes ``events`` events of ``event_bytes``
to their channel, and reads, before, during (the peak) and after publishing
while every client socket is still open: the kernel buffers of the server
port's connections (``ss``, both ends, immune to other work on the machine),
the namespace's TCP memory (``/proc/net/sockstat``) and the server's RSS.

The event count is bounded on purpose: before the fix every stalled stream
keeps everything published to it, up to ``tcp_wmem``'s maximum (4 MiB here);
2,000 of them would pass the kernel's ``tcp_mem`` pressure line and slow every
TCP socket of the machine. 500 events of 1 KB keep "before" near 1 GB, and are
past what the defaults need to cut a stalled stream (~400: 100 queued, 64 KB
in the transport, ~128 KB in the kernel).
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import Iterator
from typing import Any

import psutil  # type: ignore[import-untyped, unused-ignore]

from tests.leak.raw_http import KeepAliveClient, SseSocket, open_sse
from tests.support.server import ServerProcess
from tests.support.tcp_memory import SS, port_tcp_memory, sockstat_tcp_memory

__all__ = ["VARIANTS", "measure_stalled"]

HOST = "127.0.0.1"
CHANNEL = "stalled"
RECEIVE_BUFFER = 4096
OPEN_CONCURRENCY = 100
SAMPLE_EVERY = 25
SETTLE_SECONDS = 2.0
VARIANTS = ("before", "after")


def _server(variant: str, env: dict[str, str]) -> ServerProcess:
    if variant == "after":
        return ServerProcess(env)
    server = ServerProcess({**env, "SSE_SOCKET_SEND_BUFFER_KB": "0"})
    server.argv = [
        sys.executable,
        "-m",
        "uvicorn",
        "app.main:app",
        "--host",
        HOST,
        "--port",
        str(server.port),
        "--no-proxy-headers",
        "--log-level",
        "warning",
    ]
    return server


@contextlib.contextmanager
def _running(server: ServerProcess) -> Iterator[ServerProcess]:
    server.start()
    try:
        yield server
    finally:
        server.close()


class _Readings:
    """TCP memory (this port's connections and the namespace) and RSS, and their peaks."""

    def __init__(self, server: ServerProcess) -> None:
        assert server.process is not None
        root = psutil.Process(server.process.pid)
        self.processes = [root, *root.children(recursive=True)]
        self.port = server.port
        self.peak = {"port_tcp_bytes": 0, "sockstat_tcp_bytes": 0, "rss_bytes": 0}

    def read(self) -> dict[str, int]:
        reading = {
            "port_tcp_bytes": port_tcp_memory(self.port) if SS else 0,
            "sockstat_tcp_bytes": sockstat_tcp_memory(),
            "rss_bytes": sum(process.memory_info().rss for process in self.processes),
        }
        for key, value in reading.items():
            self.peak[key] = max(self.peak[key], value)
        return reading


async def _stall(
    server: ServerProcess, streams: int, events: int, event_bytes: int
) -> dict[str, Any]:
    readings = _Readings(server)
    publisher = KeepAliveClient(HOST, server.port)
    gate = asyncio.Semaphore(OPEN_CONCURRENCY)

    async def open_one() -> SseSocket:
        async with gate:
            return await open_sse(
                HOST, server.port, f"/events/{CHANNEL}", receive_buffer=RECEIVE_BUFFER, timeout=60
            )

    idle = readings.read()
    clients = await asyncio.gather(*(open_one() for _ in range(streams)))
    try:
        if any(client.status != 200 for client in clients):
            raise RuntimeError("a stalled stream was refused")
        opened = readings.read()
        body = b"x" * event_bytes
        started = time.monotonic()
        for published in range(1, events + 1):
            response = await publisher.post_text(f"/events/{CHANNEL}", body)
            if response.status != 202:
                raise RuntimeError(f"publish answered {response.status}")
            if published % SAMPLE_EVERY == 0:
                readings.read()
        publish_seconds = time.monotonic() - started
        await asyncio.sleep(SETTLE_SECONDS)
        end = readings.read()  # every client socket is still open here
        still_open = int((await publisher.get_json("/health"))["connections"])
    finally:
        for client in clients:
            client.reset()
        await publisher.aclose()
    per_stream = {
        **{f"peak_{key}": round((readings.peak[key] - idle[key]) / streams, 1) for key in idle},
        **{f"end_{key}": round((end[key] - idle[key]) / streams, 1) for key in idle},
    }
    return {
        "streams": streams,
        "events": events,
        "event_bytes": event_bytes,
        "publish_seconds": round(publish_seconds, 2),
        "still_open": still_open,
        "idle": idle,
        "opened": opened,
        "peak": readings.peak,
        "end": end,
        "per_stream_bytes": per_stream,
        "tcp_source": "ss" if SS else "sockstat",
    }


def measure_stalled(
    env: dict[str, str], streams: int, events: int, event_bytes: int
) -> dict[str, Any]:
    """Both variants, one after the other: ``{"before": {...}, "after": {...}}``."""
    results: dict[str, Any] = {}
    for variant in VARIANTS:
        print(f"[herald] {streams:,} stalled streams, {variant}", file=sys.stderr)
        with _running(_server(variant, env)) as server:
            results[variant] = asyncio.run(_stall(server, streams, events, event_bytes))
    return results
