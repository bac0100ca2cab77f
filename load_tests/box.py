"""The box test: render.yaml's deployment in a real memory cgroup, under hostile crowds at once.

Usage (from the repository root, as root: it makes a memory cgroup)::

    python -m load_tests.box                          # the default mix, 45 s of load
    python -m load_tests.box --mix storm --json box.json
    python -m load_tests.box --duration 20 --idle 3000 --stalled 400 --env SSE_QUEUE_SIZE=50

What it does, all on 127.0.0.1 and bounded in count and time:

* a ``redis-server`` outside the group (``tests/support/redis_server.py``);
* render.yaml's start command, ``gunicorn app.main:app``, with the web service's own
  ``envVars`` (``BROKER_URL`` = that Redis, generated ``ADMIN_TOKEN`` / ``PUBLISH_TOKEN``,
  ``TRUSTED_PROXIES`` plus 127.0.0.0/8 so each client's ``X-Forwarded-For`` counts, as
  behind the platform's proxy), its master moved into a new memory cgroup with
  ``--limit-mb`` (512) before it execs, so every worker is born inside
  (``box_cgroup.py``);
* at once, each crowd from its own processes (``box_clients.py``): the **idle crowd**
  (12,000 browsers on 100 channels, one event of 2 KB per channel per second), the
  **stalled crowd** (1,500 clients with a 4 KB receive buffer on one busy channel at
  200 events/s of 1 KB that read the opening frames, stall 5-15 s, drain, and resume
  after ``retry:`` with their last id when they find themselves cut), and per ``--mix``
  Mercure subscribers and response runs; from this process a **well-behaved client**
  reading numbered events (20/s) on its own channel, and a **/health probe** twice a
  second;
* samples the group every 0.2 s: working set (usage minus inactive file cache) plus
  socket memory, which is what a cgroup-v2 container is charged in one limit; the
  kernel's own peak; OOM kills; whether master and workers stay in the group;
* after the load, every client leaves and memory is read again ``--after`` s later.

It prints a report and each target as met or missed; exit status 0 only when all are
met, 1 when one is missed, 2 when the tool could not run (no writable memory cgroup,
no redis-server, a server that did not start).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import multiprocessing
import os
import queue
import random
import re
import secrets
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from multiprocessing.context import SpawnProcess
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped, unused-ignore]
import redis.asyncio as aioredis
import yaml  # type: ignore[import-untyped, unused-ignore]

from load_tests.box_cgroup import CgroupError, MemoryGroup, Reading
from load_tests.box_clients import (
    CrowdPlan,
    CrowdTally,
    EventSourceState,
    crowd_main,
)

# chaos.py's helpers: SIGTERM unwinds like Ctrl-C, and render.yaml's gunicorn from this venv.
from load_tests.chaos import _gunicorn, _terminate_as_exit
from load_tests.checkout import checkout
from load_tests.generator import raise_open_file_limit

# raw_http's head parser is private to it but exactly what a tried-once publish needs.
from tests.leak.raw_http import KeepAliveClient, _parse_head, open_sse
from tests.support.redis_server import REDIS_SERVER, RedisServer
from tests.support.server import REPO_ROOT, ServerProcess

__all__ = ["MIXES", "BoxError", "Options", "blueprint_env", "main", "parse_args", "run", "targets"]

MIB = 1024 * 1024
RENDER_YAML = REPO_ROOT / "render.yaml"
WEB_SERVICE = "herald"
LOOPBACK = "127.0.0.0/8"
SAMPLE_SECONDS = 0.2
MEMBERSHIP_SECONDS = 1.0
ADMIN_POLL_SECONDS = 2.0
HEALTH_EVERY_SECONDS = 0.5
HEALTH_DEADLINE_SECONDS = 3.0
IDLE_SETTLE_SECONDS = 3.0
STEADY_CHANNEL = "box/steady"
BUSY_CHANNEL = "box/busy"
IDLE_CHANNEL_PREFIX = "box/idle-"
PUBLISH_TICK_SECONDS = 0.1
BATCH_MAX_BYTES = 900_000
"""Under the default ``MAX_BATCH_BYTES`` (1 MiB) with room for the JSON around the events."""
BATCH_MAX_EVENTS = 1000
PUBLISH_TIMEOUT_SECONDS = 5.0
CATCH_UP_SECONDS = 10.0
CATCH_UP_POLL_SECONDS = 0.1
CROWD_REPORT_TIMEOUT_SECONDS = 20.0
CROWD_JOIN_SECONDS = 10.0
CROWD_READY_TIMEOUT_SECONDS = 60.0
LOST_EXAMPLES = 5
STEADY_ADDRESS = "203.0.113.10"
PUBLISHER_ADDRESSES = {"idle": "203.0.113.20", "busy": "203.0.113.21", "steady": "203.0.113.22"}
IDLE_TOLERANCE_BYTES = 100 * MIB
FED_TARGET = 0.9
SETUP_MARGIN_SECONDS = 120.0
_WORKER_SIGNALLED = re.compile(r"Worker \(pid:(\d+)\) was sent (\w+)!")
_WORKER_EXIT_CODE = re.compile(r"Worker \(pid:(\d+)\) exited with code (\d+)")
_WORKER_BOOTED = re.compile(r"Booting worker with pid: (\d+)")
_STREAM_CLOSED = re.compile(r"stream closed: reason=(\w+)")


class BoxError(RuntimeError):
    """The box could not be set up (not a finding about Herald)."""


@dataclass(frozen=True, slots=True)
class Options:
    mix: str = "default"
    duration: float = 45.0
    limit_mb: int = 512
    idle: int = 12_000
    idle_channels: int = 100
    idle_processes: int = 4
    idle_event_bytes: int = 2048
    stalled: int = 1500
    stalled_processes: int = 2
    busy_rate: float = 200.0
    busy_event_bytes: int = 1024
    stall_seconds: tuple[float, float] = (5.0, 15.0)
    steady_rate: float = 20.0
    mercure: int = 0
    responders: int = 0
    response_input_chars: int = 8000
    storm: str | None = None
    ramp: float = 10.0
    after: float = 20.0
    seed: int = 1
    crowd_nice: int = 10
    env: tuple[tuple[str, str], ...] = ()
    json_path: str | None = None
    keep_log: str | None = None
    before: str | None = None  # a commit to run the same mix against first


MIXES: dict[str, dict[str, Any]] = {
    "default": {},
    # One worker SIGTERMed halfway: its thousands of streams come back at once, with ids.
    "storm": {"storm": "term"},
    # The same through a gunicorn reload: every worker replaced at once.
    "reload": {"storm": "hup"},
    # 64 KB events at 5/s: more bytes per second per reader than the default mix, in events
    # each larger than a socket's send buffer. (At 50/s the fan-out outruns two cores
    # before it troubles memory: docs/performance.md, "Box".)
    "big-events": {"busy_event_bytes": 64_000, "busy_rate": 5.0},
    "responses": {"responders": 300},
    "mercure": {"mercure": 2000},
    "all": {"storm": "term", "responders": 300, "mercure": 2000},
}


def blueprint_env(
    render_yaml: Path, broker_url: str, *, admin_token: str, publish_token: str
) -> dict[str, str]:
    """The web service's ``envVars`` from render.yaml, as the platform would set them here."""
    blueprint = yaml.safe_load(render_yaml.read_text())
    service = next(s for s in blueprint["services"] if s.get("name") == WEB_SERVICE)
    env: dict[str, str] = {}
    for variable in service.get("envVars", []):
        key = variable["key"]
        if "value" in variable:
            env[key] = str(variable["value"])
        elif "fromService" in variable:
            env[key] = broker_url  # the blueprint's only service reference is its Key Value
        elif variable.get("generateValue"):
            env[key] = {"ADMIN_TOKEN": admin_token, "PUBLISH_TOKEN": publish_token}.get(
                key, secrets.token_urlsafe(24)
            )
    proxies = [p for p in env.get("TRUSTED_PROXIES", "").split(",") if p]
    env["TRUSTED_PROXIES"] = ",".join([*proxies, LOOPBACK])
    return env


