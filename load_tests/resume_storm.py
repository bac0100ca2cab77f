"""A resume storm: what a worker's RSS does when a crowd of stalled clients resumes at once.

    python -m load_tests.resume_storm --redis redis://127.0.0.1:6379/0 --before 97444bb

One ``python -m app`` worker on ``redis://`` (its own key prefix) gets a channel with a
full history (``--events`` events of ``--event-bytes``, ``SSE_HISTORY_SIZE`` large enough
to keep them), then ``--clients`` clients open a stream on it at once and never read
(4 KB receive buffer), each in one of three modes:

* ``recent``: ``Last-Event-ID`` of the oldest retained event, so each replays the whole
  history (what a crowd of browsers coming back after a blip asks for);
* ``none``: no id, a new stream: the head alone (the control).

Readings of the worker's RSS (MiB): before the clients, the peak while they hold their
streams (sampled every 0.2 s for ``--hold`` seconds) and after they have gone (their
sockets reset, then ``--settle`` seconds). With ``--before <commit>`` each mode is also
run on that commit (``load_tests.checkout``), right before this checkout's run, on the
same Redis. A fresh server per run: every figure starts from the same idle worker.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped, unused-ignore]

from load_tests.checkout import checkout
from tests.leak.raw_http import KeepAliveClient, SseSocket, open_sse
from tests.support.server import REPO_ROOT, ServerProcess

__all__ = ["MODES", "measure"]

HOST = "127.0.0.1"
CHANNEL = "storm"
RECEIVE_BUFFER = 4096
MODES = ("recent", "none")
MIB = 1024 * 1024
SAMPLE_SECONDS = 0.2
BATCH = 200


def _rss(server: ServerProcess) -> int:
    assert server.process is not None
    root = psutil.Process(server.process.pid)
    return int(sum(p.memory_info().rss for p in [root, *root.children(recursive=True)]))


async def _fill(server: ServerProcess, events: int, event_bytes: int) -> list[str]:
    publisher = KeepAliveClient(HOST, server.port)
    ids: list[str] = []
    try:
        data = "x" * event_bytes
        for start in range(0, events, BATCH):
            batch = [{"channel": CHANNEL, "data": data} for _ in range(min(BATCH, events - start))]
            response = await publisher.post_json("/events", batch)
            if response.status != 202:
                raise RuntimeError(f"publish answered {response.status}")
            ids += response.json()["ids"]
    finally:
        await publisher.aclose()
    return ids


async def _storm(
    server: ServerProcess, mode: str, clients: int, ids: list[str], hold: float, settle: float
) -> dict[str, float]:
    idle = _rss(server)
    last_event_id = ids[0] if mode == "recent" else None
    streams: list[SseSocket] = await asyncio.gather(
        *(
            open_sse(
                HOST,
                server.port,
                f"/events/{CHANNEL}",
                last_event_id=last_event_id,
                receive_buffer=RECEIVE_BUFFER,
                timeout=60,
            )
            for _ in range(clients)
        )
    )
    peak = idle
    try:
        if any(stream.status != 200 for stream in streams):
            raise RuntimeError("a stream was refused")
        deadline = time.monotonic() + hold
        while time.monotonic() < deadline:
            peak = max(peak, _rss(server))
            await asyncio.sleep(SAMPLE_SECONDS)
    finally:
        for stream in streams:
            stream.reset()
    await asyncio.sleep(settle)
    after = _rss(server)
    return {
        "idle_mib": round(idle / MIB, 1),
        "peak_mib": round(peak / MIB, 1),
        "after_mib": round(after / MIB, 1),
        "peak_rise_mib": round((peak - idle) / MIB, 1),
        "after_rise_mib": round((after - idle) / MIB, 1),
    }


@contextlib.contextmanager
def _serving(cwd: Path, env: dict[str, str]) -> Iterator[ServerProcess]:
    server = ServerProcess(env, cwd=cwd).start()
    try:
        yield server
    finally:
        server.close()


def measure(
    cwd: Path,
    redis_url: str,
    mode: str,
    *,
    clients: int,
    events: int,
    event_bytes: int,
    hold: float,
    settle: float,
) -> dict[str, float]:
    env = {
        "BROKER_URL": redis_url,
        "REDIS_KEY_PREFIX": f"storm{uuid.uuid4().hex[:8]}",
        "SSE_HISTORY_SIZE": str(events),
        "LOG_LEVEL": "warning",
    }
    with _serving(cwd, env) as server:
        ids = asyncio.run(_fill(server, events, event_bytes))
        time.sleep(1.0)  # the publishes' garbage collected, the reader caught up
        return asyncio.run(_storm(server, mode, clients, ids, hold, settle))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--redis", required=True, help="redis:// URL of a Redis to use")
    parser.add_argument("--before", help="a commit to measure beside this checkout")
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--events", type=int, default=1000)
    parser.add_argument("--event-bytes", type=int, default=1000)
    parser.add_argument("--hold", type=float, default=10.0)
    parser.add_argument("--settle", type=float, default=3.0)
    args = parser.parse_args(argv)
    options = {
        "clients": args.clients,
        "events": args.events,
        "event_bytes": args.event_bytes,
        "hold": args.hold,
        "settle": args.settle,
    }
    results: dict[str, Any] = {"options": options, "loadavg": os.getloadavg()}
    with contextlib.ExitStack() as stack:
        trees = {"after": REPO_ROOT}
        if args.before:
            trees = {"before": stack.enter_context(checkout(args.before)), **trees}
        for mode in MODES:
            for name, tree in trees.items():
                reading = measure(tree, args.redis, mode, **options)
                results[f"{name}/{mode}"] = reading
                print(f"{name:6} {mode:6} {json.dumps(reading)}", flush=True)
    results["loadavg_end"] = os.getloadavg()
    print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
