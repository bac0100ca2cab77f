"""Herald against a naive sse-starlette hub, on one machine, in one run.

Usage (from the repository root)::

    python -m load_tests.benchmark                       # everything, both servers (~4 min)
    python -m load_tests.benchmark --only herald --connections 10000 --fanout-subscribers 0 \\
        --box-connections 0                              # one figure, one server

For each server — Herald (``python -m app``, memory broker) and the baseline
(``load_tests/baseline_app.py``, run by the same ``uvicorn.run`` options) — one
after the other, on free ports of 127.0.0.1:

* **idle connections**: RSS of the server process with no stream, then with
  1,000 / 5,000 / 10,000 open streams (each has received its first bytes, and
  RSS has settled); reported as (RSS at N - RSS idle) / N.
* **fan-out**: 2,000 subscribers, publishers kept as far ahead as the slowest
  subscriber allows (closed loop, see ``generator.py``): deliveries per second
  with the server pinned to one CPU.
* **latency**: the same 2,000 subscribers, 20 events per second on a fixed
  schedule; p50 / p99 of publish-to-delivery time over every delivery.
* **publish**: accepted publishes per second of one worker, by
  ``load_tests/publish_rate.py`` in alternating rounds against a bare ASGI app
  on the same uvicorn, the baseline's ``POST /publish``, Herald on ``memory://``
  and on a ``redis-server`` it starts — single publishes (4 pipelining
  connections; and 64 concurrent publishers for the Redis/memory ratio, where
  concurrent publishes share Redis round trips) and 1,000-event batches.
* **box**: the deployment's shape — gunicorn with two workers
  (Herald: ``gunicorn.conf.py`` with ``MEMORY_LIMIT_MB=512`` and
  ``SSE_MAX_CONNECTIONS=9000`` as in ``render.yaml``, see ``box``; baseline:
  two uvicorn workers) holding 16,000 streams; total RSS of master and workers,
  and how the streams spread over the workers.
* **stalled clients** (Herald only): 2,000 streams whose clients set a
  4 KB receive buffer and stop reading, 500 events of 1 KB published to them;
  TCP memory of their connections and server RSS, peak and after, both
  *before* (plain ``uvicorn app.main:app``, ``SSE_SOCKET_SEND_BUFFER_KB=0``: no
  cap, no abort) and *after* (the defaults), in the same run. See
  ``load_tests/stalled.py``.

The load generator (``load_tests/generator.py``) is a separate process on the
other CPU; every step reports its CPU use, so a result limited by the generator
would show. Prints a table and writes JSON (``--json``).

Open files: 10,000 streams need 10,000 descriptors in the server and as many in
the generator. The soft ``RLIMIT_NOFILE`` is raised to the hard limit here (the
servers and the generator inherit it); a run needing more than the hard limit
stops at once, naming it — raise it with ``ulimit -Hn`` as root.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import select
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped, unused-ignore]

from load_tests import box as box_test
from load_tests import publish_rate
from load_tests.generator import raise_open_file_limit
from load_tests.stalled import VARIANTS, measure_stalled
from tests.support.server import REPO_ROOT, ServerProcess

__all__ = ["BenchmarkError", "Options", "main", "parse_args", "run"]

KIB = 1024
MIB = 1024 * 1024
SERVER_KINDS = ("herald", "baseline")
SETTLE_SAMPLE_SECONDS = 0.2
SETTLE_SAMPLES = 5
SETTLE_TOLERANCE = 0.005
"""RSS has settled when the last five samples (one second) lie within 0.5 %."""
SETTLE_MIN_BYTES = 256 * KIB
GENERATOR_BUSY = 0.9
"""Generator CPU share above which a result may be the generator's limit, not the server's."""
FILE_DESCRIPTOR_MARGIN = 200
EPHEMERAL_PORT_MARGIN = 2000

# The memory and speed targets, as the benchmark checks them.
TARGET_RSS_PER_CONNECTION = 20 * KIB
TARGET_RSS_CONNECTIONS = 10_000
TARGET_FANOUT_RATIO = 10.0
TARGET_FANOUT_SUBSCRIBERS = 2_000
TARGET_P99_MS = 50.0
TARGET_RATE = 20.0
TARGET_BOX_CONNECTIONS = 16_000
TARGET_BOX_RSS = 450 * MIB
# The publish targets.
TARGET_PUBLISH_VS_BARE = 0.5
TARGET_PUBLISH_VS_BASELINE = 1.0
TARGET_BATCH_MEMORY = 100_000
TARGET_BATCH_REDIS = 50_000
TARGET_REDIS_VS_MEMORY = 0.7
CONCURRENT_PUBLISHERS = 64


class BenchmarkError(RuntimeError):
    """A step could not be measured (a server refused streams, the generator failed)."""


@dataclass(frozen=True)
class Options:
    servers: tuple[str, ...]
    connections: tuple[int, ...]
    fanout_subscribers: int
    rate: float
    duration: float
    warmup: float
    drain: float
    window: int
    publishers: int
    payload_bytes: int
    box_connections: int
    box_workers: int
    box_memory_mb: int
    box_max_connections: int
    stalled_streams: int
    box_test_seconds: float
    stalled_events: int
    stalled_event_bytes: int
    settle_seconds: float
    publish_rounds: int
    publish_seconds: float
    pin: bool
    json_path: Path


@dataclass(frozen=True)
class ServerSpec:
    argv: list[str]
    env: dict[str, str]
    subscribe_path: str
    publish_path: str
    wrap_publish: bool
    publish_status: int
    cwd: Path = REPO_ROOT
    """The checkout the server runs from (another one for before/after figures)."""


@dataclass
class Placement:
    """Which CPUs the servers and the generator run on."""

    server_cpus: set[int] | None
    generator_cpu: int | None
    notes: list[str] = field(default_factory=list)

    @property
    def pinned(self) -> bool:
        return self.server_cpus is not None


# --- servers ---


def _herald_env(max_connections: int, memory_limit_mb: int) -> dict[str, str]:
    return {
        "LOG_LEVEL": "warning",
        "BROKER_URL": "memory://",
        "SSE_MAX_CONNECTIONS": str(max_connections),
        # The guard measures against this; well above what the run needs, so
        # neither a cleanup nor a refusal interferes with the figures.
        "MEMORY_LIMIT_MB": str(memory_limit_mb),
        # Publishing from loopback needs no token; auth settings of the caller's
        # environment must not leak into the measurement.
        "PUBLISH_TOKEN": "",
        "ADMIN_TOKEN": "",
        "JWT_SECRET": "",
        "JWT_PUBLIC_KEY": "",
        "ALLOW_ANONYMOUS": "true",
        # Every stream and publish of the run comes from 127.0.0.1: per-client
        # limits (render.yaml turns them on) would measure the limit, not the hub.
        "SSE_MAX_CONNECTIONS_PER_IP": "0",
        "PUBLISH_RATE_PER_SECOND": "0",
    }


def herald_spec(max_connections: int, cwd: Path = REPO_ROOT) -> ServerSpec:
    """``python -m app`` from ``cwd`` (another checkout, for before/after), memory broker."""
    return ServerSpec(
        [sys.executable, "-m", "app"],
        _herald_env(max_connections + 1000, 64 * 1024),
        "/events/bench",
        "/events/bench",
        wrap_publish=True,
        publish_status=202,
        cwd=cwd,
    )


def gunicorn_spec(env: dict[str, str]) -> ServerSpec:
    """render.yaml's start command, ``gunicorn app.main:app`` with gunicorn.conf.py (which
    binds HOST:PORT, set to 127.0.0.1 by ServerProcess)."""
    return ServerSpec(
        [sys.executable, "-m", "gunicorn", "app.main:app"],
        env,
        "/events/bench",
        "/events/bench",
        wrap_publish=True,
        publish_status=202,
    )


def single_worker(kind: str, max_connections: int) -> ServerSpec:
    if kind == "herald":
        return herald_spec(max_connections)
    return ServerSpec(
        [sys.executable, "-m", "load_tests.baseline_app"],
        {"LOG_LEVEL": "warning"},
        "/events",
        "/publish",
        wrap_publish=False,
        publish_status=200,
    )


def box(kind: str, options: Options) -> ServerSpec:
    """Two gunicorn workers, shaped like render.yaml's deployment: its memory limit and
    per-worker stream cap. Three differences, each because the step would otherwise
    measure something else: the memory broker (no Redis to start), ``max_requests``
    off (each stream is a request: workers would recycle every ~1,000 streams) and
    per-client limits off (every stream comes from 127.0.0.1)."""
    if kind == "herald":
        env = _herald_env(options.box_max_connections, options.box_memory_mb)
        env |= {"WEB_CONCURRENCY": str(options.box_workers), "GUNICORN_MAX_REQUESTS": "0"}
        return gunicorn_spec(env)
    return ServerSpec(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "load_tests.baseline_app:app",
            # Not Herald's gunicorn.conf.py, which the working directory would supply.
            "--config",
            os.devnull,
            "--worker-class",
            "uvicorn_worker.UvicornWorker",
            "--workers",
            str(options.box_workers),
            "--log-level",
            "warning",
        ],
        {"LOG_LEVEL": "warning"},
        "/events",
        "/publish",
        wrap_publish=False,
        publish_status=200,
    )


@contextlib.contextmanager
def running(spec: ServerSpec, placement: Placement) -> Iterator[ServerProcess]:
    server = ServerProcess(spec.env, list(spec.argv), cwd=spec.cwd)
    if spec.argv[2] == "gunicorn":
        server.argv = [*spec.argv, "--bind", f"127.0.0.1:{server.port}"]
    # Children inherit the CPU mask of the parent at fork: pin ourselves for the
    # moment of the start, so the server and every thread or worker it makes
    # later stay on the server's CPU.
    with _cpus(placement.server_cpus):
        server.start()
    try:
        yield server
    finally:
        server.close()


@contextlib.contextmanager
def _cpus(cpus: set[int] | None) -> Iterator[None]:
    if cpus is None:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def server_processes(server: ServerProcess) -> list[psutil.Process]:
    assert server.process is not None
    root = psutil.Process(server.process.pid)
    return [root, *root.children(recursive=True)]


def total_rss(processes: list[psutil.Process]) -> int:
    return sum(process.memory_info().rss for process in processes)


def settled_rss(processes: list[psutil.Process], limit_seconds: float) -> int:
    """Total RSS once it stops moving (or after ``limit_seconds``)."""
    samples = [total_rss(processes)]
    deadline = time.monotonic() + limit_seconds
    while time.monotonic() < deadline:
        time.sleep(SETTLE_SAMPLE_SECONDS)
        samples.append(total_rss(processes))
        recent = samples[-SETTLE_SAMPLES:]
        spread = max(recent) - min(recent)
        if len(recent) == SETTLE_SAMPLES and spread <= max(
            SETTLE_TOLERANCE * recent[-1], SETTLE_MIN_BYTES
        ):
            break
    return samples[-1]


class CpuSampler:
    """Samples a process's CPU time on a thread, to read its CPU share over any window."""

    def __init__(self, process: psutil.Process, interval: float = 0.05) -> None:
        self.process = process
        self.interval = interval
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            times = self.process.cpu_times()
            self.samples.append((time.monotonic(), times.user + times.system))
            self._stop.wait(self.interval)

    def __enter__(self) -> CpuSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()

    def share(self, start: float, end: float) -> float | None:
        """CPU seconds per second between the samples closest to ``start`` and ``end``."""
        if len(self.samples) < 2:
            return None
        first = min(self.samples, key=lambda sample: abs(sample[0] - start))
        last = min(self.samples, key=lambda sample: abs(sample[0] - end))
        if last[0] <= first[0]:
            return None
        return round((last[1] - first[1]) / (last[0] - first[0]), 3)


