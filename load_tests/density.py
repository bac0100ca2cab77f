"""What an idle stream costs: RSS per stream of Herald and of the raw floor hub, one run.

Usage (from the repository root)::

    python -m load_tests.density                          # every kind, 10,000 streams
    python -m load_tests.density --before main            # and the same kinds on main's code
    python -m load_tests.density --kinds one --trace 2000 # where the bytes of one kind are

Kinds: ``floor`` (``load_tests/floor_hub.py``: one ``asyncio.Protocol`` per connection and a
set of transports), ``one`` (``GET /events/<channel>``), ``three`` (``GET /events?channel=…``
x 3), ``mercure`` (an anonymous Mercure subscription to one topic), each served by ``python -m
app`` (``--server gunicorn``: the Herald gunicorn worker, one worker; ``--server uvicorn``:
plain ``uvicorn app.main:app``, whose streams stay on the ASGI path) with the memory broker.

For each kind, one server process (``load_tests/density_server.py``): a warm-up of
``--warmup`` streams opened and closed, then the RSS of the server and its children once it has
settled, then ``--streams`` streams opened from ``--client-processes`` processes of their own,
and once every stream has had a heartbeat (``SSE_PING_SECONDS`` is short for the run; the floor
hub sends none, so its streams only need their head), the RSS again: (after - before) / streams.

Kernel memory: ``/proc/slabinfo`` (socket, inode, file, dentry and epoll objects) and the
TCP buffer pages of ``/proc/net/sockstat`` are read at the same two moments (root only; other
work on the machine moves them too). They hold both ends of every stream (the clients run on
this machine), so the per-stream figure is halved for the server's end.

``--before REV`` serves ``git archive REV`` of this repository, unpacked in a temporary
directory, for the Herald kinds, right after each kind on this checkout's code.

``--trace N`` instead runs each kind under tracemalloc (25 frames) with N streams and prints
what those streams hold by the allocating line (after a full collection).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from load_tests.benchmark import server_processes, settled_rss
from load_tests.generator import raise_open_file_limit
from tests.support.server import REPO_ROOT, ServerProcess

__all__ = [
    "kernel_per_end",
    "main",
    "owner_of",
    "parse_slabinfo",
    "parse_sockstat_tcp_pages",
    "per_stream",
    "render",
]

KIB = 1024
LAUNCHER = Path(__file__).with_name("density_server.py")
PATHS = {
    "floor": "/events/bench",
    "one": "/events/bench",
    "three": "/events?channel=bench-a&channel=bench-b&channel=bench-c",
    "mercure": "/.well-known/mercure?match=https%3A%2F%2Fexample.com%2Fbench",
}
KINDS = tuple(PATHS)
PING_SECONDS = 3
# Plain uvicorn as an operator would run it: its own protocol, so every stream stays on
# the ASGI path.
UVICORN_ARGS = (
    "--host",
    "127.0.0.1",
    "--loop",
    "uvloop",
    "--http",
    "httptools",
    "--log-level",
    "warning",
)
OPEN_CONCURRENCY = 256
SLABS = (
    "TCP",
    "TCPv6",
    "request_sock_TCP",
    "sock_inode_cache",
    "filp",
    "dentry",
    "eventpoll_epi",
    "eventpoll_pwq",
    "skbuff_head_cache",
    "kmalloc-cg-4k",
    "kmalloc-cg-2k",
    "kmalloc-cg-1k",
    "kmalloc-cg-512",
    "kmalloc-cg-256",
    "kmalloc-cg-192",
    "kmalloc-cg-64",
    "kmalloc-cg-32",
)


# --- the client processes ---


class _Stream(asyncio.Protocol):
    __slots__ = ("got_head", "got_ping", "request", "transport")

    def __init__(self, request: bytes) -> None:
        self.request = request
        self.got_head = asyncio.get_running_loop().create_future()
        self.got_ping = False
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment, unused-ignore]
        transport.write(self.request)  # type: ignore[attr-defined, unused-ignore]

    def data_received(self, data: bytes) -> None:
        if not self.got_head.done():
            self.got_head.set_result(None)
        if b": ping" in data:
            self.got_ping = True

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.got_head.done():
            self.got_head.set_exception(ConnectionError("closed before its head"))


async def _client(port: int) -> None:
    loop = asyncio.get_running_loop()
    streams: list[_Stream] = []
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        command = json.loads(line)
        if command["cmd"] == "open":
            request = (
                f"GET {command['path']} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                "Accept: text/event-stream\r\n\r\n"
            ).encode()
            gate = asyncio.Semaphore(OPEN_CONCURRENCY)

            async def one(req: bytes = request, sem: asyncio.Semaphore = gate) -> None:
                async with sem:
                    _, stream = await loop.create_connection(
                        lambda: _Stream(req), "127.0.0.1", port
                    )
                    streams.append(stream)
                    await asyncio.wait_for(stream.got_head, 60)

            await asyncio.gather(*(one() for _ in range(command["count"])))
            reply: dict[str, Any] = {"open": len(streams)}
        elif command["cmd"] == "pinged":
            reply = {"pinged": sum(s.got_ping for s in streams)}
        else:  # close
            for stream in streams:
                if stream.transport is not None:
                    stream.transport.close()
            streams.clear()
            await asyncio.sleep(0.2)
            reply = {"open": 0}
        print(json.dumps(reply), flush=True)


class Clients:
    """``--client-processes`` processes of this module, each holding its share of streams."""

    def __init__(self, port: int, processes: int) -> None:
        self.procs = [
            subprocess.Popen(
                [
                    "nice",
                    "-n",
                    "5",
                    sys.executable,
                    "-m",
                    "load_tests.density",
                    "--client",
                    str(port),
                ],
                cwd=REPO_ROOT,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            for _ in range(processes)
        ]

    def call(self, **command: Any) -> list[dict[str, Any]]:
        for proc in self.procs:
            assert proc.stdin is not None
            proc.stdin.write(json.dumps(command) + "\n")
            proc.stdin.flush()
        replies = []
        for proc in self.procs:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            if not line:
                raise RuntimeError(f"a client process exited with {proc.wait()}")
            replies.append(json.loads(line))
        return replies

    def open(self, path: str, total: int) -> None:
        share, extra = divmod(total, len(self.procs))
        for n, proc in enumerate(self.procs):
            assert proc.stdin is not None
            count = share + (1 if n < extra else 0)
            proc.stdin.write(json.dumps({"cmd": "open", "path": path, "count": count}) + "\n")
            proc.stdin.flush()
        for proc in self.procs:
            assert proc.stdout is not None
            if not proc.stdout.readline():
                raise RuntimeError(f"a client process failed to open streams: {proc.wait()}")

    def wait_pinged(self, total: int, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        pinged = 0
        while time.monotonic() < deadline:
            pinged = sum(reply["pinged"] for reply in self.call(cmd="pinged"))
            if pinged >= total:
                break
            time.sleep(0.5)
        return pinged

    def close(self) -> None:
        for proc in self.procs:
            with contextlib.suppress(OSError):
                assert proc.stdin is not None
                proc.stdin.close()
        for proc in self.procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


# --- kernel figures ---


def parse_slabinfo(text: str) -> dict[str, int]:
    """Bytes of the slabs in :data:`SLABS` (active objects x object size), from the text of
    ``/proc/slabinfo`` (two header lines, then one slab a line)."""
    found: dict[str, int] = {}
    for line in text.splitlines()[2:]:
        fields = line.split()
        if fields and fields[0] in SLABS:
            found[fields[0]] = int(fields[1]) * int(fields[3])
    return found


def parse_sockstat_tcp_pages(text: str) -> int:
    """The TCP buffer pages (``mem``) of ``/proc/net/sockstat``'s text."""
    for line in text.splitlines():
        if line.startswith("TCP:"):
            fields = line.split()
            return int(fields[fields.index("mem") + 1])
    return 0


