"""Chaos test of Herald's delivery guarantee: real faults, every event counted.

Usage (from the repository root)::

    python -m load_tests.chaos --seed 1 --duration 40          # the issue's scenario
    python -m load_tests.chaos --broker memory --duration 10   # one worker, no Redis
    python -m load_tests.chaos --broker cluster --duration 40  # Redis Cluster, a master killed
    python -m load_tests.chaos --seed 2 --json -               # machine-readable summary

The scenario, all on 127.0.0.1 and bounded in count and time:

* render.yaml's start command, ``gunicorn app.main:app`` (it reads
  ``gunicorn.conf.py``), with ``WEB_CONCURRENCY=2`` over a real ``redis-server``
  this tool starts with ``appendonly yes`` and ``appendfsync always``, so a
  publish Redis acknowledged survives a SIGKILL and is owed to subscribers
  after the restart; ``GUNICORN_MAX_REQUESTS=150`` (jitter 20), so workers
  recycle every few seconds; ``SSE_QUEUE_SIZE=20``; ``SSE_HISTORY_SIZE=20000``
  (history always reaches back, so nothing may be lost to trimming).
* ``--subscribers`` (24) clients, each on 1-3 of 4 channels, cutting their
  streams about every 2.5 s (FIN or RST) and resuming with ``Last-Event-ID`` as
  a browser does; a quarter of them slow readers behind a 4 KB receive buffer
  (``chaos_clients.py`` says how).
* 4 publishers at ``--publish-rate`` (40) events/s each, over kept-alive
  connections, each publish sent with an ``Idempotency-Key`` of its own and
  retried with it until answered: a tenth of the tries cut by the publisher
  (RST) right after the request is written, the others cut by whatever the
  faults cut (``--publish-once``: each tried once, no key, as before keys).
* Mid-run the redis-server is SIGKILLed (``--redis-signal term``: SIGTERM) and
  started again on the same port and data directory after ``--redis-down`` s.
  By default (``--redis-timing boot``) the kill waits, from a moment chosen by
  the seed, for a worker recycled by max-requests to begin its start-up, where
  it connects to Redis: the case in which the issue saw the master halt.
* ``--broker cluster``: the same over a real 3-master, 3-replica Redis Cluster
  (``redis+cluster://``, ``tests/support/redis_cluster.py``); in place of the Redis
  restart, the master serving ``chaos/a``'s log shard is SIGKILLed, its replica
  promoted by the cluster ("back" is then), and the old master started again
  ``--redis-down`` s later (it rejoins as a replica). The counts mean the same.
* Then a quiet period: publishers stop, subscribers stop cutting and read and
  resume until every one has everything it is owed, or ``--quiet-timeout``.

What counts as lost, duplicated, published twice, out of order is defined in
``chaos_ledger.py``. The exit status is 1 if any of those, a reset, a misrouted
or mismatched event is counted, if the gunicorn master exited, or if nothing
was acknowledged after the Redis restart (the server never recovered); 2 if
the tool itself could not run. Randomness (channels, cut times, fault time)
comes from ``--seed``; timing on a shared machine does not, so two runs of one
seed differ in detail.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import re
import secrets
import shutil
import signal
import sys
import time
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from load_tests.chaos_clients import Control, Publisher, Subscriber, Tally
from load_tests.chaos_ledger import Ledger
from tests.support.redis_cluster import RedisCluster
from tests.support.redis_server import RedisServer
from tests.support.server import ServerProcess

__all__ = ["ChaosError", "Options", "main", "parse_args", "run"]

CHANNELS = ["chaos/a", "chaos/b", "chaos/c", "chaos/d"]
MAX_CHANNELS_PER_SUBSCRIBER = 3
SLOW_SHARE = 4
"""Every fourth subscriber reads slowly."""
PUBLISHERS = 4
START_SPREAD_SECONDS = 1.0
RESTART_WINDOW = (0.35, 0.6)
"""The Redis restart happens between these fractions of the publishing time."""
WORKER_STARTUP_LINE = "Waiting for application startup."
"""uvicorn's line just before the ASGI lifespan, in which Herald connects to its broker."""
BOOT_WAIT_SECONDS = 8.0
BOOT_POLL_SECONDS = 0.02
QUIET_POLL_SECONDS = 0.25
MASTER_POLL_SECONDS = 0.2
SETUP_MARGIN_SECONDS = 60.0
HERALD_ENV = {
    "GUNICORN_MAX_REQUESTS": "150",
    "GUNICORN_MAX_REQUESTS_JITTER": "20",
    "SSE_QUEUE_SIZE": "20",
    "SSE_HISTORY_SIZE": "20000",
}
REDIS_SETUPS = {
    "redis": "appendonly yes, appendfsync always",
    "cluster": "3 masters + 3 replicas, appendfsync everysec, WAIT 1 replica per publish",
}
CLUSTER_SHARDS = 16  # REDIS_CLUSTER_SHARDS's default, which the scenario keeps
_BOOTING = re.compile(r"Booting worker with pid: (\d+)")
_WORKER_EXIT = re.compile(r"Worker \(pid:\d+\) exited with code (\d+)")
_STREAM_CLOSED = re.compile(r"stream closed: reason=(\w+)")