def wait_for_workers(server: ServerProcess, workers: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while len(server_processes(server)) < workers + 1:
        if time.monotonic() > deadline:
            raise BenchmarkError(f"gunicorn did not start {workers} workers:\n{server.logs()}")
        time.sleep(0.1)


def established(process: psutil.Process, port: int) -> int:
    return sum(
        1
        for connection in process.net_connections(kind="tcp")
        if connection.status == psutil.CONN_ESTABLISHED and connection.laddr.port == port
    )


# --- the generator process ---


class GeneratorProcess:
    """``load_tests/generator.py`` in its own process, one JSON line per command."""

    def __init__(self, spec: ServerSpec, port: int, placement: Placement) -> None:
        argv = [
            sys.executable,
            "-m",
            "load_tests.generator",
            "--port",
            str(port),
            "--subscribe-path",
            spec.subscribe_path,
            "--publish-path",
            spec.publish_path,
            "--publish-status",
            str(spec.publish_status),
        ]
        if spec.wrap_publish:
            argv.append("--wrap-publish")
        if placement.generator_cpu is not None:
            argv += ["--cpu", str(placement.generator_cpu)]
        self.process = subprocess.Popen(
            argv,
            cwd=REPO_ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def call(self, timeout: float, **command: Any) -> dict[str, Any]:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()
        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        if not ready:
            raise BenchmarkError(f"generator did not answer {command['cmd']} in {timeout:.0f} s")
        line = self.process.stdout.readline()
        if not line:
            raise BenchmarkError(f"generator exited with {self.process.wait()}")
        reply: dict[str, Any] = json.loads(line)
        if not reply.pop("ok"):
            raise BenchmarkError(f"generator: {command['cmd']} failed: {reply['error']}")
        return reply

    def close(self) -> None:
        if self.process.poll() is None:
            assert self.process.stdin is not None
            with contextlib.suppress(OSError):
                self.process.stdin.write('{"cmd": "quit"}\n')
                self.process.stdin.flush()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@contextlib.contextmanager
def generator(spec: ServerSpec, server: ServerProcess, placement: Placement) -> Iterator[Any]:
    process = GeneratorProcess(spec, server.port, placement)
    try:
        yield process
    finally:
        process.close()


def _connect(gen: GeneratorProcess, total: int, allow_failures: bool = False) -> dict[str, Any]:
    reply = gen.call(timeout=120 + total / 100, cmd="connect", total=total, timeout_each=60)
    if reply["failed"] and not allow_failures:
        raise BenchmarkError(f"{reply['failed']} of {total} streams failed: {reply['errors']}")
    return reply


# --- the measurements ---


def measure_idle_connections(kind: str, options: Options, placement: Placement) -> dict[str, Any]:
    spec = single_worker(kind, max(options.connections))
    with running(spec, placement) as server, generator(spec, server, placement) as gen:
        processes = server_processes(server)
        idle = settled_rss(processes, options.settle_seconds)
        steps = []
        for count in sorted(options.connections):
            reply = _connect(gen, count)
            rss = settled_rss(processes, options.settle_seconds)
            steps.append(
                {
                    "connections": count,
                    "rss_bytes": rss,
                    "per_connection_bytes": round((rss - idle) / count, 1),
                    "connect_seconds": reply["seconds"],
                }
            )
    return {"rss_idle_bytes": idle, "steps": steps}


def measure_throughput(kind: str, options: Options, placement: Placement) -> dict[str, Any]:
    spec = single_worker(kind, options.fanout_subscribers)
    with running(spec, placement) as server, generator(spec, server, placement) as gen:
        root = server_processes(server)[0]
        _connect(gen, options.fanout_subscribers)
        with CpuSampler(root) as server_cpu:
            fanout = gen.call(
                timeout=options.warmup + options.duration + 120,
                cmd="fanout",
                warmup=options.warmup,
                duration=options.duration,
                window=options.window,
                publishers=options.publishers,
                payload_bytes=options.payload_bytes,
            )
        # Near 1.0: the server was the limit. Lower on a busy machine, where the
        # server's CPU is shared with other work.
        fanout["server_cpu"] = share = server_cpu.share(*fanout.pop("window"))
        # What the server did per second of CPU it actually got: steadier than the
        # rate itself on a machine whose other work takes turns on the same CPU.
        fanout["deliveries_per_cpu_second"] = (
            round(fanout["deliveries_per_second"] / share, 1) if share else None
        )
        latency = gen.call(
            timeout=options.duration + options.drain + 120,
            cmd="latency",
            rate=options.rate,
            duration=options.duration,
            drain=options.drain,
            publishers=options.publishers,
            payload_bytes=options.payload_bytes,
        )
    return {"fanout": fanout, "latency": latency}


def measure_box(kind: str, options: Options, placement: Placement) -> dict[str, Any]:
    spec = box(kind, options)
    with running(spec, placement) as server, generator(spec, server, placement) as gen:
        wait_for_workers(server, options.box_workers)
        processes = server_processes(server)
        idle = settled_rss(processes, options.settle_seconds)
        reply = _connect(gen, options.box_connections, allow_failures=True)
        rss = settled_rss(processes, options.settle_seconds)
        members = []
        for process in processes:
            full = process.memory_full_info()
            members.append(
                {
                    "pid": process.pid,
                    "role": "master" if process is processes[0] else "worker",
                    "rss_bytes": full.rss,
                    "pss_bytes": getattr(full, "pss", None),
                    "connections": established(process, server.port),
                }
            )
    return {
        "workers": options.box_workers,
        "attempted": options.box_connections,
        "held": reply["connections"],
        "failed": reply["failed"],
        "errors": reply["errors"],
        "rss_idle_bytes": idle,
        "total_rss_bytes": rss,
        "total_pss_bytes": sum(m["pss_bytes"] or 0 for m in members),
        "processes": members,
    }


def measure_box_test(seconds: float) -> dict[str, Any] | None:
    """render.yaml's deployment in a real memory cgroup under the box test's default mix
    (``load_tests/box.py``); None where no cgroup can be made here."""
    try:
        figures = box_test.run(box_test.parse_args(["--duration", str(seconds)]))
    except box_test.BoxError as exc:
        print(f"[herald] box test skipped: {exc}", file=sys.stderr)
        return None
    memory = figures["memory"]
    idle = figures["crowds"]["idle"]
    stalled = figures["crowds"]["stalled"]
    return {
        "oom_kills": figures["oom_kills"],
        "worker_deaths": figures["worker_deaths"],
        "limit_bytes": figures["limit_bytes"],
        "peak_total_bytes": memory["peak_total_bytes"],
        "peak_socket_bytes": memory["peak_socket_bytes"],
        "after_minus_idle_bytes": memory["after_minus_idle_bytes"],
        "idle_browsers": idle["browsers"],
        "idle_fed_at_end": idle["fed_now"],
        "stalled_browsers": stalled["browsers"],
        "stalled_resumes": stalled["resumes"],
        "passed": figures["passed"],
    }


def box_test_lines(results: dict[str, Any]) -> list[str]:
    box = _get(results, "herald", "box_test")
    if not box:
        return []
    return [
        "",
        "the box test (render.yaml's deployment in a real memory cgroup, the default mix):",
        f"  OOM kills {box['oom_kills']}, worker deaths {box['worker_deaths']};"
        f" idle browsers open and fed at the end {box['idle_fed_at_end']:,} of"
        f" {box['idle_browsers']:,}; {box['stalled_browsers']:,} stalled readers resumed"
        f" {box['stalled_resumes']:,} times",
        f"  peak working set + sockets {_mib(box['peak_total_bytes']):.1f} of"
        f" {_mib(box['limit_bytes']):.1f} MiB (sockets {_mib(box['peak_socket_bytes']):.1f} MiB);"
        f" 20 s after the crowd left {_mib(box['after_minus_idle_bytes']):+.1f} MiB over idle",
    ]


def measure_publish(options: Options) -> dict[str, Any]:
    """The publish step: every publish target in one run (see ``load_tests/publish_rate.py``)."""
    rounds, seconds, pin = options.publish_rounds, options.publish_seconds, options.pin
    pipelined = publish_rate.compare(publish_rate.TARGETS, rounds=rounds, seconds=seconds, pin=pin)
    concurrent = publish_rate.compare(
        ("herald-memory", "herald-redis"),
        connections=CONCURRENT_PUBLISHERS,
        window=2,
        rounds=rounds,
        seconds=seconds,
        pin=pin,
    )
    return {
        "pipelined": {name: rate.as_dict() for name, rate in pipelined.items()},
        "concurrent": {name: rate.as_dict() for name, rate in concurrent.items()},
        "ratios": publish_rate.ratios(pipelined),
        "concurrent_ratios": publish_rate.ratios(concurrent),
    }


def publish_rows(publish: dict[str, Any]) -> list[tuple[str, str]]:
    """(label, value) lines of the publish step for the table."""
    lines = []
    for name, rate in publish["pipelined"].items():
        unit = "publishes/s" if rate["events_per_request"] == 1 else "events/s"
        lines.append(
            (f"{name}, 4 pipelining connections", f"{rate['events_per_second']:,.0f} {unit}")
        )
    for name, rate in publish["concurrent"].items():
        label = f"{name}, {CONCURRENT_PUBLISHERS} concurrent publishers"
        lines.append((label, f"{rate['events_per_second']:,.0f} publishes/s"))
    for label, value in publish["ratios"].items():
        lines.append((label, f"{value:.2f}"))
    for label, value in publish["concurrent_ratios"].items():
        lines.append((f"{label}, {CONCURRENT_PUBLISHERS} concurrent", f"{value:.2f}"))
    return lines


def publish_targets(publish: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    ratios = (publish or {}).get("ratios", {})
    concurrent = (publish or {}).get("concurrent_ratios", {})
    pipelined = (publish or {}).get("pipelined", {})

    def check(target: str, value: float | None, floor: float) -> dict[str, Any]:
        return {"target": target, "value": value, "met": None if value is None else value >= floor}

    def rate(name: str) -> float | None:
        found = pipelined.get(name)
        return None if found is None else found["events_per_second"]

    return {
        "publish_vs_bare": check(
            f">= {TARGET_PUBLISH_VS_BARE:g}x a bare ASGI app",
            ratios.get("herald-memory / bare"),
            TARGET_PUBLISH_VS_BARE,
        ),
        "publish_vs_baseline": check(
            ">= the naive FastAPI endpoint",
            ratios.get("herald-memory / baseline"),
            TARGET_PUBLISH_VS_BASELINE,
        ),
        "batch_memory": check(
            f">= {TARGET_BATCH_MEMORY:,} events/s", rate("batch-memory"), TARGET_BATCH_MEMORY
        ),
        "batch_redis": check(
            f">= {TARGET_BATCH_REDIS:,} events/s", rate("batch-redis"), TARGET_BATCH_REDIS
        ),
        "redis_vs_memory": check(
            f">= {TARGET_REDIS_VS_MEMORY:g}x memory://, {CONCURRENT_PUBLISHERS} publishers",
            concurrent.get("herald-redis / herald-memory"),
            TARGET_REDIS_VS_MEMORY,
        ),
    }


# --- report ---


def _ratio(herald: float | None, baseline: float | None) -> float | None:
    if herald is None or baseline is None or baseline == 0:
        return None
    return round(herald / baseline, 3)


def _get(results: dict[str, Any], kind: str, *path: str | int) -> Any:
    value: Any = results.get(kind)
    for key in path:
        if value is None:
            return None
        if isinstance(key, int):
            steps = value if isinstance(value, list) else []
            value = next((s for s in steps if s.get("connections") == key), None)
        else:
            value = value.get(key)
    return value


def rows(results: dict[str, Any], options: Options) -> list[tuple[str, str, Any, Any, bool]]:
    """(label, unit, herald value, baseline value, ratio wanted) for the table and the ratios."""
    table: list[tuple[str, str, Any, Any, bool]] = []
    for count in sorted(options.connections):
        per = "per_connection_bytes"
        table.append(
            (
                f"RSS per idle connection, {count:,} connections",
                "KiB",
                _kib(_get(results, "herald", "idle_connections", "steps", count, per)),
                _kib(_get(results, "baseline", "idle_connections", "steps", count, per)),
                True,
            )
        )
    if options.fanout_subscribers:
        subs = f"{options.fanout_subscribers:,} subscribers"
        for label, unit, path in (
            (f"fan-out deliveries/s, {subs}, one core", "/s", ("fanout", "deliveries_per_second")),
            ("  per second of server CPU", "/s", ("fanout", "deliveries_per_cpu_second")),
            (f"latency p50, {subs}, {options.rate:g} events/s", "ms", ("latency", "p50_ms")),
            (f"latency p99, {subs}, {options.rate:g} events/s", "ms", ("latency", "p99_ms")),
            ("  delivered by the end of the drain", "%", ("latency", "delivered_ratio")),
        ):
            herald = _get(results, "herald", "throughput", *path)
            baseline = _get(results, "baseline", "throughput", *path)
            if unit == "%":
                herald = None if herald is None else round(herald * 100, 2)
                baseline = None if baseline is None else round(baseline * 100, 2)
            table.append((label, unit, herald, baseline, unit != "%"))
    if options.box_connections:
        label = f"{options.box_workers} workers, {options.box_connections:,} streams: total RSS"
        herald = _get(results, "herald", "box", "total_rss_bytes")
        baseline = _get(results, "baseline", "box", "total_rss_bytes")
        table.append((label, "MiB", _mib(herald), _mib(baseline), True))
        table.append(
            (
                "  streams held",
                "",
                _get(results, "herald", "box", "held"),
                _get(results, "baseline", "box", "held"),
                False,
            )
        )
    return table


def _kib(value: float | None) -> float | None:
    return None if value is None else round(value / KIB, 1)


def _mib(value: float | None) -> float | None:
    return None if value is None else round(value / MIB, 1)


def _show(value: Any, unit: str) -> str:
    if value is None:
        return "—"
    if unit == "/s" or (unit == "" and isinstance(value, int)):
        return f"{value:,.0f}"
    return f"{value:,.1f} {unit}".rstrip() if unit not in ("%",) else f"{value:g} %"


def targets(results: dict[str, Any], options: Options) -> dict[str, dict[str, Any]]:
    """The memory and speed targets, each with its measured value (None: not measured)."""
    checks: dict[str, dict[str, Any]] = {}
    per = _get(
        results,
        "herald",
        "idle_connections",
        "steps",
        TARGET_RSS_CONNECTIONS,
        "per_connection_bytes",
    )
    checks["rss_per_idle_connection_10k"] = {
        "target": f"<= {TARGET_RSS_PER_CONNECTION // KIB} KiB at {TARGET_RSS_CONNECTIONS:,}",
        "value": per,
        "met": None if per is None else per <= TARGET_RSS_PER_CONNECTION,
    }
    ratio = None
    if options.fanout_subscribers == TARGET_FANOUT_SUBSCRIBERS:
        ratio = _ratio(
            _get(results, "herald", "throughput", "fanout", "deliveries_per_second"),
            _get(results, "baseline", "throughput", "fanout", "deliveries_per_second"),
        )
    checks["fanout_ratio_2k"] = {
        "target": f">= {TARGET_FANOUT_RATIO:g}x the baseline at {TARGET_FANOUT_SUBSCRIBERS:,}",
        "value": ratio,
        "met": None if ratio is None else ratio >= TARGET_FANOUT_RATIO,
    }
    p99 = delivered = None
    if options.fanout_subscribers == TARGET_FANOUT_SUBSCRIBERS and options.rate == TARGET_RATE:
        p99 = _get(results, "herald", "throughput", "latency", "p99_ms")
        delivered = _get(results, "herald", "throughput", "latency", "delivered_ratio")
    checks["p99_latency_2k_20eps"] = {
        "target": f"<= {TARGET_P99_MS:g} ms, every event delivered",
        "value": p99,
        "met": None if p99 is None else (p99 <= TARGET_P99_MS and delivered == 1.0),
    }
    held = total = None
    if options.box_connections == TARGET_BOX_CONNECTIONS and options.box_workers == 2:
        held = _get(results, "herald", "box", "held")
        total = _get(results, "herald", "box", "total_rss_bytes")
    box_target = f"{TARGET_BOX_CONNECTIONS:,} streams held, total RSS < {TARGET_BOX_RSS // MIB} MiB"
    box = _get(results, "herald", "box_test")
    checks["box_test_default_mix"] = {
        "target": "0 OOM kills and every box test target met",
        "value": None if not box else {"oom_kills": box["oom_kills"], "passed": box["passed"]},
        "met": None if not box else (box["oom_kills"] == 0 and box["passed"]),
    }
    checks["box_16k_two_workers"] = {
        "target": box_target,
        "value": None if total is None else {"held": held, "total_rss_bytes": total},
        "met": None
        if total is None
        else (held == TARGET_BOX_CONNECTIONS and total < TARGET_BOX_RSS),
    }
    return checks


def warnings(results: dict[str, Any]) -> list[str]:
    """Anything that makes a figure doubtful, said next to the table."""
    found = []
    for kind, result in results.items():
        throughput = result.get("throughput") or {}
        for step in ("fanout", "latency"):
            reply = throughput.get(step)
            if not reply:
                continue
            if reply["generator_cpu"] > GENERATOR_BUSY:
                found.append(
                    f"{kind} {step}: the generator used {reply['generator_cpu']:.0%} of its CPU;"
                    " the figure may be the generator's limit"
                )
            check = reply["parser_check"]
            if check.get("checked") and not check["agree"]:
                found.append(
                    f"{kind} {step}: fast count {check['counted']} != WHATWG parser"
                    f" {check['parsed']} on the sampled stream"
                )
            if reply["disconnects"]:
                found.append(f"{kind} {step}: {reply['disconnects']} streams closed by the server")
        latency = throughput.get("latency")
        if latency and latency["delivered_ratio"] != 1.0:
            found.append(
                f"{kind} latency: {latency['deliveries']:,} of {latency['expected_deliveries']:,}"
                " deliveries arrived before the drain timeout; percentiles cover those only"
            )
        if latency and latency["achieved_rate"] < 0.95 * latency["rate"]:
            found.append(
                f"{kind} latency: publishes went out at {latency['achieved_rate']:g} events/s,"
                f" not {latency['rate']:g} (answers so late that the generator ran out of"
                " publishing connections)"
            )
        fanout = throughput.get("fanout")
        if fanout and (fanout.get("server_cpu") or 1.0) < 0.8:
            found.append(
                f"{kind} fanout: the server used only {fanout['server_cpu']:.0%} of a CPU"
                " (a busy machine, or the server was not the limit)"
            )
        boxed = result.get("box")
        if boxed and boxed["failed"]:
            found.append(
                f"{kind} box: {boxed['failed']:,} of {boxed['attempted']:,} streams refused"
                f" or failed: {boxed['errors']}"
            )
    return found


def render(report: dict[str, Any], options: Options) -> str:
    meta = report["meta"]
    machine = meta["machine"]
    lines = [
        f"Herald vs naive sse-starlette hub — {meta['date']}",
        f"machine: {machine['cpus']} CPUs, {machine['memory_gib']} GiB, {machine['system']},"
        f" Python {machine['python']}, {machine['event_loop']}, {machine['http']}",
        f"placement: {meta['placement']}; load average at start {meta['loadavg_start']},"
        f" at end {meta['loadavg_end']}",
        "",
    ]
    header = ("measurement", "herald", "baseline", "herald/baseline")
    body = []
    for label, unit, herald, baseline, want_ratio in rows(report["results"], options):
        ratio = _ratio(herald, baseline) if want_ratio else None
        body.append(
            (
                label,
                _show(herald, unit),
                _show(baseline, unit),
                "—" if ratio is None else f"{ratio:.2f}",
            )
        )
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(4)]
    for row in [header, *body]:
        lines.append(
            "  ".join(
                cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i])
                for i, cell in enumerate(row)
            )
        )
    lines += stalled_lines(report["results"])
    lines += box_test_lines(report["results"])
    publish = report.get("publish")
    if publish:
        lines += ["", "publishing, one worker, no subscribers, 64-byte events:"]
        width = max(len(label) for label, _ in publish_rows(publish))
        lines += [f"  {label.ljust(width)}  {value}" for label, value in publish_rows(publish)]
    lines.append("")
    lines.append("targets (Herald):")
    for name, check in report["targets"].items():
        verdict = {True: "met", False: "NOT met", None: "not measured"}[check["met"]]
        lines.append(f"  {name}: {check['target']}: {verdict} (value: {check['value']})")
    for warning in report["warnings"]:
        lines.append(f"warning: {warning}")
    return "\n".join(lines)