def slab_bytes() -> dict[str, int]:
    """The socket's kernel slabs now; empty when ``/proc/slabinfo`` is not readable (not root)."""
    try:
        return parse_slabinfo(Path("/proc/slabinfo").read_text())
    except OSError:
        return {}


def tcp_buffer_bytes() -> int:
    pages = parse_sockstat_tcp_pages(Path("/proc/net/sockstat").read_text())
    return pages * os.sysconf("SC_PAGE_SIZE")


def per_stream(
    streams: int,
    rss: tuple[int, int],
    slabs: tuple[dict[str, int], dict[str, int]],
    tcp: tuple[int, int],
) -> dict[str, Any]:
    """The figures of one kind from the readings before and after its streams opened: RSS
    per stream, and the kernel's per server end (the clients' ends are on this machine
    too, and cost the same: half of each kernel difference is the server's)."""
    (rss_before, rss_after), (slabs_before, slabs_after), (tcp_before, tcp_after) = rss, slabs, tcp
    return {
        "rss_idle_bytes": rss_before,
        "rss_bytes": rss_after,
        "per_stream_bytes": round((rss_after - rss_before) / streams, 1),
        "kernel_slab_per_end_bytes": {
            name: round((slabs_after.get(name, 0) - slabs_before.get(name, 0)) / streams / 2, 1)
            for name in slabs_after
        },
        "kernel_tcp_buffers_per_end_bytes": round((tcp_after - tcp_before) / streams / 2, 1),
    }