class ChaosError(RuntimeError):
    """The tool could not set the scenario up (not a finding about Herald)."""


@dataclass(frozen=True, slots=True)
class Options:
    seed: int = 1
    duration: float = 40.0
    subscribers: int = 24
    publish_rate: float = 40.0
    redis_restart: bool = True
    redis_signal: str = "kill"
    redis_down: float = 1.0
    redis_timing: str = "boot"
    broker: str = "redis"
    keyed: bool = True
    quiet_timeout: float = 20.0
    json_path: str | None = None
    keep_log: str | None = None

    @property
    def workers(self) -> int:
        return 1 if self.broker == "memory" else 2

    @property
    def restarts_redis(self) -> bool:
        return self.broker != "memory" and self.redis_restart


@dataclass(slots=True)
class Timeline:
    """When the faults happened, in seconds since publishing began."""

    redis_restarts: int = 0
    redis_killed_during_boot: bool = False
    redis_down_at: float | None = None
    redis_back_at: float | None = None
    redis_back_clock: float | None = None
    master_exit_code: int | None = None
    master_exited_at: float | None = None
    quiet_seconds: float = 0.0
    caught_up: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


def _gunicorn() -> list[str]:
    """render.yaml's ``gunicorn`` from this interpreter's environment."""
    beside = Path(sys.executable).with_name("gunicorn")
    return [str(beside)] if beside.exists() else [sys.executable, "-m", "gunicorn"]


async def _worker_starting(server: ServerProcess, timeline: Timeline) -> None:
    """Return as a worker begins its start-up (where it first connects to Redis)."""
    seen = server.logs().count(WORKER_STARTUP_LINE)
    deadline = time.monotonic() + BOOT_WAIT_SECONDS
    while time.monotonic() < deadline:
        if server.logs().count(WORKER_STARTUP_LINE) > seen:
            timeline.redis_killed_during_boot = True
            return
        await asyncio.sleep(BOOT_POLL_SECONDS)


async def _restart_redis(
    redis: RedisServer | RedisCluster,
    server: ServerProcess,
    options: Options,
    at: float,
    began: float,
    timeline: Timeline,
) -> None:
    await asyncio.sleep(max(0.0, began + at - time.monotonic()))
    if options.redis_timing == "boot":
        await _worker_starting(server, timeline)
    if isinstance(redis, RedisCluster):
        await _fail_over(redis, options, began, timeline)
        return
    process = redis.process
    assert process is not None
    if options.redis_signal == "term":
        process.terminate()
    else:
        process.kill()
    await asyncio.to_thread(process.wait)
    timeline.redis_down_at = time.monotonic() - began
    await asyncio.sleep(options.redis_down)
    await asyncio.to_thread(redis.start)  # same port, same directory, AOF replayed
    timeline.redis_back_clock = time.monotonic()
    timeline.redis_back_at = timeline.redis_back_clock - began
    timeline.redis_restarts += 1