# ---------------------------------------------------------------- what this process measures


@dataclass(slots=True)
class MemoryFigures:
    """The group's readings over the run."""

    samples: int = 0
    peak_working_set: int = 0
    peak_sockets: int = 0
    peak_total: int = 0
    peak_total_at: float = 0.0
    kernel_peak: int = 0
    oom_kills: int = 0
    idle: Reading | None = None
    end: Reading | None = None
    after: Reading | None = None
    escaped: set[int] = field(default_factory=set)
    membership_checks: int = 0
    workers_seen: set[int] = field(default_factory=set)
    worker_rss_peak: dict[int, int] = field(default_factory=dict)
    master_exited: bool = False


class Sampler:
    """Reads the group every ``SAMPLE_SECONDS`` and checks membership every second."""

    def __init__(self, group: MemoryGroup, master_pid: int, began: float) -> None:
        self.group = group
        self.master = psutil.Process(master_pid)
        self.began = began
        self.figures = MemoryFigures()
        self.last: Reading = group.read()

    def read(self) -> Reading:
        reading = self.group.read()
        figures = self.figures
        figures.samples += 1
        figures.peak_working_set = max(figures.peak_working_set, reading.working_set)
        figures.peak_sockets = max(figures.peak_sockets, reading.sockets)
        if reading.total > figures.peak_total:
            figures.peak_total = reading.total
            figures.peak_total_at = time.monotonic() - self.began
        figures.kernel_peak = max(figures.kernel_peak, reading.kernel_peak)
        figures.oom_kills = self.group.oom_kills(reading)
        self.last = reading
        return reading

    def check_membership(self) -> None:
        figures = self.figures
        try:
            workers = self.master.children()
        except psutil.NoSuchProcess:
            figures.master_exited = True
            return
        inside = self.group.pids()
        figures.membership_checks += 1
        figures.workers_seen.update(worker.pid for worker in workers)
        for process in [self.master, *workers]:
            if process.pid not in inside and _alive(process):
                figures.escaped.add(process.pid)
            with contextlib.suppress(psutil.Error):
                rss = process.memory_info().rss
                figures.worker_rss_peak[process.pid] = max(
                    figures.worker_rss_peak.get(process.pid, 0), rss
                )

    async def run(self) -> None:
        next_membership = 0.0
        while True:
            self.read()
            if time.monotonic() >= next_membership:
                await asyncio.to_thread(self.check_membership)
                next_membership = time.monotonic() + MEMBERSHIP_SECONDS
            await asyncio.sleep(SAMPLE_SECONDS)

    def workers(self) -> list[int]:
        with contextlib.suppress(psutil.NoSuchProcess):
            return [child.pid for child in self.master.children()]
        return []


def _alive(process: psutil.Process) -> bool:
    """Running and not a zombie: a worker that has exited leaves its group's ``cgroup.procs``
    at once, before its master reaps it."""
    with contextlib.suppress(psutil.Error):
        return bool(process.is_running() and process.status() != psutil.STATUS_ZOMBIE)
    return False


@dataclass(slots=True)
class HealthFigures:
    probes: int = 0
    answered_in_time: int = 0
    worst_seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    statuses: Counter[str] = field(default_factory=Counter)