def kernel_per_end(result: dict[str, Any]) -> float:
    return float(
        sum(result["kernel_slab_per_end_bytes"].values())
        + result["kernel_tcp_buffers_per_end_bytes"]
    )


# --- the measurement ---


@contextlib.contextmanager
def checkout(rev: str | None) -> Iterator[Path | None]:
    """``git archive rev`` unpacked in a temporary directory (no worktree is added)."""
    if rev is None:
        yield None
        return
    with tempfile.TemporaryDirectory(prefix="herald-before-") as tmp:
        archive = subprocess.run(
            ["git", "archive", "--format=tar", rev], cwd=REPO_ROOT, check=True, capture_output=True
        ).stdout
        tar_path = Path(tmp) / "code.tar"
        tar_path.write_bytes(archive)
        with tarfile.open(tar_path) as tar:
            tar.extractall(tmp, filter="data")
        tar_path.unlink()
        yield Path(tmp)


def server_env(streams: int) -> dict[str, str]:
    return {
        "LOG_LEVEL": "warning",
        "BROKER_URL": "memory://",
        "SSE_MAX_CONNECTIONS": str(streams + 2000),
        "MERCURE_SUBSCRIPTIONS_MAX": str(streams + 2000),
        "MEMORY_LIMIT_MB": str(64 * 1024),
        "SSE_PING_SECONDS": str(PING_SECONDS),
        "PUBLISH_TOKEN": "",
        "ADMIN_TOKEN": "",
        "JWT_SECRET": "",
        "JWT_PUBLIC_KEY": "",
        "ALLOW_ANONYMOUS": "true",
        "SSE_MAX_CONNECTIONS_PER_IP": "0",
        "PUBLISH_RATE_PER_SECOND": "0",
        "WEB_CONCURRENCY": "1",
        "GUNICORN_MAX_REQUESTS": "0",
    }