async def _fail_over(
    cluster: RedisCluster, options: Options, began: float, timeline: Timeline
) -> None:
    """SIGKILL the master of ``chaos/a``'s log shard; once its replica is promoted and
    ``--redis-down`` s have passed, start it again (it rejoins as a replica)."""
    shard = zlib.crc32(CHANNELS[0].encode()) % CLUSTER_SHARDS
    victim = cluster.master_of(f"{{herald:s{shard}}}:log")
    cluster.kill(victim)
    timeline.redis_down_at = time.monotonic() - began
    await asyncio.to_thread(cluster.wait_promoted, victim)
    # The cluster serves every slot again: "back" (what is acknowledged after it counts).
    timeline.redis_back_clock = time.monotonic()
    timeline.redis_back_at = timeline.redis_back_clock - began
    timeline.redis_restarts += 1
    await asyncio.sleep(options.redis_down)
    await asyncio.to_thread(cluster.restart, victim)
    await asyncio.to_thread(cluster.wait_ok)
    timeline.extra["old_master_rejoined_at_seconds"] = round(time.monotonic() - began, 2)


async def _watch_master(server: ServerProcess, began: float, timeline: Timeline) -> None:
    assert server.process is not None
    # Polled: a Popen has no awaitable exit, and a thread blocked in wait() would
    # hold asyncio.run's shutdown until the process it waits for is killed after it.
    while (code := server.process.poll()) is None:  # noqa: ASYNC110
        await asyncio.sleep(MASTER_POLL_SECONDS)
    timeline.master_exit_code = code
    timeline.master_exited_at = time.monotonic() - began


async def _scenario(
    options: Options, server: ServerProcess, redis: RedisServer | RedisCluster | None, token: str
) -> tuple[Ledger, Tally, Timeline]:
    rng = random.Random(options.seed)
    ledger = Ledger(CHANNELS)
    tally = Tally()
    control = Control()
    timeline = Timeline()
    host, port = "127.0.0.1", server.port

    subscribers = []
    for index in range(options.subscribers):
        channels = frozenset(rng.sample(CHANNELS, rng.randint(1, MAX_CHANNELS_PER_SUBSCRIBER)))
        record = ledger.subscriber(f"subscriber {index}", channels)
        subscribers.append(
            Subscriber(
                record,
                host,
                port,
                slow=index % SLOW_SHARE == SLOW_SHARE - 1,
                rng=random.Random(rng.random()),
                tally=tally,
                control=control,
            )
        )
    publishers = [
        Publisher(
            index,
            host,
            port,
            token=token,
            channels=CHANNELS,
            rate=options.publish_rate,
            rng=random.Random(rng.random()),
            ledger=ledger,
            tally=tally,
            control=control,
            keyed=options.keyed,
        )
        for index in range(PUBLISHERS)
    ]
    restart_at = rng.uniform(*RESTART_WINDOW) * options.duration

    async def start_later(subscriber: Subscriber, delay: float) -> None:
        await asyncio.sleep(delay)
        await subscriber.run()

    began = time.monotonic()
    background = [asyncio.create_task(_watch_master(server, began, timeline))]
    restart = None
    if redis is not None and options.restarts_redis:
        restart = asyncio.create_task(
            _restart_redis(redis, server, options, restart_at, began, timeline)
        )
        background.append(restart)
    reading = [
        asyncio.create_task(start_later(s, rng.uniform(0, START_SPREAD_SECONDS)))
        for s in subscribers
    ]
    publishing = [asyncio.create_task(p.run()) for p in publishers]
    try:
        await asyncio.sleep(options.duration)
        control.publishing = False
        await asyncio.gather(*publishing)
        if restart is not None:
            await restart  # Redis is back before the quiet period is timed
        control.quiet = True
        quiet_began = time.monotonic()
        while time.monotonic() - quiet_began < options.quiet_timeout:
            if ledger.caught_up():
                timeline.caught_up = True
                break
            await asyncio.sleep(QUIET_POLL_SECONDS)
        timeline.quiet_seconds = time.monotonic() - quiet_began
        return ledger, tally, timeline
    finally:
        for task in [*reading, *publishing, *background]:
            task.cancel()
        await asyncio.gather(*reading, *publishing, *background, return_exceptions=True)


