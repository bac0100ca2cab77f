"""Publishes per second one worker accepts, next to what the same uvicorn answers bare.

Usage (from the repository root)::

    python -m load_tests.publish_rate                    # every target below, 3 rounds of 5 s
    python -m load_tests.publish_rate --only herald-memory,bare --rounds 5
    python -m load_tests.publish_rate --only bare,herald-memory --before HEAD~1   # before/after
    python -m load_tests.publish_rate --only herald-memory,herald-memory-keyed,herald-redis,\
herald-redis-keyed --before main                  # what a key costs, and no key against main

Targets, each a server of its own on a free port of 127.0.0.1, all started at
once and driven one at a time, in alternating rounds (so a machine that gets
busier during the run weighs on every target alike):

* ``bare`` — ``load_tests/bare_asgi_app.py``: what uvicorn answers with no
  framework at all (the ceiling);
* ``herald-memory`` — ``POST /events/<channel>``, one event per request, on ``memory://``;
* ``baseline`` — the naive FastAPI ``POST /publish`` of ``load_tests/baseline_app.py``
  (reads the body, answers JSON);
* ``herald-redis`` — as ``herald-memory``, on a ``redis-server`` this tool starts;
* ``batch-memory`` / ``batch-redis`` — ``POST /events`` with ``--batch`` events per
  request (figures are events/s);
* ``herald-memory-keyed`` / ``herald-redis-keyed`` — as ``herald-memory`` /
  ``herald-redis``, each request with an ``Idempotency-Key`` of its own (so each is
  published: what a key costs, not what a replay costs);
* ``herald-memory@before`` (and ``herald-redis@before`` when ``herald-redis`` is
  measured) — with ``--before <commit>``: that target as that commit serves it
  (extracted with ``git archive``), driven right after this one's.

Each server is pinned to CPU 0 and this client to CPU 1 (unless ``--no-pin``);
the client keeps ``--window`` requests in flight (HTTP/1.1 pipelining) on each
of ``--connections`` keep-alive connections, every event 64 bytes of JSON, no
subscribers. Prints, per target, the median over rounds of accepted events/s
and the client's CPU use (near 100 %: the figure may be the client's limit);
each ratio is the median of its rounds' ratios, the two servers of a ratio
measured one after the other in every round (``round_ratios``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import resource
import statistics
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped, unused-ignore]

from load_tests.checkout import checkout
from tests.support.redis_server import REDIS_SERVER, RedisServer
from tests.support.server import REPO_ROOT, ServerProcess

__all__ = ["TARGETS", "PublishRate", "Target", "compare", "main"]

EVENT = {"text": "x" * 40, "n": 1}
BODY = json.dumps({"data": EVENT}).encode()
DEFAULT_BATCH = 1000
# In the order each round drives them: each ratio's two servers are measured back to back.
TARGETS = (
    "bare",
    "herald-memory",
    "baseline",
    "herald-redis",
    "batch-memory",
    "batch-redis",
    "herald-memory-keyed",
    "herald-redis-keyed",
)
KEYED = "-keyed"
BEFORE = "herald-memory@before"
"""``herald-memory`` served from ``--before``: driven right after ``herald-memory``."""
BEFORE_REDIS = "herald-redis@before"
"""``herald-redis`` served from ``--before``: driven right after ``herald-redis``."""
SERVED_BEFORE = {"herald-memory": BEFORE, "herald-redis": BEFORE_REDIS}
HERALD_ENV = {
    "LOG_LEVEL": "warning",
    # Loopback publishes need no token; the caller's auth settings must not leak in.
    "PUBLISH_TOKEN": "",
    "JWT_SECRET": "",
    "JWT_PUBLIC_KEY": "",
    "ADMIN_TOKEN": "",
    "PUBLISH_RATE_PER_SECOND": "0",
}


@dataclass(frozen=True)
class Target:
    name: str
    argv: list[str]
    env: dict[str, str]
    path: str
    body: bytes
    status: int
    events_per_request: int = 1
    cwd: Path | None = None  # the checkout to serve from, if not the run's
    keyed: bool = False  # each request with an Idempotency-Key of its own

    def request(self) -> bytes:
        return self.head() + b"\r\n" + self.body

    def head(self) -> bytes:
        """The request line and headers, without the blank line that ends them."""
        return (
            f"POST {self.path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(self.body)}\r\n"
        ).encode()


class _Requests:
    """The bytes of ``count`` more requests of a target: the same bytes each time, or with a
    key of their own (this connection's ``tag`` and a counter: cheap, and never repeated)."""

    def __init__(self, target: Target, tag: str) -> None:
        self._same = None if target.keyed else target.request()
        self._head = target.head() + f"Idempotency-Key: {tag}-".encode()
        self._tail = b"\r\n\r\n" + target.body
        self._sent = 0

    def take(self, count: int) -> bytes:
        if self._same is not None:
            return self._same * count
        first, self._sent = self._sent, self._sent + count
        head, tail = self._head, self._tail
        return b"".join(head + b"%d" % n + tail for n in range(first, first + count))


@dataclass
class PublishRate:
    """One target's rounds: accepted events per second each, the events per CPU-second of
    the server process (a figure that other load on the machine disturbs much less than
    the wall-clock rate; a redis-server's own CPU is not in it), and the client's CPU use."""

    target: str
    events_per_request: int
    rounds: list[float] = field(default_factory=list)
    per_cpu_rounds: list[float] = field(default_factory=list)
    refused: int = 0
    client_cpu_percent: list[float] = field(default_factory=list)

    @property
    def per_second(self) -> float:
        return statistics.median(self.rounds) if self.rounds else 0.0

    @property
    def per_cpu_second(self) -> float:
        return statistics.median(self.per_cpu_rounds) if self.per_cpu_rounds else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "events_per_request": self.events_per_request,
            "events_per_second": round(self.per_second, 1),
            "rounds": [round(r, 1) for r in self.rounds],
            "events_per_server_cpu_second": round(self.per_cpu_second, 1),
            "refused": self.refused,
            "client_cpu_percent": [round(c) for c in self.client_cpu_percent],
        }