def stalled_lines(results: dict[str, Any]) -> list[str]:
    """The stalled-clients table: with the stream socket caps off and on, per stalled stream."""
    stalled = _get(results, "herald", "stalled")
    if not stalled:
        return []
    after = stalled["after"]
    lines = [
        "",
        f"stalled clients (Herald): {after['streams']:,} streams with a 4 KB receive"
        f" buffer that never read, {after['events']:,} events of {after['event_bytes']:,} B;"
        f" TCP memory of their connections from {after['tcp_source']}, per stream",
    ]
    rows_ = [
        ("TCP memory, peak", "peak_port_tcp_bytes", KIB, "KiB"),
        ("TCP memory, after publishing", "end_port_tcp_bytes", KIB, "KiB"),
        ("namespace TCP memory (sockstat), peak", "peak_sockstat_tcp_bytes", KIB, "KiB"),
        ("server RSS, peak", "peak_rss_bytes", KIB, "KiB"),
        ("server RSS, after publishing", "end_rss_bytes", KIB, "KiB"),
    ]
    header = ("", *VARIANTS)
    body = [
        (label, *(_show(stalled[v]["per_stream_bytes"][key] / scale, unit) for v in VARIANTS))
        for label, key, scale, unit in rows_
    ]
    totals = []
    for variant in VARIANTS:
        figures = stalled[variant]
        peak = figures["peak"]["port_tcp_bytes"] + figures["peak"]["rss_bytes"]
        totals.append(_show(_mib(peak - figures["idle"]["port_tcp_bytes"]), "MiB"))
    body.append(("TCP memory + server RSS, peak, all streams", *totals))
    body.append(
        ("streams still open after publishing", *(str(stalled[v]["still_open"]) for v in VARIANTS))
    )
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
    for row in [header, *body]:
        lines.append(
            "  ".join(
                cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i])
                for i, cell in enumerate(row)
            )
        )
    return lines


