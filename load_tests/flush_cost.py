"""What one stream costs in a write pass: µs per stream per pass, against an earlier commit.

Usage (from the repository root)::

    python -m load_tests.flush_cost                      # 2,000 streams, before = main
    python -m load_tests.flush_cost --streams 500 --before HEAD~3

Each variant runs in a process of its own, pinned to CPU 0: Herald's app served
by ``uvicorn.Server`` (uvloop, httptools) in that process, ``--streams`` raw
client sockets on the same loop that read and discard, and ``--events``
publishes through ``hub.publish`` ``--interval`` apart (one event per pass, as
at 20 events/s). Each event's cost is its ``hub.publish`` (whose fan-out writes
the event itself when the hub keeps up, hub design note 12) plus the hub's
``_flush`` passes that follow it, in CPU time of the thread (the clients' reads
are outside it, and so is other work that preempts the process on a busy
machine); the figure is the median over the events of that cost divided by the
streams. Variants:

* ``before``: the code at ``--before`` (extracted with ``git archive``), under
  Herald's protocol where that code has one;
* ``asgi``: this code under uvicorn's own protocol, so every write is a step of
  the ASGI ``send`` (the path the direct one hands back to);
* ``direct``: this code under Herald's protocol, as ``python -m app`` serves it.

Where the streams' transports are at hand (``direct``), the same process then
times the floor on the same sockets: one ``transport.write`` of one shared
chunk per stream, what a bare hub pays (``load_tests/floor_hub.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["main"]

VARIANTS = ("before", "asgi", "direct")
REQUEST = b"GET /events/bench HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n"


class Reader(asyncio.Protocol):
    def __init__(self, first: asyncio.Future[None]) -> None:
        self.first = first

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.write(REQUEST)  # type: ignore[attr-defined, unused-ignore]

    def data_received(self, data: bytes) -> None:
        if not self.first.done():
            self.first.set_result(None)


async def measure(
    herald_protocol: bool, streams: int, events: int, interval: float
) -> dict[str, Any]:
    import uvicorn

    from app.core.config import load_settings
    from app.main import create_app

    port = int(os.environ["PORT"])
    app = create_app(load_settings())
    http: Any = "httptools"
    if herald_protocol:
        try:
            from app.serving.protocols import HeraldHttpProtocol
        except ImportError:  # an older checkout has none
            pass
        else:
            http = HeraldHttpProtocol
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, http=http, log_level="warning", access_log=False
    )
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve())
    while not server.started:  # noqa: ASYNC110
        await asyncio.sleep(0.01)
    loop = asyncio.get_running_loop()
    transports = []
    for _ in range(streams):
        first: asyncio.Future[None] = loop.create_future()
        transport, _ = await loop.create_connection(lambda f=first: Reader(f), "127.0.0.1", port)
        transports.append(transport)
        await first
    await asyncio.sleep(0.5)  # every stream past its replay and pumping
    hub = app.state.hub
    passes: list[tuple[float, int]] = []
    original = hub._flush

    def timed() -> None:
        # CPU time of this thread: a pass preempted by other work on a busy machine
        # does not count the other work.
        count = len(hub._to_flush)
        started = time.thread_time()
        original()
        passes.append((time.thread_time() - started, count))

    hub._flush = timed
    per_stream = []
    for number in range(events):
        # The event's whole cost to the streams: its fan-out (which writes it itself when
        # the hub keeps up, design note 12) and any pass that writes it later.
        before = len(passes)
        started = time.thread_time()
        await hub.publish("bench", {"s": number, "p": "x" * 100})
        fan_out = time.thread_time() - started
        await asyncio.sleep(interval)
        later = sum(seconds for seconds, _ in passes[before:])
        per_stream.append((fan_out + later) / streams * 1e6)
    written_in_fan_out = sum(c.delivered for c in hub._connections) - sum(
        count for _, count in passes
    )
    # The floor on the same sockets: one transport.write of one shared chunk per stream
    # (an SSE comment, which the clients discard like the events).
    server_transports = [c.transport for c in hub._connections if c.transport is not None]
    floor: list[float] = []
    comment = b"%x\r\n%b\r\n" % (len(b": floor\n\n"), b": floor\n\n")
    for _ in range(events if server_transports else 0):
        started = time.thread_time()
        for transport in server_transports:
            transport.write(comment)
        floor.append((time.thread_time() - started) / len(server_transports) * 1e6)
        await asyncio.sleep(interval)
    for transport in transports:
        transport.close()
    server.should_exit = True
    await serving
    return {
        "streams": streams,
        "passes": len(passes),
        "streams_per_pass": statistics.median(count for _, count in passes) if passes else 0,
        "written_in_fan_out": written_in_fan_out,
        "us_per_stream_median": round(statistics.median(per_stream), 3),
        "us_per_stream_p90": round(statistics.quantiles(per_stream, n=10)[-1], 3),
        "floor_us_per_stream_median": round(statistics.median(floor), 3) if floor else None,
    }


def child(args: argparse.Namespace) -> None:
    os.sched_setaffinity(0, {0})
    if args.repo:
        sys.path.insert(0, args.repo)
    import uvloop

    result = uvloop.run(measure(args.variant != "asgi", args.streams, args.events, args.interval))
    print(json.dumps(result))


def run_variant(variant: str, repo: Path, args: argparse.Namespace) -> dict[str, Any]:
    from tests.support.server import free_port

    env = {
        **os.environ,
        "PORT": str(free_port()),
        "LOG_LEVEL": "warning",
        "BROKER_URL": "memory://",
        "SSE_MAX_CONNECTIONS": str(args.streams + 1000),
        "MEMORY_LIMIT_MB": str(64 * 1024),
        "SSE_MAX_CONNECTIONS_PER_IP": "0",
        "PUBLISH_RATE_PER_SECOND": "0",
        "PUBLISH_TOKEN": "",
        "ADMIN_TOKEN": "",
        "ALLOW_ANONYMOUS": "true",
    }
    argv = [sys.executable, str(Path(__file__).resolve()), "--child", "--variant", variant]
    argv += ["--streams", str(args.streams), "--events", str(args.events)]
    argv += ["--interval", str(args.interval), "--repo", str(repo)]
    done = subprocess.run(argv, env=env, cwd=repo, capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"{variant} failed:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return {"variant": variant, **result}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m load_tests.flush_cost", description=__doc__)
    parser.add_argument("--streams", type=int, default=2000)
    parser.add_argument("--events", type=int, default=200)
    parser.add_argument("--interval", type=float, default=0.02)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--before", default="main")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--variant", choices=VARIANTS, default="direct", help=argparse.SUPPRESS)
    parser.add_argument("--repo", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args)
        return 0
    from load_tests.checkout import checkout
    from load_tests.generator import raise_open_file_limit
    from tests.support.server import REPO_ROOT

    raise_open_file_limit()
    results = []
    with checkout(args.before) as before:
        for number in range(args.rounds):
            for variant in VARIANTS:
                repo = before if variant == "before" else REPO_ROOT
                result = run_variant(variant, repo, args)
                results.append({"round": number + 1, **result})
                print(
                    f"round {number + 1} {variant:>6}: {result['us_per_stream_median']:.2f} µs per"
                    f" stream per event (p90 {result['us_per_stream_p90']:.2f}),"
                    f" {result['passes']} passes of {result['streams_per_pass']:.0f} streams,"
                    f" {result.get('written_in_fan_out', 0)} writes in the fan-out;"
                    f" floor on the same sockets {result['floor_us_per_stream_median']} µs",
                    flush=True,
                )
    print(json.dumps({"before": args.before, "load": os.getloadavg(), "results": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