def batch_body(size: int, channels: int) -> bytes:
    items = [{"channel": f"rate-{i % channels}", "data": EVENT} for i in range(size)]
    return json.dumps(items).encode()


def make_target(
    name: str, *, repo: Path, redis_url: str | None, batch: int, before: Path | None = None
) -> Target:
    python = sys.executable
    base, at, _ = name.partition("@")
    if at:
        if before is None:
            raise ValueError(f"{name} needs a checkout to serve (--before)")
        served = make_target(base, repo=repo, redis_url=redis_url, batch=batch)
        return dataclasses.replace(served, name=name, cwd=before)
    if name.endswith(KEYED):
        served = make_target(name.removesuffix(KEYED), repo=repo, redis_url=redis_url, batch=batch)
        return dataclasses.replace(served, name=name, keyed=True)
    if name == "bare":
        return Target(name, [python, "-m", "load_tests.bare_asgi_app"], {}, "/publish", BODY, 202)
    if name == "baseline":
        argv = [python, "-m", "load_tests.baseline_app"]
        return Target(name, argv, {"LOG_LEVEL": "warning"}, "/publish", BODY, 200)
    kind, _, broker = name.partition("-")
    url = "memory://" if broker == "memory" else redis_url
    if url is None:
        raise ValueError(f"{name} needs redis-server")
    env = HERALD_ENV | {"BROKER_URL": url}
    if kind == "herald":
        return Target(name, [python, "-m", "app"], env, "/events/rate-0", BODY, 202)
    return Target(name, [python, "-m", "app"], env, "/events", batch_body(batch, 4), 202, batch)


