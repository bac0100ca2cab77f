"""Publishes per second one Herald worker accepts, on a broker of your choice.

Usage (from the repository root)::

    python -m load_tests.publish_rate                          # memory://, 4 connections, 10 s
    python -m load_tests.publish_rate --broker redis://127.0.0.1:6379/0 --seconds 10
    python -m load_tests.publish_rate --repo ../old-checkout   # the same, for another checkout

It starts ``python -m app`` from ``--repo`` on a free port of 127.0.0.1 (pinned to
CPU 0 unless ``--no-pin``), opens ``--connections`` keep-alive connections from
this process (pinned to CPU 1) and keeps ``--window`` requests in flight on each
(HTTP/1.1 pipelining) for ``--seconds``, each ``POST /events/<channel>`` with a
64-byte JSON body and no subscribers. It prints accepted publishes per second
(status 202) and the client's CPU use, so a result limited by the client shows.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import time
from dataclasses import dataclass
from pathlib import Path

from tests.support.server import REPO_ROOT, ServerProcess

__all__ = ["PublishRate", "measure"]

BODY = json.dumps({"data": {"text": "x" * 40, "n": 1}}).encode()


@dataclass(frozen=True)
class PublishRate:
    accepted: int
    refused: int
    seconds: float
    client_cpu_percent: float

    @property
    def per_second(self) -> float:
        return self.accepted / self.seconds


def _request(channel: str) -> bytes:
    return (
        f"POST /events/{channel} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(BODY)}\r\n\r\n"
    ).encode() + BODY


async def _connection(
    port: int, channel: str, window: int, deadline: float, counts: list[int]
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    request = _request(channel)
    in_flight = 0
    try:
        while True:
            now = time.monotonic()
            if now < deadline:
                writer.write(request * (window - in_flight))
                in_flight = window
            elif in_flight == 0:
                return
            status_line = await reader.readuntil(b"\r\n")
            length = 0
            while True:
                line = await reader.readuntil(b"\r\n")
                if line == b"\r\n":
                    break
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            await reader.readexactly(length)
            in_flight -= 1
            counts[0 if status_line.split()[1] == b"202" else 1] += 1
    finally:
        writer.close()


async def _drive(port: int, connections: int, window: int, seconds: float) -> PublishRate:
    counts = [0, 0]
    cpu_before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.monotonic()
    deadline = started + seconds
    await asyncio.gather(
        *(_connection(port, f"rate-{i}", window, deadline, counts) for i in range(connections))
    )
    elapsed = time.monotonic() - started
    cpu_after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    return PublishRate(counts[0], counts[1], elapsed, 100 * cpu / elapsed)


def measure(
    *,
    repo: Path = REPO_ROOT,
    broker: str = "memory://",
    connections: int = 4,
    window: int = 16,
    seconds: float = 10.0,
    pin: bool = True,
) -> PublishRate:
    """Start a server from ``repo``, drive it, stop it; the server's own log is discarded."""
    server = ServerProcess({"BROKER_URL": broker, "LOG_LEVEL": "warning"}, cwd=repo).start()
    try:
        if pin and server.process is not None and (os.cpu_count() or 1) >= 2:
            os.sched_setaffinity(server.process.pid, {0})
            os.sched_setaffinity(0, {1})
        asyncio.run(_drive(server.port, connections, window, 1.0))  # warm-up
        return asyncio.run(_drive(server.port, connections, window, seconds))
    finally:
        server.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--broker", default="memory://")
    parser.add_argument("--repo", type=Path, default=REPO_ROOT, help="checkout to serve from")
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--window", type=int, default=16, help="requests in flight each")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--no-pin", action="store_true")
    args = parser.parse_args()
    rate = measure(
        repo=args.repo.resolve(),
        broker=args.broker,
        connections=args.connections,
        window=args.window,
        seconds=args.seconds,
        pin=not args.no_pin,
    )
    print(
        f"{rate.per_second:,.0f} publishes/s accepted ({rate.accepted} in {rate.seconds:.1f} s, "
        f"{rate.refused} refused), client CPU {rate.client_cpu_percent:.0f} %, broker {args.broker}"
    )


if __name__ == "__main__":
    main()