def _worker_figures(log: str, workers: int) -> dict[str, Any]:
    booted = set(_BOOTING.findall(log))
    exit_codes = [int(code) for code in _WORKER_EXIT.findall(log)]
    reasons = Counter(_STREAM_CLOSED.findall(log))
    return {
        "worker_recycles": max(0, len(booted) - workers),
        "workers_booted": len(booted),
        "worker_exit_codes": {str(c): exit_codes.count(c) for c in sorted(set(exit_codes))},
        "worker_failed_to_boot": log.count("Worker failed to boot"),
        "stream_close_reasons": dict(reasons.most_common()),
    }


def _summary(
    options: Options, ledger: Ledger, tally: Tally, timeline: Timeline, log: str, seconds: float
) -> dict[str, Any]:
    verdict = ledger.verdict()
    failures = dict(verdict.failures)
    if timeline.master_exit_code is not None:
        failures["master_exited"] = 1
    acked_after_restart = (
        ledger.acked_after(timeline.redis_back_clock)
        if timeline.redis_back_clock is not None
        else None
    )
    if acked_after_restart == 0:
        failures["no_acks_after_redis_restart"] = 1
    return {
        "scenario": {
            "seed": options.seed,
            "duration_seconds": options.duration,
            "subscribers": options.subscribers,
            "slow_subscribers": options.subscribers // SLOW_SHARE,
            "publishers": PUBLISHERS,
            "publish_rate_per_publisher": options.publish_rate,
            "broker": options.broker,
            "workers": options.workers,
            "redis": REDIS_SETUPS.get(options.broker),
            "redis_fault": options.redis_signal if options.restarts_redis else None,
            "publishers_retry_with_keys": options.keyed,
            "herald_env": HERALD_ENV,
        },
        "publish_attempts": ledger.answered + sum(tally.publish_failures.values()),
        "acked_publishes": ledger.answered,
        "failed_publishes": sum(tally.publish_failures.values()),
        "publish_failures": dict(tally.publish_failures.most_common()),
        "publish_cuts": tally.publish_cuts,
        "publish_retries": tally.publish_retries,
        "replayed_answers": tally.replayed_answers,
        "keys_gave_up": tally.keys_gave_up,
        "acked_after_redis_restart": acked_after_restart,
        "deliveries": verdict.deliveries,
        "stream_opens": tally.opens,
        "open_failures": sum(tally.open_failures.values()),
        "open_failure_reasons": dict(tally.open_failures.most_common()),
        "server_cuts": tally.server_cuts,
        "client_cuts": tally.client_cuts_fin + tally.client_cuts_rst,
        "client_cuts_fin": tally.client_cuts_fin,
        "client_cuts_rst": tally.client_cuts_rst,
        **_worker_figures(log, options.workers),
        "redis_restarts": timeline.redis_restarts,
        "redis_killed_during_worker_boot": timeline.redis_killed_during_boot,
        "redis_down_at_seconds": _round(timeline.redis_down_at),
        "redis_back_at_seconds": _round(timeline.redis_back_at),
        **timeline.extra,
        "master_exit_code": timeline.master_exit_code,
        "master_exited_at_seconds": _round(timeline.master_exited_at),
        "caught_up": timeline.caught_up,
        "quiet_seconds": round(timeline.quiet_seconds, 2),
        "wall_seconds": round(seconds, 1),
        **verdict.as_dict(),
        "failures": failures,
        "passed": not failures,
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def _per_channel(counts: dict[str, int]) -> str:
    return "  ".join(f"{channel.rpartition('/')[2]}:{n}" for channel, n in counts.items())


def format_report(summary: dict[str, Any]) -> str:
    scenario = summary["scenario"]
    redis = f", redis ({scenario['redis']})" if scenario["redis"] else ""
    rows: list[tuple[str, object, str]] = [
        ("acked publishes", summary["acked_publishes"], f"of {summary['publish_attempts']} tried"),
        ("failed tries", summary["failed_publishes"], _reasons(summary["publish_failures"])),
        (
            "retries with the key",
            summary["publish_retries"],
            f"{summary['publish_cuts']} cut by the publisher, {summary['replayed_answers']}"
            f" answered as replays, {summary['keys_gave_up']} given up",
        ),
        ("acked after Redis restart", summary["acked_after_redis_restart"], ""),
        ("deliveries", summary["deliveries"], ""),
        ("stream opens", summary["stream_opens"], ""),
        ("open failures", summary["open_failures"], _reasons(summary["open_failure_reasons"])),
        (
            "server-side cuts",
            summary["server_cuts"],
            f"server's reasons: {_reasons(summary['stream_close_reasons'])}",
        ),
        (
            "client cuts",
            summary["client_cuts"],
            f"FIN {summary['client_cuts_fin']}, RST {summary['client_cuts_rst']}",
        ),
        (
            "worker recycles",
            summary["worker_recycles"],
            f"exit codes {summary['worker_exit_codes']}, failed to boot "
            f"{summary['worker_failed_to_boot']}",
        ),
        (
            "Redis restarts",
            summary["redis_restarts"],
            f"down at {summary['redis_down_at_seconds']} s, back at "
            f"{summary['redis_back_at_seconds']} s"
            + (", killed as a worker booted" if summary["redis_killed_during_worker_boot"] else "")
            if summary["redis_restarts"]
            else "",
        ),
        (
            "gunicorn master",
            "exited" if summary["master_exit_code"] is not None else "running",
            f"code {summary['master_exit_code']} at {summary['master_exited_at_seconds']} s"
            if summary["master_exit_code"] is not None
            else "",
        ),
        (
            "quiet period",
            f"{summary['quiet_seconds']} s",
            "caught up" if summary["caught_up"] else "NOT caught up",
        ),
        (
            "delivered, never acked",
            summary["delivered_never_acked"],
            "in flight at a fault; not an error",
        ),
        ("lost", summary["lost"], _per_channel(summary["lost_per_channel"])),
        (
            "  of which before first id",
            summary["lost_before_first_id"],
            "owed since the first open",
        ),
        (
            "  of which ahead of cursor",
            summary["lost_ahead_of_cursor"],
            "not yet reached when the run ended; the rest were skipped",
        ),
        ("duplicated", summary["duplicated"], _per_channel(summary["duplicated_per_channel"])),
        ("published twice", summary["published_twice"], "one publish under two ids"),
        (
            "out of order",
            summary["out_of_order"],
            _per_channel(summary["out_of_order_per_channel"]),
        ),
        ("resets", summary["resets"], ""),
        (
            "misrouted / mismatched",
            f"{summary['misrouted']} / {summary['mismatched']}",
            f"id collisions {summary['id_collisions']}, bad ids {summary['bad_ids']}, "
            f"malformed {summary['malformed']}",
        ),
    ]
    lines = [
        f"chaos: seed {scenario['seed']}, {scenario['duration_seconds']:g} s, "
        f"{scenario['subscribers']} subscribers ({scenario['slow_subscribers']} slow), "
        f"{scenario['publishers']} publishers x {scenario['publish_rate_per_publisher']:g}/s, "
        f"gunicorn x{scenario['workers']}, broker {scenario['broker']}{redis}",
    ]
    lines += [f"  {name:<28}{value!s:>8}  {note}".rstrip() for name, value, note in rows]
    for kind, found in summary["examples"].items():
        for example in found:
            lines.append(f"  e.g. {kind}: {example}")
    verdict = "PASS" if summary["passed"] else f"FAIL {_reasons(summary['failures'])}"
    lines.append(f"verdict: {verdict} ({summary['wall_seconds']} s wall)")
    return "\n".join(lines)


def _reasons(counts: dict[str, int]) -> str:
    return ", ".join(f"{name} {count}" for name, count in counts.items())


@contextlib.contextmanager
def _terminate_as_exit() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so every ``finally`` stops the processes it started."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run(options: Options) -> dict[str, Any]:
    """Start Redis and gunicorn, run the scenario, stop everything; the summary."""
    token = secrets.token_urlsafe(24)
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        redis: RedisServer | RedisCluster | None = None
        broker_url = "memory://"
        if options.broker == "cluster":
            if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
                raise ChaosError("redis-server and redis-cli are not installed")
            redis = RedisCluster()
            stack.callback(redis.close)
            redis.start()
            broker_url = redis.url
        if options.broker == "redis":
            if shutil.which("redis-server") is None:
                raise ChaosError("redis-server is not installed (or use --broker memory)")
            redis = RedisServer(persistent=True)
            stack.callback(redis.close)
            redis.start()
            broker_url = redis.url
        env = {
            **HERALD_ENV,
            # A memory:// history dies with its worker: recycling would only measure that.
            **({"GUNICORN_MAX_REQUESTS": "0"} if options.broker == "memory" else {}),
            "WEB_CONCURRENCY": str(options.workers),
            "BROKER_URL": broker_url,
            "PUBLISH_TOKEN": token,
        }
        server = ServerProcess(env, argv=[*_gunicorn(), "app.main:app"])
        stack.callback(server.close)  # SIGTERM, then SIGKILL to the process group
        try:
            server.start()
        except RuntimeError as exc:
            raise ChaosError(str(exc)) from None
        limit = options.duration + options.quiet_timeout + SETUP_MARGIN_SECONDS
        ledger, tally, timeline = asyncio.run(
            asyncio.wait_for(_scenario(options, server, redis, token), limit)
        )
        log = server.logs()
        if options.keep_log:
            Path(options.keep_log).write_text(log)
    return _summary(options, ledger, tally, timeline, log, time.monotonic() - started)


def parse_args(argv: list[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(
        prog="python -m load_tests.chaos", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--duration", type=float, default=40.0, help="publishing seconds")
    parser.add_argument("--subscribers", type=int, default=24)
    parser.add_argument(
        "--publish-rate", type=float, default=40.0, help="events/s per publisher (4 of them)"
    )
    parser.add_argument("--no-redis-restart", action="store_true")
    parser.add_argument("--redis-signal", choices=("kill", "term"), default="kill")
    parser.add_argument("--redis-down", type=float, default=1.0, help="seconds Redis stays down")
    parser.add_argument(
        "--redis-timing",
        choices=("boot", "random"),
        default="boot",
        help="boot: from the chosen moment, wait (up to 8 s) for a worker to start up, then kill",
    )
    parser.add_argument(
        "--broker",
        choices=("redis", "memory", "cluster"),
        default="redis",
        help="memory: one worker, memory://, no Redis; cluster: a Redis Cluster, a master killed",
    )
    parser.add_argument(
        "--publish-once",
        action="store_true",
        help="publishers try each publish once, without an Idempotency-Key",
    )
    parser.add_argument("--quiet-timeout", type=float, default=20.0)
    parser.add_argument("--json", metavar="PATH", help="write the summary as JSON ('-': stdout)")
    parser.add_argument("--keep-log", metavar="PATH", help="copy gunicorn's log here")
    args = parser.parse_args(argv)
    if args.duration <= 0 or args.subscribers < 1 or args.publish_rate <= 0:
        parser.error("--duration, --subscribers and --publish-rate must be positive")
    return Options(
        seed=args.seed,
        duration=args.duration,
        subscribers=args.subscribers,
        publish_rate=args.publish_rate,
        redis_restart=not args.no_redis_restart,
        redis_signal=args.redis_signal,
        redis_down=args.redis_down,
        redis_timing=args.redis_timing,
        broker=args.broker,
        keyed=not args.publish_once,
        quiet_timeout=args.quiet_timeout,
        json_path=args.json,
        keep_log=args.keep_log,
    )


def main(argv: list[str] | None = None) -> int:
    options = parse_args(argv)
    try:
        with _terminate_as_exit():
            summary = run(options)
    except ChaosError as exc:
        print(f"chaos: {exc}", file=sys.stderr)
        return 2
    if options.json_path == "-":
        print(json.dumps(summary, indent=2))
    else:
        print(format_report(summary))
        if options.json_path:
            Path(options.json_path).write_text(json.dumps(summary, indent=2) + "\n")
    return 0 if summary["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