async def _connection(
    port: int, requests: _Requests, status: bytes, window: int, deadline: float, counts: list[int]
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    in_flight = 0
    try:
        while True:
            if time.monotonic() < deadline:
                writer.write(requests.take(window - in_flight))
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
            counts[0 if status_line.split()[1] == status else 1] += 1
    finally:
        writer.close()


async def _drive(
    target: Target, port: int, connections: int, window: int, seconds: float
) -> tuple[int, int, float, float]:
    counts = [0, 0]
    cpu_before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.monotonic()
    deadline = started + seconds
    status = str(target.status).encode()
    await asyncio.gather(
        *(
            _connection(port, _Requests(target, uuid.uuid4().hex), status, window, deadline, counts)
            for _ in range(connections)
        )
    )
    elapsed = time.monotonic() - started
    cpu_after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    return counts[0], counts[1], elapsed, 100 * cpu / elapsed


@contextlib.contextmanager
def _pinned(pin: bool) -> Iterator[tuple[set[int] | None, set[int] | None]]:
    """(server CPUs, client CPUs); restores this process's CPU mask afterwards."""
    before = os.sched_getaffinity(0)
    cpus = sorted(before)
    if not pin or len(cpus) < 2:
        yield None, None
        return
    try:
        yield {cpus[0]}, {cpus[1]}
    finally:
        os.sched_setaffinity(0, before)


def _run(coroutine: Any) -> Any:
    try:
        import uvloop
    except ImportError:  # plain asyncio works, a little slower
        return asyncio.run(coroutine)
    return uvloop.run(coroutine)


def compare(
    names: tuple[str, ...] = TARGETS,
    *,
    repo: Path = REPO_ROOT,
    rounds: int = 3,
    seconds: float = 5.0,
    connections: int = 4,
    window: int = 16,
    batch: int = DEFAULT_BATCH,
    pin: bool = True,
    before: Path | None = None,
) -> dict[str, PublishRate]:
    """Start every target (and a redis-server if one needs it), drive each ``rounds`` times
    in alternation, stop them all; returns the figures by target name."""
    redis_server = None
    if any("-redis" in name for name in names):
        if REDIS_SERVER is None:
            raise RuntimeError("redis-server is not installed")
        redis_server = RedisServer().start()
    servers: dict[str, tuple[Target, ServerProcess]] = {}
    results = {name: PublishRate(name, 1) for name in names}
    try:
        with _pinned(pin) as (server_cpus, client_cpus):
            for name in names:
                url = redis_server.url if redis_server is not None else None
                target = make_target(name, repo=repo, redis_url=url, batch=batch, before=before)
                results[name].events_per_request = target.events_per_request
                server = ServerProcess(target.env, target.argv, cwd=target.cwd or repo)
                if server_cpus is not None:
                    os.sched_setaffinity(0, server_cpus)  # inherited at fork
                server.start()
                servers[name] = (target, server)
            if client_cpus is not None:
                os.sched_setaffinity(0, client_cpus)
            for target, server in servers.values():  # warm-up
                _run(_drive(target, server.port, connections, window, 1.0))
            for _ in range(rounds):
                for name, (target, server) in servers.items():
                    cpu_before = _cpu_seconds(server)
                    accepted, refused, elapsed, cpu = _run(
                        _drive(target, server.port, connections, window, seconds)
                    )
                    server_cpu = _cpu_seconds(server) - cpu_before
                    rate = results[name]
                    events = accepted * target.events_per_request
                    rate.rounds.append(events / elapsed)
                    rate.per_cpu_rounds.append(events / server_cpu if server_cpu > 0 else 0.0)
                    rate.refused += refused
                    rate.client_cpu_percent.append(cpu)
    finally:
        for _, server in servers.values():
            server.close()
        if redis_server is not None:
            redis_server.close()
    return results


def _cpu_seconds(server: ServerProcess) -> float:
    assert server.process is not None
    times = psutil.Process(server.process.pid).cpu_times()
    return float(times.user + times.system)


RATIOS = {
    "herald-memory / bare": ("herald-memory", "bare"),
    f"{BEFORE} / bare": (BEFORE, "bare"),
    f"herald-memory / {BEFORE}": ("herald-memory", BEFORE),
    "herald-memory / baseline": ("herald-memory", "baseline"),
    "herald-redis / herald-memory": ("herald-redis", "herald-memory"),
    f"herald-redis / {BEFORE_REDIS}": ("herald-redis", BEFORE_REDIS),
    "herald-memory-keyed / herald-memory": ("herald-memory-keyed", "herald-memory"),
    "herald-redis-keyed / herald-redis": ("herald-redis-keyed", "herald-redis"),
}


def round_ratios(top: PublishRate, bottom: PublishRate) -> list[float]:
    """``top`` over ``bottom`` in each round: two servers measured seconds apart. A
    machine that slows down for a round slows both, so the pair keeps its ratio where
    the medians of the two columns, taken from different rounds, would not."""
    return [t / b for t, b in zip(top.rounds, bottom.rounds, strict=True) if b > 0]


def ratios(results: dict[str, PublishRate]) -> dict[str, float]:
    """The ratios the publish targets are stated in, each the median of its same-round
    ratios (only those whose parts were measured)."""
    found = {}
    for label, (top, bottom) in RATIOS.items():
        if top in results and bottom in results:
            pairs = round_ratios(results[top], results[bottom])
            if pairs:
                found[label] = round(statistics.median(pairs), 3)
    return found


def render(results: dict[str, PublishRate]) -> str:
    lines = []
    for rate in results.values():
        unit = "publishes/s" if rate.events_per_request == 1 else "events/s"
        rounds = ", ".join(f"{r:,.0f}" for r in rate.rounds)
        cpu = max(rate.client_cpu_percent, default=0)
        lines.append(
            f"{rate.target:>14}: {rate.per_second:>10,.0f} {unit} (rounds {rounds};"
            f" {rate.per_cpu_second:,.0f} per server CPU-second;"
            f" {rate.refused} refused; client CPU up to {cpu:.0f} %)"
        )
    for label, value in ratios(results).items():
        top, bottom = RATIOS[label]
        pairs = ", ".join(f"{r:.2f}" for r in round_ratios(results[top], results[bottom]))
        lines.append(f"{label}: {value:.2f} (median of the rounds' {pairs})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default=",".join(TARGETS), help="targets, comma-separated")
    parser.add_argument("--repo", type=Path, default=REPO_ROOT, help="checkout to serve from")
    parser.add_argument(
        "--before",
        help=f"a commit: also serve herald-memory at it ({BEFORE}), driven right after this one's",
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0, help="per target per round")
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--window", type=int, default=16, help="requests in flight each")
    parser.add_argument("--batch", type=int, default=DEFAULT_BATCH, help="events per batch")
    parser.add_argument("--no-pin", action="store_true")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    names = tuple(name.strip() for name in args.only.split(",") if name.strip())
    unknown = sorted(set(names) - set(TARGETS) - set(SERVED_BEFORE.values()))
    if unknown:
        parser.error(f"unknown target(s): {', '.join(unknown)} (choose from {', '.join(TARGETS)})")
    with contextlib.ExitStack() as stack:
        before = None
        if args.before:
            if not set(SERVED_BEFORE) & set(names):
                parser.error("--before compares herald-memory or herald-redis: include one")
            before = stack.enter_context(checkout(args.before))
            for name, served_before in SERVED_BEFORE.items():
                if name in names:
                    at = names.index(name) + 1
                    names = (*names[:at], served_before, *names[at:])
        results = compare(
            names,
            repo=args.repo.resolve(),
            rounds=args.rounds,
            seconds=args.seconds,
            connections=args.connections,
            window=args.window,
            batch=args.batch,
            pin=not args.no_pin,
            before=before,
        )
    print(render(results))
    if args.json:
        report = {"results": [r.as_dict() for r in results.values()], "ratios": ratios(results)}
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