def machine_info() -> dict[str, Any]:
    def version(name: str) -> str | None:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    uvloop, httptools = version("uvloop"), version("httptools")
    return {
        "cpus": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 1024**3, 1),
        "system": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        # uvicorn's "auto" picks these when installed; both servers use "auto".
        "event_loop": f"uvloop {uvloop}" if uvloop else "asyncio",
        "http": f"httptools {httptools}" if httptools else "h11",
        "uvicorn": version("uvicorn"),
        "sse_starlette": version("sse-starlette"),
        "fastapi": version("fastapi"),
    }


def plan_placement(pin: bool) -> Placement:
    cpus = sorted(os.sched_getaffinity(0))
    if not pin:
        return Placement(None, None, ["pinning off (--no-pin)"])
    if len(cpus) < 2:
        return Placement(None, None, ["one CPU available: server and generator share it"])
    return Placement({cpus[0]}, cpus[1])


def describe(placement: Placement) -> str:
    if not placement.pinned:
        return "not pinned (" + "; ".join(placement.notes) + ")"
    assert placement.server_cpus is not None
    return f"server on CPU {min(placement.server_cpus)}, generator on CPU {placement.generator_cpu}"


def check_limits(options: Options) -> int:
    most = max(
        [
            *options.connections,
            options.fanout_subscribers,
            options.box_connections,
            options.stalled_streams,
            0,
        ]
    )
    limit = raise_open_file_limit()
    if most + FILE_DESCRIPTOR_MARGIN > limit:
        raise BenchmarkError(
            f"{most:,} streams need about {most + FILE_DESCRIPTOR_MARGIN:,} open files per"
            f" process; the hard limit is {limit:,} (raise it: ulimit -Hn, as root)"
        )
    low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    if most + EPHEMERAL_PORT_MARGIN > high - low:
        raise BenchmarkError(f"{most:,} streams need more local ports than {low}-{high}")
    return limit