async def probe_health(host: str, port: int, figures: HealthFigures) -> None:
    """GET /health twice a second, each on a fresh connection as a platform's checker does;
    a slow answer does not delay the next probe (at most a deadline's worth are in flight)."""

    async def probe() -> None:
        started = time.monotonic()
        client = KeepAliveClient(host, port)
        try:
            response = await client.request("GET", "/health", timeout=HEALTH_DEADLINE_SECONDS)
            status = f"HTTP {response.status}"
        except (OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
            status = type(exc).__name__
        finally:
            await client.aclose()
        took = time.monotonic() - started
        figures.statuses[status] += 1
        figures.latencies.append(took)
        figures.worst_seconds = max(figures.worst_seconds, took)
        if status == "HTTP 200" and took <= HEALTH_DEADLINE_SECONDS:
            figures.answered_in_time += 1

    loop = asyncio.get_running_loop()
    in_flight: set[asyncio.Task[None]] = set()
    next_at = loop.time()
    try:
        while True:
            figures.probes += 1
            task = asyncio.create_task(probe())
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
            next_at += HEALTH_EVERY_SECONDS
            await asyncio.sleep(max(0.0, next_at - loop.time()))
    finally:
        # Probes under way finish (each is bounded by the deadline): the last ones count too.
        await asyncio.gather(*in_flight, return_exceptions=True)


async def watch_redis(url: str, figures: AdminFigures) -> None:
    """Redis's own count of clients: how many connections the workers hold to the backplane."""
    client = aioredis.from_url(url, socket_timeout=2.0)
    try:
        while True:
            with contextlib.suppress(aioredis.RedisError, OSError):
                clients = await client.info("clients")
                stats = await client.info("stats")
                figures.redis_max_clients = max(
                    figures.redis_max_clients, int(clients.get("connected_clients", 0))
                )
                figures.redis_rejected = int(stats.get("rejected_connections", 0))
            await asyncio.sleep(ADMIN_POLL_SECONDS)
    finally:
        await client.aclose()


@dataclass(slots=True)
class AdminFigures:
    """What the server says about itself (``/api/admin/metrics``), peaks over the run."""

    polls: int = 0
    failures: Counter[str] = field(default_factory=Counter)
    max_connections: int = 0
    max_worker_connections: dict[str, int] = field(default_factory=dict)
    max_worker_rss: dict[str, int] = field(default_factory=dict)
    max_socket_bytes: int = 0
    levels_seen: Counter[str] = field(default_factory=Counter)
    refused: dict[str, int] = field(default_factory=dict)
    max_queued_bytes: int = 0
    overflow_disconnects: int = 0
    redis_max_clients: int = 0
    redis_rejected: int = 0
    last: dict[str, Any] = field(default_factory=dict)


async def poll_admin(host: str, port: int, token: str, figures: AdminFigures) -> None:
    client = KeepAliveClient(host, port, {"Authorization": f"Bearer {token}"})
    try:
        while True:
            try:
                response = await client.request("GET", "/api/admin/metrics", timeout=5.0)
                if response.status != 200:
                    raise ValueError(f"HTTP {response.status}")
                _admin_reading(response.json(), figures)
            except (OSError, TimeoutError, ValueError, asyncio.IncompleteReadError) as exc:
                figures.failures[
                    str(exc) if isinstance(exc, ValueError) else type(exc).__name__
                ] += 1
                await client.aclose()
            await asyncio.sleep(ADMIN_POLL_SECONDS)
    finally:
        await client.aclose()


def _admin_reading(document: dict[str, Any], figures: AdminFigures) -> None:
    figures.polls += 1
    figures.last = document
    memory = document.get("memory", {})
    sse = document.get("sse", {})
    figures.max_queued_bytes = max(figures.max_queued_bytes, int(sse.get("queued_bytes", 0)))
    figures.max_socket_bytes = max(figures.max_socket_bytes, int(memory.get("socket_bytes", 0)))
    total = document.get("total", {})
    figures.max_connections = max(figures.max_connections, int(total.get("connections", 0)))
    figures.overflow_disconnects = max(
        figures.overflow_disconnects, int(total.get("overflow_disconnects", 0))
    )
    worker = str(document.get("worker", "?"))
    figures.refused[worker] = max(figures.refused.get(worker, 0), int(memory.get("refused", 0)))
    for entry in document.get("workers", []):
        name = str(entry.get("worker", "?"))
        figures.levels_seen[str(entry.get("level", "?"))] += 1
        figures.max_worker_connections[name] = max(
            figures.max_worker_connections.get(name, 0), int(entry.get("connections", 0))
        )
        figures.max_worker_rss[name] = max(
            figures.max_worker_rss.get(name, 0), int(entry.get("rss_bytes", 0))
        )


# ---------------------------------------------------------------- publishers and the steady client


@dataclass(slots=True)
class PublishFigures:
    requests: Counter[str] = field(default_factory=Counter)
    events: Counter[str] = field(default_factory=Counter)
    failures: Counter[str] = field(default_factory=Counter)


def batches(items: list[dict[str, Any]], size_of_each: int) -> Iterator[list[dict[str, Any]]]:
    """Split a batch publish into requests within the batch limits."""
    per_request = max(1, min(BATCH_MAX_EVENTS, BATCH_MAX_BYTES // max(1, size_of_each + 64)))
    for start in range(0, len(items), per_request):
        yield items[start : start + per_request]


async def publish_batches(
    client: KeepAliveClient,
    name: str,
    make: Any,
    every: float,
    figures: PublishFigures,
    size_of_each: int,
) -> None:
    """Every ``every`` s, publish what ``make()`` returns as ``POST /events`` batches."""
    loop = asyncio.get_running_loop()
    next_at = loop.time()
    while True:
        for chunk in batches(make(), size_of_each):
            try:
                response = await client.post_json("/events", chunk)
                figures.requests[name] += 1
                if response.status == 202:
                    figures.events[name] += len(chunk)
                else:
                    figures.failures[f"{name} HTTP {response.status}"] += 1
            except (OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
                figures.failures[f"{name} {type(exc).__name__}"] += 1
                await client.aclose()
        next_at = max(next_at + every, loop.time() - every)
        await asyncio.sleep(max(0.0, next_at - loop.time()))


@dataclass(slots=True)
class SteadyFigures:
    """The well-behaved client's ledger: numbers acknowledged, numbers received."""

    acked: set[int] = field(default_factory=set)
    received: Counter[int] = field(default_factory=Counter)
    out_of_order: int = 0
    highest: int = 0
    refused: int = 0
    refusals: Counter[str] = field(default_factory=Counter)
    opens: int = 0
    cuts: int = 0
    resets: int = 0
    network_errors: Counter[str] = field(default_factory=Counter)
    publish_failures: Counter[str] = field(default_factory=Counter)
    positioned: asyncio.Event = field(default_factory=asyncio.Event)
    """Set once the client's first stream named its position: what is published after it is
    owed to the client."""

    def receive(self, number: int) -> None:
        if number not in self.received and number < self.highest:
            self.out_of_order += 1
        self.received[number] += 1
        self.highest = max(self.highest, number)

    @property
    def lost(self) -> int:
        return len(self.acked - set(self.received))

    @property
    def duplicated(self) -> int:
        return sum(count - 1 for count in self.received.values())

    def caught_up(self) -> bool:
        return self.acked <= set(self.received)


async def steady_client(host: str, port: int, figures: SteadyFigures) -> None:
    """Reads everything on its channel and resumes with ``Last-Event-ID`` on any cut. A refusal
    (fatal for an ``EventSource``) is counted, and the page makes a new one, as apps do."""
    state = EventSourceState()
    rng = random.Random(7)
    while True:
        state.stopped, state.fatal_reason = False, None
        try:
            async with asyncio.timeout(15.0):
                sse = await open_sse(
                    host,
                    port,
                    f"/events/{STEADY_CHANNEL}",
                    last_event_id=state.last_event_id or None,
                    headers={"X-Forwarded-For": STEADY_ADDRESS},
                    source_address="127.9.0.1",
                )
        except (OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
            figures.network_errors[type(exc).__name__] += 1
            await asyncio.sleep(state.reconnect_delay(rng))
            continue
        if not state.on_response(sse.status, sse.headers.get("content-type", ""), time.monotonic()):
            figures.refused += 1
            figures.refusals[state.fatal_reason or "?"] += 1
            sse.reset()
            await asyncio.sleep(state.reconnect_delay(rng))
            continue
        figures.opens += 1
        try:
            while True:
                try:
                    chunk = await sse.reader.read(65536)
                except OSError:
                    break
                if not chunk:
                    break
                messages = state.feed(sse.body.feed(chunk), time.monotonic())
                if state.positioned:
                    figures.positioned.set()
                for message in messages:
                    if message.event == "reset":
                        figures.resets += 1
                        continue
                    with contextlib.suppress(ValueError, KeyError, TypeError):
                        figures.receive(int(json.loads(message.data)["n"]))
                if sse.body.finished:
                    break
        finally:
            sse.writer.transport.abort()
        state.on_end(time.monotonic())
        figures.cuts += 1
        await asyncio.sleep(state.reconnect_delay(rng))


async def steady_publisher(
    host: str, port: int, token: str, rate: float, figures: SteadyFigures
) -> None:
    """Numbered events at ``rate``/s, each tried once (a retried publish could be delivered
    twice and would show as a duplicate that is the tool's, not the server's)."""
    await figures.positioned.wait()
    loop = asyncio.get_running_loop()
    interval = 1 / rate
    next_at = loop.time()
    number = 0
    reader: asyncio.StreamReader | None = None
    writer: asyncio.StreamWriter | None = None
    try:
        while True:
            number += 1
            body = json.dumps({"data": {"n": number}}).encode()
            request = (
                f"POST /events/{STEADY_CHANNEL} HTTP/1.1\r\nHost: {host}:{port}\r\n"
                f"Authorization: Bearer {token}\r\n"
                f"X-Forwarded-For: {PUBLISHER_ADDRESSES['steady']}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
            ).encode() + body
            try:
                async with asyncio.timeout(PUBLISH_TIMEOUT_SECONDS):
                    if writer is None or reader is None or reader.at_eof():
                        if writer is not None:
                            writer.transport.abort()
                        reader, writer = await asyncio.open_connection(host, port)
                    writer.write(request)
                    head = await reader.readuntil(b"\r\n\r\n")
                    status, headers = _parse_head(head[:-4])
                    await reader.readexactly(int(headers.get("content-length", "0")))
                if status == 202:
                    figures.acked.add(number)
                else:
                    figures.publish_failures[f"HTTP {status}"] += 1
            except (OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
                figures.publish_failures[type(exc).__name__] += 1
                if writer is not None:
                    writer.transport.abort()
                reader = writer = None
            next_at = max(next_at + interval, loop.time() - 1.0)
            await asyncio.sleep(max(0.0, next_at - loop.time()))
    finally:
        if writer is not None:
            writer.transport.abort()


# ---------------------------------------------------------------- crowds


@dataclass(slots=True)
class Crowds:
    processes: list[SpawnProcess]
    go: Any  # multiprocessing.Event
    stop: Any  # multiprocessing.Event
    results: Any  # multiprocessing.Queue
    progress: dict[tuple[str, int], dict[str, Any]] = field(default_factory=dict)
    final: dict[tuple[str, int], dict[str, Any]] = field(default_factory=dict)
    closed: set[tuple[str, int]] = field(default_factory=set)
    ready: set[tuple[str, int]] = field(default_factory=set)

    def drain(self) -> None:
        while True:
            try:
                kind, key, document = self.results.get_nowait()
            except queue.Empty:
                return
            key = tuple(key)
            {"progress": self.progress, "final": self.final}.get(kind, {})[key] = document
            if kind == "closed":
                self.closed.add(key)
            if kind == "ready":
                self.ready.add(key)

    def tally(self, kind: str, which: str = "final") -> CrowdTally:
        source = self.final if which == "final" else self.progress
        return CrowdTally.merged([doc for key, doc in source.items() if key[0] == kind])


def plans(options: Options, port: int) -> list[CrowdPlan]:
    """Every crowd process's share."""
    idle_channels = tuple(f"{IDLE_CHANNEL_PREFIX}{i}" for i in range(options.idle_channels))
    crowds = [
        ("idle", 0, options.idle, options.idle_processes, idle_channels),
        ("stalled", 1, options.stalled, options.stalled_processes, (BUSY_CHANNEL,)),
        ("mercure", 2, options.mercure, 1, idle_channels),
        ("responses", 3, options.responders, 1, ("-",)),
    ]
    found: list[CrowdPlan] = []
    for kind, crowd_index, total, processes, channels in crowds:
        if total <= 0:
            continue
        share, rest = divmod(total, processes)
        first = 0
        for process in range(processes):
            count = share + (process < rest)
            found.append(
                CrowdPlan(
                    kind=kind,
                    crowd_index=crowd_index,
                    process_index=process,
                    first=first,
                    count=count,
                    host="127.0.0.1",
                    port=port,
                    channels=channels,
                    ramp_seconds=options.ramp,
                    seed=options.seed,
                    stall_seconds=options.stall_seconds,
                    nice=options.crowd_nice,
                    response_input_chars=options.response_input_chars,
                )
            )
            first += count
    return found


def start_crowds(options: Options, port: int) -> Crowds:
    context = multiprocessing.get_context("spawn")
    go, stop = context.Event(), context.Event()
    results = context.Queue()
    processes = [
        context.Process(target=crowd_main, args=(plan, go, stop, results), daemon=True)
        for plan in plans(options, port)
    ]
    crowds = Crowds(processes, go, stop, results)
    for process in processes:
        process.start()
    return crowds


async def crowds_ready(crowds: Crowds) -> None:
    """Wait (bounded) until every crowd process has made its browsers; then let them go."""
    deadline = time.monotonic() + CROWD_READY_TIMEOUT_SECONDS
    while len(crowds.ready) < len(crowds.processes):
        if time.monotonic() > deadline or not all(p.is_alive() for p in crowds.processes):
            raise BoxError("a crowd process did not start")
        crowds.drain()
        await asyncio.sleep(0.1)
    crowds.go.set()


async def stop_crowds(crowds: Crowds) -> None:
    """Tell every crowd to stop; wait (bounded) for the tally at the stop and for every client
    to be closed; kill what is left."""
    crowds.stop.set()
    deadline = time.monotonic() + CROWD_REPORT_TIMEOUT_SECONDS
    expected = len(crowds.processes)
    while time.monotonic() < deadline and len(crowds.closed) < expected:
        crowds.drain()
        await asyncio.sleep(0.1)
    for process in crowds.processes:
        await asyncio.to_thread(process.join, CROWD_JOIN_SECONDS)
        if process.is_alive():
            process.kill()
            await asyncio.to_thread(process.join, CROWD_JOIN_SECONDS)
    crowds.drain()


# ---------------------------------------------------------------- the run


@dataclass(slots=True)
class Run:
    options: Options
    env: dict[str, str]
    memory: MemoryFigures = field(default_factory=MemoryFigures)
    health: HealthFigures = field(default_factory=HealthFigures)
    admin: AdminFigures = field(default_factory=AdminFigures)
    publishing: PublishFigures = field(default_factory=PublishFigures)
    steady: SteadyFigures = field(default_factory=SteadyFigures)
    crowds: dict[str, dict[str, Any]] = field(default_factory=dict)
    signalled: set[int] = field(default_factory=set)
    storm_at: float | None = None
    caught_up: bool = False
    log: str = ""
    wall_seconds: float = 0.0
    started_at: str = ""
    load_average: tuple[float, float, float] = (0.0, 0.0, 0.0)
    cgroup_version: int = 0


async def _storm(options: Options, sampler: Sampler, admin: AdminFigures, run: Run) -> None:
    await asyncio.sleep(options.duration / 2)
    run.storm_at = time.monotonic() - sampler.began
    workers = sampler.workers()
    if options.storm == "hup":
        run.signalled.update(workers)
        os.kill(sampler.master.pid, signal.SIGHUP)
        return
    if not workers:
        return
    # The worker holding most streams, by the admin API's last word (else the first).
    by_pid = {
        int(str(name).rpartition(":")[2]): count
        for name, count in admin.max_worker_connections.items()
        if str(name).rpartition(":")[2].isdigit()
    }
    victim = max(workers, key=lambda pid: by_pid.get(pid, 0))
    run.signalled.add(victim)
    with contextlib.suppress(ProcessLookupError):
        os.kill(victim, signal.SIGTERM)


async def _drive(run: Run, server: ServerProcess, group: MemoryGroup, token: str) -> None:
    options = run.options
    host, port = "127.0.0.1", server.port
    assert server.process is not None
    began = time.monotonic()
    sampler = Sampler(group, server.process.pid, began)
    run.memory = sampler.figures
    background = [asyncio.create_task(sampler.run())]
    try:
        # Idle: the median of a few seconds' samples, before any client or publisher.
        idle: list[Reading] = []
        while time.monotonic() - began < IDLE_SETTLE_SECONDS:
            idle.append(sampler.last)
            await asyncio.sleep(SAMPLE_SECONDS)
        run.memory.idle = sorted(idle, key=lambda r: r.total)[len(idle) // 2]
        _say(f"idle: {_mib(run.memory.idle.total)} (working set + sockets); load begins")

        crowds = start_crowds(options, port)
        await crowds_ready(crowds)
        idle_client = KeepAliveClient(
            host,
            port,
            {"Authorization": f"Bearer {token}", "X-Forwarded-For": PUBLISHER_ADDRESSES["idle"]},
        )
        busy_client = KeepAliveClient(
            host,
            port,
            {"Authorization": f"Bearer {token}", "X-Forwarded-For": PUBLISHER_ADDRESSES["busy"]},
        )
        idle_data = "i" * options.idle_event_bytes
        busy_data = "b" * options.busy_event_bytes
        busy_due = [0.0]

        def idle_items() -> list[dict[str, Any]]:
            return [
                {"channel": f"{IDLE_CHANNEL_PREFIX}{i}", "data": idle_data}
                for i in range(options.idle_channels)
            ]

        def busy_items() -> list[dict[str, Any]]:
            busy_due[0] += options.busy_rate * PUBLISH_TICK_SECONDS
            count, busy_due[0] = int(busy_due[0]), busy_due[0] - int(busy_due[0])
            return [{"channel": BUSY_CHANNEL, "data": busy_data} for _ in range(count)]

        load = [
            asyncio.create_task(probe_health(host, port, run.health)),
            asyncio.create_task(poll_admin(host, port, run.env["ADMIN_TOKEN"], run.admin)),
            asyncio.create_task(steady_client(host, port, run.steady)),
            asyncio.create_task(watch_redis(run.env["BROKER_URL"], run.admin)),
        ]
        publishers = [
            asyncio.create_task(
                publish_batches(
                    idle_client, "idle", idle_items, 1.0, run.publishing, options.idle_event_bytes
                )
            ),
            asyncio.create_task(
                publish_batches(
                    busy_client,
                    "busy",
                    busy_items,
                    PUBLISH_TICK_SECONDS,
                    run.publishing,
                    options.busy_event_bytes,
                )
            ),
            asyncio.create_task(
                steady_publisher(host, port, token, options.steady_rate, run.steady)
            ),
        ]
        if options.storm:
            load.append(asyncio.create_task(_storm(options, sampler, run.admin, run)))
        try:
            load_began = time.monotonic()
            while time.monotonic() - load_began < options.duration:
                await asyncio.sleep(1.0)
                crowds.drain()
                _progress(crowds, sampler, time.monotonic() - load_began)
            # The end of the load: what the crowds held and memory at this moment.
            run.memory.end = sampler.read()
            for task in publishers:
                task.cancel()
            await asyncio.gather(*publishers, return_exceptions=True)
            await stop_crowds(crowds)
            for kind in ("idle", "stalled", "mercure", "responses"):
                if any(key[0] == kind for key in crowds.final):
                    run.crowds[kind] = crowds.tally(kind).as_dict()
            caught_up_by = time.monotonic() + CATCH_UP_SECONDS
            # Polled: the ledger is plain counters filled by the reading task, with no event.
            while time.monotonic() < caught_up_by and not run.steady.caught_up():  # noqa: ASYNC110
                await asyncio.sleep(CATCH_UP_POLL_SECONDS)
            run.caught_up = run.steady.caught_up()
        finally:
            for task in [*load, *publishers]:
                task.cancel()
            await asyncio.gather(*load, *publishers, return_exceptions=True)
            await idle_client.aclose()
            await busy_client.aclose()
            crowds.stop.set()
            for process in crowds.processes:
                if process.is_alive():
                    process.kill()
        _say(f"crowd gone; waiting {options.after:g} s")
        await asyncio.sleep(options.after)  # the sampler keeps reading meanwhile
        run.memory.after = sampler.read()
        sampler.check_membership()
    finally:
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)


def _progress(crowds: Crowds, sampler: Sampler, elapsed: float) -> None:
    parts = []
    for kind in ("idle", "stalled", "mercure", "responses"):
        if any(key[0] == kind for key in crowds.progress):
            tally = crowds.tally(kind, "progress")
            parts.append(f"{kind} {tally.open_now}/{tally.browsers} open")
    reading = sampler.last
    _say(
        f"{elapsed:5.1f} s  {'  '.join(parts)}  ws {_mib(reading.working_set)} + sockets "
        f"{_mib(reading.sockets)}  oom kills {sampler.figures.oom_kills}"
    )


def _say(text: str) -> None:
    print(f"[box] {text}", file=sys.stderr, flush=True)


def _mib(value: int | float) -> str:
    return f"{value / MIB:.1f} MiB"


def run(options: Options, *, serve_from: Path = REPO_ROOT) -> dict[str, Any]:
    """Set the box up, drive the crowds, take everything down; the figures. ``serve_from``:
    the checkout whose code (and gunicorn.conf.py) serves, with this checkout's blueprint."""
    if REDIS_SERVER is None:
        raise BoxError("redis-server is not installed")
    raise_open_file_limit()
    started = time.monotonic()
    admin_token, publish_token = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    load_average = os.getloadavg()
    with contextlib.ExitStack() as stack:
        redis = RedisServer()
        stack.callback(redis.close)
        redis.start()
        env = {
            **blueprint_env(
                RENDER_YAML, redis.url, admin_token=admin_token, publish_token=publish_token
            ),
            **dict(options.env),
        }
        try:
            group = MemoryGroup(f"herald-box-{os.getpid()}", options.limit_mb * MIB)
        except CgroupError as exc:
            raise BoxError(str(exc)) from None
        stack.callback(group.remove)
        server = ServerProcess(
            env, argv=[*_gunicorn(), "app.main:app"], preexec_fn=group.join_self, cwd=serve_from
        )
        stack.callback(server.close)
        try:
            server.start()
        except RuntimeError as exc:
            raise BoxError(str(exc)) from None
        outcome = Run(options=options, env=env, load_average=load_average)
        outcome.started_at = datetime.datetime.now().isoformat(timespec="seconds")
        outcome.cgroup_version = group.version
        limit = options.duration + options.after + SETUP_MARGIN_SECONDS
        asyncio.run(asyncio.wait_for(_drive(outcome, server, group, publish_token), limit))
        outcome.log = server.logs()
        if options.keep_log:
            Path(options.keep_log).write_text(outcome.log)
    outcome.wall_seconds = time.monotonic() - started
    return summary(outcome)


# ---------------------------------------------------------------- figures and targets


def worker_deaths(log: str, signalled: set[int]) -> dict[str, Any]:
    """Workers that died other than by a graceful exit the tool did not ask for."""
    deaths: Counter[str] = Counter()
    for pid, name in _WORKER_SIGNALLED.findall(log):
        if name != "SIGTERM" and int(pid) not in signalled:
            deaths[name] += 1
    for pid, code in _WORKER_EXIT_CODE.findall(log):
        if int(pid) not in signalled:
            deaths[f"exit {code}"] += 1
    return {
        "worker_deaths": sum(deaths.values()),
        "worker_death_causes": dict(deaths),
        "workers_booted": len(set(_WORKER_BOOTED.findall(log))),
        "stream_close_reasons": dict(Counter(_STREAM_CLOSED.findall(log)).most_common()),
    }


def _reading(reading: Reading | None) -> dict[str, int] | None:
    if reading is None:
        return None
    return {
        "working_set_bytes": reading.working_set,
        "socket_bytes": reading.sockets,
        "total_bytes": reading.total,
    }


def summary(run: Run) -> dict[str, Any]:
    options, memory, health, steady = run.options, run.memory, run.health, run.steady
    latencies = sorted(health.latencies)
    figures: dict[str, Any] = {
        "started_at": run.started_at,
        "load_average": list(run.load_average),
        "mix": options.mix,
        "options": {
            **{
                k: v for k, v in vars_of(options).items() if k not in ("env", "json_path", "before")
            },
            "env_overrides": dict(options.env),
        },
        "cgroup_version": run.cgroup_version,
        "limit_bytes": options.limit_mb * MIB,
        "crowds": run.crowds,
        "memory": {
            "samples": memory.samples,
            "peak_working_set_bytes": memory.peak_working_set,
            "peak_socket_bytes": memory.peak_sockets,
            "peak_total_bytes": memory.peak_total,
            "peak_total_at_seconds": round(memory.peak_total_at, 1),
            "kernel_peak_bytes": memory.kernel_peak,
            "idle": _reading(memory.idle),
            "end": _reading(memory.end),
            "after": _reading(memory.after),
            "after_minus_idle_bytes": (
                memory.after.total - memory.idle.total
                if memory.after is not None and memory.idle is not None
                else None
            ),
            "worker_rss_peak_bytes": {str(k): v for k, v in memory.worker_rss_peak.items()},
        },
        "oom_kills": memory.oom_kills,
        **worker_deaths(run.log, run.signalled),
        "workers_signalled": sorted(run.signalled),
        "storm_at_seconds": None if run.storm_at is None else round(run.storm_at, 1),
        "master_exited": memory.master_exited,
        "escaped_pids": sorted(memory.escaped),
        "membership_checks": memory.membership_checks,
        "stayed_in_group": not memory.escaped
        and not memory.master_exited
        and memory.membership_checks > 0,
        "health": {
            "probes": health.probes,
            "answered_in_time": health.answered_in_time,
            "worst_seconds": round(health.worst_seconds, 3),
            "p50_seconds": round(latencies[len(latencies) // 2], 3) if latencies else None,
            "p99_seconds": round(latencies[int(len(latencies) * 0.99)], 3) if latencies else None,
            "statuses": dict(health.statuses),
        },
        "steady": {
            "acked": len(steady.acked),
            "received": len(steady.received),
            "lost": steady.lost,
            "lost_examples": sorted(steady.acked - set(steady.received))[:LOST_EXAMPLES],
            "duplicated": steady.duplicated,
            "out_of_order": steady.out_of_order,
            "refused": steady.refused,
            "refusals": dict(steady.refusals),
            "resets": steady.resets,
            "opens": steady.opens,
            "cuts": steady.cuts,
            "network_errors": dict(steady.network_errors),
            "publish_failures": dict(steady.publish_failures),
            "caught_up": run.caught_up,
        },
        "publishing": {
            "requests": dict(run.publishing.requests),
            "events": dict(run.publishing.events),
            "failures": dict(run.publishing.failures),
        },
        "server": {
            "admin_polls": run.admin.polls,
            "admin_failures": dict(run.admin.failures),
            "max_connections": run.admin.max_connections,
            "max_worker_connections": run.admin.max_worker_connections,
            "max_worker_rss_bytes": run.admin.max_worker_rss,
            "max_socket_bytes": run.admin.max_socket_bytes,
            "max_queued_bytes": run.admin.max_queued_bytes,
            "overflow_disconnects": run.admin.overflow_disconnects,
            "redis_max_clients": run.admin.redis_max_clients,
            "redis_rejected_connections": run.admin.redis_rejected,
            "levels_seen": dict(run.admin.levels_seen),
            "refused": run.admin.refused,
        },
        "wall_seconds": round(run.wall_seconds, 1),
    }
    figures["targets"] = targets(figures)
    figures["passed"] = all(target["met"] for target in figures["targets"])
    return figures


def vars_of(options: Options) -> dict[str, Any]:
    return {name: getattr(options, name) for name in options.__dataclass_fields__}


def targets(figures: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target, met or missed, with the figure that decides it."""
    memory = figures["memory"]
    idle = figures["crowds"].get("idle")
    steady = figures["steady"]
    health = figures["health"]
    fed = idle["fed_now"] / idle["browsers"] if idle and idle["browsers"] else None
    after = memory["after_minus_idle_bytes"]
    found = [
        (
            "no OOM kill, no worker death; master and workers stayed in the group",
            figures["oom_kills"] == 0
            and figures["worker_deaths"] == 0
            and figures["stayed_in_group"],
            f"OOM kills {figures['oom_kills']}, worker deaths {figures['worker_deaths']}, "
            f"stayed in group: {'yes' if figures['stayed_in_group'] else 'NO'}",
        ),
        (
            "peak working set + socket memory within the limit",
            memory["peak_total_bytes"] <= figures["limit_bytes"],
            f"{_mib(memory['peak_total_bytes'])} of {_mib(figures['limit_bytes'])}",
        ),
        (
            f"at least {FED_TARGET:.0%} of the idle crowd open and fed when the load stops",
            fed is None or fed >= FED_TARGET,
            "no idle crowd"
            if idle is None
            else f"{idle['fed_now']:,} of {idle['browsers']:,} ({(fed or 0):.1%})",
        ),
        (
            "well-behaved client exact and never refused",
            steady["lost"] == 0
            and steady["duplicated"] == 0
            and steady["out_of_order"] == 0
            and steady["refused"] == 0
            and steady["acked"] > 0,
            f"lost {steady['lost']}, duplicated {steady['duplicated']}, out of order "
            f"{steady['out_of_order']}, refused {steady['refused']} ({steady['acked']} acked)",
        ),
        (
            f"every /health answered within {HEALTH_DEADLINE_SECONDS:g} s",
            health["probes"] > 0 and health["answered_in_time"] == health["probes"],
            f"{health['answered_in_time']} of {health['probes']}, "
            f"worst {health['worst_seconds']} s",
        ),
        (
            f"memory within {_mib(IDLE_TOLERANCE_BYTES)} of idle after the crowd left",
            after is not None and after <= IDLE_TOLERANCE_BYTES,
            "not measured" if after is None else f"{after / MIB:+.1f} MiB",
        ),
    ]
    return [{"name": name, "met": bool(met), "figure": figure} for name, met, figure in found]


def format_report(figures: dict[str, Any]) -> str:
    options = figures["options"]
    memory = figures["memory"]
    lines = [
        f"box test: mix {figures['mix']}, {options['duration']:g} s of load, limit "
        f"{_mib(figures['limit_bytes'])} (cgroup v{figures['cgroup_version']}), started "
        f"{figures['started_at']}, load average "
        + " ".join(f"{x:.2f}" for x in figures["load_average"]),
    ]
    if options["env_overrides"]:
        lines.append(f"  env overrides: {options['env_overrides']}")
    lines.append(
        f"  {'crowd':<10}{'browsers':>9}{'opened':>9}{'fatal':>8}{'deferred':>9}{'cuts':>8}"
        f"{'reconn.':>9}{'resumes':>9}{'open end':>9}{'fed end':>9}"
    )
    for kind, crowd in figures["crowds"].items():
        lines.append(
            f"  {kind:<10}{crowd['browsers']:>9,}{crowd['opened']:>9,}{crowd['fatal']:>8,}"
            f"{crowd['deferred']:>9,}{crowd['cuts']:>8,}{crowd['reconnects']:>9,}"
            f"{crowd['resumes']:>9,}{crowd['open_now']:>9,}{crowd['fed_now']:>9,}"
        )
        notes = []
        if crowd["fatal_reasons"]:
            notes.append(f"refusals {crowd['fatal_reasons']}")
        if crowd["network_errors"]:
            notes.append(f"network errors {crowd['network_errors']}")
        if crowd["resets"]:
            notes.append(f"resets {crowd['resets']}")
        if crowd["extra"]:
            notes.append(str(crowd["extra"]))
        if notes:
            lines.append(f"  {'':<10}{'; '.join(notes)}")

    def reading(name: str) -> str:
        value = memory[name]
        if value is None:
            return "n/a"
        return (
            f"{_mib(value['total_bytes'])} (ws {_mib(value['working_set_bytes'])} + sockets "
            f"{_mib(value['socket_bytes'])})"
        )

    steady, health, server = figures["steady"], figures["health"], figures["server"]
    rows = [
        ("peak working set", _mib(memory["peak_working_set_bytes"])),
        ("peak socket memory", _mib(memory["peak_socket_bytes"])),
        (
            "peak ws + sockets",
            f"{_mib(memory['peak_total_bytes'])} of {_mib(figures['limit_bytes'])} at "
            f"{memory['peak_total_at_seconds']} s",
        ),
        ("kernel max usage", _mib(memory["kernel_peak_bytes"])),
        ("OOM kills", figures["oom_kills"]),
        (
            "worker deaths",
            f"{figures['worker_deaths']} {figures['worker_death_causes'] or ''}; "
            f"workers booted {figures['workers_booted']}, signalled by the tool "
            f"{len(figures['workers_signalled'])}",
        ),
        (
            "stayed in the group",
            f"{'yes' if figures['stayed_in_group'] else 'NO'} ({figures['membership_checks']} "
            f"checks, escaped {figures['escaped_pids']}, master exited "
            f"{figures['master_exited']})",
        ),
        (
            "/health",
            f"{health['answered_in_time']} of {health['probes']} within "
            f"{HEALTH_DEADLINE_SECONDS:g} s; p50 {health['p50_seconds']} s, p99 "
            f"{health['p99_seconds']} s, worst {health['worst_seconds']} s {health['statuses']}",
        ),
        (
            "well-behaved client",
            f"acked {steady['acked']}, received {steady['received']}; lost {steady['lost']}, "
            f"dup {steady['duplicated']}, out of order {steady['out_of_order']}, refused "
            f"{steady['refused']} {steady['refusals'] or ''}, resets {steady['resets']}, "
            f"cuts {steady['cuts']}",
        ),
        ("memory idle", reading("idle")),
        ("memory at load end", reading("end")),
        (f"memory {options['after']:g} s after", reading("after")),
        (
            "server says",
            f"max streams {server['max_connections']:,} {server['max_worker_connections']}, "
            f"levels {server['levels_seen']}, refused {server['refused']}, overflow cuts "
            f"{server['overflow_disconnects']:,}, max queued {_mib(server['max_queued_bytes'])}; "
            f"Redis clients max {server['redis_max_clients']:,}, rejected "
            f"{server['redis_rejected_connections']:,}",
        ),
        ("stream close reasons", figures["stream_close_reasons"]),
        (
            "publishing",
            f"events {figures['publishing']['events']}, failures "
            f"{figures['publishing']['failures']}",
        ),
    ]
    lines += [f"  {name:<22}{value}" for name, value in rows]
    lines.append("targets:")
    for target in figures["targets"]:
        lines.append(
            f"  [{'met' if target['met'] else 'MISSED'}] {target['name']}: {target['figure']}"
        )
    verdict = "PASS" if figures["passed"] else "FAIL"
    lines.append(f"verdict: {verdict} ({figures['wall_seconds']} s wall)")
    return "\n".join(lines)


# ---------------------------------------------------------------- command line


OVERRIDABLE = (
    "duration", "limit_mb", "idle", "idle_channels", "idle_processes", "idle_event_bytes",
    "stalled", "stalled_processes", "busy_rate", "busy_event_bytes", "steady_rate", "mercure",
    "responders", "storm", "ramp", "after", "seed", "crowd_nice",
)  # fmt: skip
"""Options a flag sets over the mix's value."""


def _env_pair(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def parse_args(argv: list[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(
        prog="python -m load_tests.box",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--mix",
        choices=sorted(MIXES),
        default="default",
        help="storm: SIGTERM the busiest worker halfway; reload: HUP the master halfway; "
        "big-events: 64 KB events on the busy channel at 5/s; responses: 300 clients running "
        "echo responses at MAX_INPUT_CHARS; mercure: 2,000 Mercure subscribers; all: "
        "storm + responses + mercure. Options given explicitly override the mix's.",
    )
    parser.add_argument("--duration", type=float, help="seconds of load (default 45)")
    parser.add_argument("--limit-mb", type=int, help="the group's memory limit (default 512)")
    parser.add_argument("--idle", type=int, help="idle browsers (default 12000)")
    parser.add_argument("--idle-channels", type=int, help="default 100")
    parser.add_argument("--idle-processes", type=int, help="default 4")
    parser.add_argument("--idle-event-bytes", type=int, help="default 2048")
    parser.add_argument("--stalled", type=int, help="stalled clients (default 1500)")
    parser.add_argument("--stalled-processes", type=int, help="default 2")
    parser.add_argument("--busy-rate", type=float, help="events/s on the busy channel (200)")
    parser.add_argument("--busy-event-bytes", type=int, help="default 1024")
    parser.add_argument("--steady-rate", type=float, help="well-behaved events/s (20)")
    parser.add_argument("--mercure", type=int, help="Mercure subscribers (mix: 0 or 2000)")
    parser.add_argument("--responders", type=int, help="response-run clients (mix: 0 or 300)")
    parser.add_argument("--storm", choices=("term", "hup"), help="a worker SIGTERM or master HUP")
    parser.add_argument("--ramp", type=float, help="seconds over which crowds arrive (10)")
    parser.add_argument("--after", type=float, help="seconds to wait after the crowd left (20)")
    parser.add_argument("--seed", type=int, help="default 1")
    parser.add_argument(
        "--crowd-nice",
        type=int,
        help="niceness added to the crowd processes, which stand in for browsers on other"
        " machines (10; 0 lets them compete with the server)",
    )
    parser.add_argument(
        "--env",
        type=_env_pair,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override or add a server setting (repeatable)",
    )
    parser.add_argument("--json", metavar="PATH", help="write the figures as JSON ('-': stdout)")
    parser.add_argument("--keep-log", metavar="PATH", help="copy gunicorn's log here")
    parser.add_argument(
        "--before",
        metavar="COMMIT",
        help="first run the same mix served from COMMIT (this checkout's blueprint), then "
        "this checkout, and print both with a before/after table",
    )
    args = parser.parse_args(argv)
    options = replace(Options(mix=args.mix), **MIXES[args.mix])
    explicit = {
        name: getattr(args, name) for name in OVERRIDABLE if getattr(args, name) is not None
    }
    options = replace(
        options,
        **explicit,
        env=tuple(args.env),
        json_path=args.json,
        keep_log=args.keep_log,
        before=args.before,
    )
    if options.duration <= 0 or options.limit_mb <= 0 or options.steady_rate <= 0:
        parser.error("--duration, --limit-mb and --steady-rate must be positive")
    if min(options.idle_processes, options.stalled_processes, options.idle_channels) < 1:
        parser.error("process and channel counts must be at least 1")
    for crowd, processes in (
        (options.idle, options.idle_processes),
        (options.stalled, options.stalled_processes),
    ):
        if crowd / processes > 15_000:
            parser.error("at most 15,000 clients per process (the descriptor limit): add processes")
    return options


COMPARED: tuple[tuple[str, Callable[[dict[str, Any]], str]], ...] = (
    ("OOM kills", lambda f: f"{f['oom_kills']}"),
    ("worker deaths", lambda f: f"{f['worker_deaths']}"),
    ("peak ws + sockets", lambda f: _mib(f["memory"]["peak_total_bytes"])),
    ("idle open and fed", lambda f: _fed(f["crowds"].get("idle"))),
    (
        "/health within 3 s",
        lambda f: f"{f['health']['answered_in_time']} of {f['health']['probes']}",
    ),
    ("after - idle", lambda f: _mib(f["memory"]["after_minus_idle_bytes"] or 0)),
    ("targets met", lambda f: f"{sum(t['met'] for t in f['targets'])} of {len(f['targets'])}"),
)
"""The rows of the before/after table: a name and how to read it from a run's figures."""


def _fed(idle: dict[str, Any] | None) -> str:
    if not idle or not idle["browsers"]:
        return "no idle crowd"
    return f"{idle['fed_now']:,} ({idle['fed_now'] / idle['browsers']:.1%})"


def format_comparison(before: dict[str, Any], after: dict[str, Any], commit: str) -> str:
    lines = [f"before ({commit}) / after (this checkout), same mix, one run after the other:"]
    for name, read in COMPARED:
        lines.append(f"  {name:<22}{read(before):>18}{read(after):>18}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    options = parse_args(argv)
    try:
        with _terminate_as_exit():
            before = None
            if options.before is not None:
                with checkout(options.before) as directory:
                    before = run(replace(options, keep_log=None), serve_from=directory)
            figures = run(options)
    except BoxError as exc:
        print(f"box: {exc}", file=sys.stderr)
        return 2
    if before is not None:
        figures["before"] = {"commit": options.before, **before}
    if options.json_path == "-":
        print(json.dumps(figures, indent=2))
    else:
        if before is not None:
            print(format_report(before), end="\n\n")
        print(format_report(figures))
        if before is not None:
            print(format_comparison(before, figures, str(options.before)))
        if options.json_path:
            Path(options.json_path).write_text(json.dumps(figures, indent=2) + "\n")
    return 0 if figures["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