def measure(
    kind: str, options: argparse.Namespace, code: Path | None, trace: int = 0
) -> dict[str, Any]:
    cwd = code or REPO_ROOT
    server_kind = "floor" if kind == "floor" else options.server
    env = server_env(trace or options.streams)
    env["PYTHONPATH"] = str(cwd)
    trace_out = Path(tempfile.mkstemp(prefix="density-trace-", suffix=".json")[1])
    if trace:
        env |= {"DENSITY_TRACE_FRAMES": "25", "DENSITY_TRACE_OUT": str(trace_out)}
    argv = ["nice", "-n", "5", sys.executable, str(LAUNCHER), server_kind]
    server = ServerProcess(env, argv, cwd=cwd)
    if server_kind == "gunicorn":
        server.argv = [*argv, "--bind", f"127.0.0.1:{server.port}"]
    elif server_kind == "uvicorn":
        server.argv = [*argv, *UVICORN_ARGS, "--port", str(server.port)]
    server.start()
    clients = Clients(server.port, options.client_processes)
    try:
        time.sleep(1.0)  # gunicorn's worker, once /health answers from it
        processes = server_processes(server)
        path = PATHS[kind]
        if options.warmup:
            clients.open(path, options.warmup)
            clients.call(cmd="close")
            time.sleep(1.0)
        total = trace or options.streams
        if trace:
            server.signal(signal.SIGUSR1)
            time.sleep(1.0)
        idle = settled_rss(processes, options.settle_seconds)
        slabs_before, tcp_before = slab_bytes(), tcp_buffer_bytes()
        started = time.monotonic()
        clients.open(path, total)
        opened = time.monotonic() - started
        pinged = total if kind == "floor" else clients.wait_pinged(total, 4 * PING_SECONDS + 30)
        rss = settled_rss(processes, options.settle_seconds)
        slabs_after, tcp_after = slab_bytes(), tcp_buffer_bytes()
        result: dict[str, Any] = {
            "kind": kind,
            "code": "before" if code else "this",
            "server": server_kind,
            "streams": total,
            "pinged": pinged,
            "open_seconds": round(opened, 1),
            **per_stream(total, (idle, rss), (slabs_before, slabs_after), (tcp_before, tcp_after)),
        }
        if trace:
            server.signal(signal.SIGUSR1)
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and not trace_out.read_text():
                time.sleep(0.5)
            result["trace"] = json.loads(trace_out.read_text())
        return result
    finally:
        clients.close()
        server.close()
        trace_out.unlink(missing_ok=True)


def _kib(value: float) -> str:
    return f"{value / KIB:.2f} KiB"


def render(results: list[dict[str, Any]]) -> str:
    lines = [
        f"{'kind':8} {'code':7} {'server':8} {'streams':>8} {'pinged':>8} {'RSS/stream':>12}"
        f" {'kernel/end':>12}"
    ]
    for r in results:
        kernel = kernel_per_end(r)
        lines.append(
            f"{r['kind']:8} {r['code']:7} {r['server']:8} {r['streams']:>8,} {r['pinged']:>8,}"
            f" {_kib(r['per_stream_bytes']):>12} {_kib(kernel):>12}"
        )
    return "\n".join(lines)


# Who holds what an allocation made: the first rule matching a frame, most recent first.
OWNERS = (
    (r"uvicorn/_compat\.py", "transport and socket objects (made by the loop)"),
    (r"uvicorn/protocols/utils\.py", "addresses (peer and local name tuples, client host)"),
    (
        r"app/serving/protocols\.py:2[3-6]\d\b",
        "detached stream's protocol and its place in server_state.connections",
    ),
    (r"app/wire/event_id\.py:50\b", "the stream's cursor (a parsed event id)"),
    (
        r"flow_control\.py|httptools_impl\.py:(6\d|9\d|10\d)\b|uvicorn/server\.py:125"
        r"|app/serving/protocols\.py:(6\d|14\d)\b",
        "HTTP protocol object (parser, FlowControl, addresses)",
    ),
    (r"httptools_impl\.py:(2[89]\d)\b", "RequestResponseCycle (and its asyncio.Event)"),
    (r"httptools_impl\.py:(17\d|2[0-7]\d)\b|app/serving/protocols\.py:16\d", "scope, headers, URL"),
    (
        r"stream_response\.py:(273|47\d)\b|httptools_impl\.py:5[6-8]\d",
        "disconnect watcher (task, frame, receive's wait)",
    ),
    (r"httptools_impl\.py:(30\d|42\d)\b", "ASGI task and the outer coroutine frames"),
    (
        r"fastapi/|starlette/(routing|middleware|_exception|applications)",
        "FastAPI routing and middleware frames",
    ),
    (
        r"app/asgi\.py|app/api/|starlette/(requests|datastructures)|app/auth/",
        "fast path: its frame, Request, query, grants",
    ),
    (
        r"starlette/responses|sse_starlette|app/mercure/stream\.py:(6\d|7\d)\b",
        "response object (HeraldStreamResponse, headers)",
    ),
    (
        r"app/sse/connection\.py|app/sse/hub\.py:5[2-5]\d\b|contextlib\.py",
        "Connection, hub.open context",
    ),
    (r"app/sse/hub\.py", "hub registries (sets)"),
    (r"stream_response\.py", "stream coroutine frames"),
    (r"app/mercure", "Mercure subscriptions and registry"),
    (r"app/broker|app/wire", "broker and channel state"),
)