def run(options: Options) -> dict[str, Any]:
    limit = check_limits(options)
    placement = plan_placement(options.pin)
    meta: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "placement": describe(placement),
        "open_files_limit": limit,
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
        "options": {
            key: (str(value) if isinstance(value, Path) else value)
            for key, value in vars(options).items()
        },
    }
    results: dict[str, Any] = {}
    for kind in options.servers:
        result: dict[str, Any] = {}
        if options.connections:
            print(f"[{kind}] idle connections {list(options.connections)}", file=sys.stderr)
            result["idle_connections"] = measure_idle_connections(kind, options, placement)
        if options.fanout_subscribers:
            print(f"[{kind}] fan-out and latency", file=sys.stderr)
            result["throughput"] = measure_throughput(kind, options, placement)
        if options.box_connections:
            print(f"[{kind}] {options.box_workers} workers", file=sys.stderr)
            result["box"] = measure_box(kind, options, placement)
        if options.stalled_streams and kind == "herald":
            result["stalled"] = measure_stalled(
                _herald_env(options.stalled_streams + 1000, 64 * 1024),
                options.stalled_streams,
                options.stalled_events,
                options.stalled_event_bytes,
            )
        if options.box_test_seconds and kind == "herald":
            print("[herald] the box test, default mix", file=sys.stderr)
            result["box_test"] = measure_box_test(options.box_test_seconds)
        results[kind] = result
    publish = None
    if options.publish_rounds:
        print("[publish] bare, baseline, herald on memory:// and redis://", file=sys.stderr)
        publish = measure_publish(options)
    meta["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    report: dict[str, Any] = {"meta": meta, "results": results}
    if publish is not None:
        report["publish"] = publish
    report["ratios"] = {
        label: _ratio(herald, baseline)
        for label, _, herald, baseline, want in rows(results, options)
        if want
    }
    report["targets"] = targets(results, options) | publish_targets(publish)
    report["warnings"] = warnings(results)
    return report


def _sizes(text: str) -> tuple[int, ...]:
    return tuple(int(part.replace("_", "")) for part in text.split(",") if part.strip())


def parse_args(argv: list[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(
        prog="python -m load_tests.benchmark",
        description="Herald vs a naive sse-starlette hub: memory per idle stream, fan-out, "
        "latency, and two workers holding many streams.",
    )
    parser.add_argument("--only", choices=SERVER_KINDS, help="measure one server only")
    parser.add_argument(
        "--connections",
        default="1000,5000,10000",
        help="idle streams to measure RSS at, comma-separated ('' skips the step)",
    )
    parser.add_argument(
        "--fanout-subscribers",
        type=int,
        default=2000,
        help="subscribers of the fan-out and latency steps (0 skips them)",
    )
    parser.add_argument("--rate", type=float, default=20.0, help="events/s of the latency step")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds each is measured")
    parser.add_argument("--warmup", type=float, default=2.0, help="fan-out warm-up seconds")
    parser.add_argument(
        "--drain", type=float, default=10.0, help="seconds to wait for late deliveries"
    )
    parser.add_argument("--window", type=int, default=50, help="fan-out events in flight")
    parser.add_argument("--publishers", type=int, default=4, help="publishing connections")
    parser.add_argument("--payload-bytes", type=int, default=100, help="padding per event")
    parser.add_argument(
        "--box-connections",
        type=int,
        default=16000,
        help="streams held by the two-worker deployment (0 skips the step)",
    )
    parser.add_argument("--box-workers", type=int, default=2)
    parser.add_argument("--box-memory-mb", type=int, default=512, help="Herald's MEMORY_LIMIT_MB")
    parser.add_argument(
        "--box-max-connections",
        type=int,
        default=9000,
        help="Herald's SSE_MAX_CONNECTIONS per worker in the box step (render.yaml's value)",
    )
    parser.add_argument(
        "--stalled-streams",
        type=int,
        default=2000,
        help="streams whose clients stop reading, socket caps off and on (0 skips)",
    )
    parser.add_argument(
        "--stalled-events", type=int, default=500, help="events published to the stalled streams"
    )
    parser.add_argument("--stalled-event-bytes", type=int, default=1000)
    parser.add_argument(
        "--box-test-seconds",
        type=float,
        default=45.0,
        help="the box test's default mix for this long (load_tests/box.py; root and a memory"
        " cgroup; 0 skips)",
    )
    parser.add_argument(
        "--settle-seconds", type=float, default=10.0, help="longest wait for RSS to settle"
    )
    parser.add_argument(
        "--publish-rounds",
        type=int,
        default=3,
        help="alternating rounds of the publish step (0 skips it)",
    )
    parser.add_argument(
        "--publish-seconds", type=float, default=4.0, help="seconds per publish target per round"
    )
    parser.add_argument("--no-pin", action="store_true", help="do not pin server and generator")
    parser.add_argument(
        "--json",
        type=Path,
        default=None,
        help="where to write the JSON report (default load_tests/results/benchmark-<time>.json)",
    )
    args = parser.parse_args(argv)
    if args.rate <= 0 or args.duration <= 0 or args.window < 1 or args.publishers < 1:
        parser.error("--rate, --duration, --window and --publishers must be positive")
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    json_path = args.json or REPO_ROOT / "load_tests" / "results" / f"benchmark-{stamp}.json"
    return Options(
        servers=(args.only,) if args.only else SERVER_KINDS,
        connections=_sizes(args.connections),
        fanout_subscribers=args.fanout_subscribers,
        rate=args.rate,
        duration=args.duration,
        warmup=args.warmup,
        drain=args.drain,
        window=args.window,
        publishers=args.publishers,
        payload_bytes=args.payload_bytes,
        box_connections=args.box_connections,
        box_workers=args.box_workers,
        box_memory_mb=args.box_memory_mb,
        box_max_connections=args.box_max_connections,
        stalled_streams=args.stalled_streams,
        box_test_seconds=args.box_test_seconds,
        stalled_events=args.stalled_events,
        stalled_event_bytes=args.stalled_event_bytes,
        settle_seconds=args.settle_seconds,
        publish_rounds=args.publish_rounds,
        publish_seconds=args.publish_seconds,
        pin=not args.no_pin,
        json_path=json_path,
    )


def main(argv: list[str] | None = None) -> int:
    options = parse_args(argv)
    try:
        report = run(options)
    except BenchmarkError as exc:
        print(f"benchmark: {exc}", file=sys.stderr)
        return 1
    options.json_path.parent.mkdir(parents=True, exist_ok=True)
    options.json_path.write_text(json.dumps(report, indent=2) + "\n")
    print(render(report, options))
    print(f"\nJSON: {options.json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