def owner_of(frames: list[str]) -> str:
    for frame in frames:
        for pattern, owner in OWNERS:
            if re.search(pattern, frame):
                return owner
    return "other"


def owner_table(result: dict[str, Any]) -> dict[str, float]:
    total = result["streams"]
    owners: dict[str, float] = {}
    for row in result["trace"]["rows"]:
        owner = owner_of(row["frames"])
        owners[owner] = owners.get(owner, 0.0) + row["size_diff"] / total
    return dict(sorted(owners.items(), key=lambda item: -item[1]))


def render_trace(result: dict[str, Any]) -> str:
    trace = result["trace"]
    total = result["streams"]
    lines = [
        f"{result['kind']} ({result['code']}): {_kib(trace['total'] / total)} per stream traced"
    ]
    for owner, size in owner_table(result).items():
        lines.append(f"  {size:8.1f} B  {owner}")
    lines.append("  by allocating stack:")
    for row in trace["rows"]:
        if abs(row["size_diff"]) / total < 16:
            continue
        frames = [f for f in row["frames"] if "/asyncio/" not in f and "<frozen" not in f][
            :3
        ] or row["frames"][:1]
        where = " <- ".join(
            f.replace(str(REPO_ROOT) + "/", "").split("site-packages/")[-1] for f in frames
        )
        lines.append(
            f"  {row['size_diff'] / total:8.1f} B  {row['count_diff'] / total:5.2f}x  {where}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m load_tests.density", description=__doc__)
    parser.add_argument("--client", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument("--server", choices=("app", "gunicorn", "uvicorn"), default="app")
    parser.add_argument("--streams", type=int, default=10_000)
    parser.add_argument("--warmup", type=int, default=1_000)
    parser.add_argument("--client-processes", type=int, default=2)
    parser.add_argument("--settle-seconds", type=float, default=10.0)
    parser.add_argument("--before", help="also serve this git revision's code (Herald kinds)")
    parser.add_argument("--trace", type=int, default=0, help="tracemalloc run with N streams")
    parser.add_argument("--json", type=Path)
    options = parser.parse_args(argv)
    if options.client is not None:
        raise_open_file_limit()
        try:
            import uvloop

            uvloop.run(_client(options.client))
        except ImportError:
            asyncio.run(_client(options.client))
        return 0
    raise_open_file_limit()
    kinds = [k for k in options.kinds.split(",") if k]
    results = []
    load = os.getloadavg()
    with checkout(options.before) as before:
        for kind in kinds:
            for code in (None, before) if kind != "floor" and before else (None,):
                print(f"[density] {kind} ({'before' if code else 'this'})", file=sys.stderr)
                result = measure(kind, options, code, options.trace)
                results.append(result)
                if options.trace:
                    print(render_trace(result), flush=True)
    report = {
        "loadavg_start": load,
        "loadavg_end": os.getloadavg(),
        "options": {k: str(v) for k, v in vars(options).items()},
        "results": results,
    }
    if options.json:
        options.json.write_text(json.dumps(report, indent=2) + "\n")
    print(render(results))
    print(f"load average {load[0]:.2f} at the start, {os.getloadavg()[0]:.2f} at the end")
    return 0


if __name__ == "__main__":
    sys.exit(main())
