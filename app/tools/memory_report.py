"""``python -m app.tools.memory_report``: a running Herald's admin metrics, for people.

::

    python -m app.tools.memory_report --url http://127.0.0.1:8000 --token "$ADMIN_TOKEN"
    python -m app.tools.memory_report --watch 2          # refresh every 2 s, with a chart
    python -m app.tools.memory_report --budget --limit-mb 512 --workers 2

``--token`` defaults to the ``ADMIN_TOKEN`` environment variable, which keeps
the token out of ``ps`` listings and shell history. ``--watch`` redraws the
report every N seconds under a chart of the samples it has taken (RSS plus
socket memory, what the guard compares), drawn against the server's warning
and critical lines; ``--count`` stops after that
many reports (scripts and tests), Ctrl-C at any time.

Exit status: 0 when the last fetch worked, 1 when it did not (server down,
wrong token, admin API off), 2 for bad arguments. ``--budget`` needs no server:
it prints every bound's worst case for the settings in the environment and
their sum against the limit (:mod:`app.tools.memory_budget`), and exits 1 when they do
not fit.

Operator actions (``--cleanup``, ``--clear-cache``, ``--close-channel``,
``--drain``, ``--undrain``, ``--analyze``...) are in :mod:`app.tools.operate`.

Rendering is a set of pure functions of the metrics document, so tests check
the exact text without a terminal.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections import deque
from collections.abc import Sequence
from typing import TextIO

import httpx

from app.core.config import SettingsError, load_settings
from app.memory.limits import detect_memory_limit
from app.memory.units import format_bytes
from app.tools.admin_api import (
    DEFAULT_TIMEOUT_SECONDS,
    DEFAULT_URL,
    AdminRequestError,
    Metrics,
    fetch_metrics,
)
from app.tools.memory_budget import memory_budget, render_budget
from app.tools.operate import add_action_arguments, run_action

__all__ = [
    "main",
    "render_chart",
    "render_report",
    "render_workers",
]

CHART_HEIGHT = 8
CHART_WIDTH = 60
"""Samples shown (one column each); older ones scroll off the left."""

# One column of the chart is a stack of full blocks topped by one of these.
_EIGHTHS = " ▁▂▃▄▅▆▇█"
_FULL = "█"
_WARNING_LINE = "─"
_CRITICAL_LINE = "━"
_CLEAR_SCREEN = "\x1b[H\x1b[2J"

# --- rendering -------------------------------------------------------------


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    days, seconds = divmod(seconds, 86_400)
    hours, seconds = divmod(seconds, 3_600)
    minutes, seconds = divmod(seconds, 60)
    if days:
        return f"{days}d {hours}h {minutes:02d}m"
    if hours:
        return f"{hours}h {minutes:02d}m"
    return f"{minutes}m {seconds:02d}s"


def _percent(part: float, whole: float) -> str:
    return f"{100.0 * part / whole:.1f} %" if whole else "n/a"


def _joined(numbers: Sequence[object]) -> str:
    return "/".join(str(number) for number in numbers)


def _memory_lines(memory: Metrics) -> list[str]:
    thresholds = memory["thresholds"]
    trend = memory["trend"]
    cleanups = memory["cleanups"]
    admission = "REFUSED (503)" if memory["refusing"] else "accepted"
    slope = float(trend["slope_bytes_per_s"])
    lines = [
        f"Memory     {format_bytes(memory['rss_bytes'])} of {format_bytes(memory['limit_bytes'])}"
        f" ({memory['percent']:.1f} %, limit from {memory['limit_source']})"
        f"   level {str(memory['level']).upper()}   health {memory['health_score']}/100",
        f"           warning {format_bytes(thresholds['warning_bytes'])}"
        f" ({thresholds['warning_percent']:g} %)"
        f"   critical {format_bytes(thresholds['critical_bytes'])}"
        f" ({thresholds['critical_percent']:g} %)"
        f"   hysteresis {thresholds['hysteresis_percent']:g} %",
        f"           new streams and responses: {admission} (refused so far: {memory['refused']})",
        f"Trend      {'+' if slope >= 0 else '-'}{format_bytes(abs(slope))}/s"
        f" over {trend['samples']} samples ({trend['window_seconds']:g} s window),"
        f" connections {'steady' if trend['connections_steady'] else 'changing'}"
        f"   leak suspected: {'YES' if trend['leak_suspected'] else 'no'}",
        f"Cleanups   warning {cleanups['warning']}, critical {cleanups['critical']},"
        f" freed {format_bytes(cleanups['freed_bytes'])} in total",
    ]
    if "socket_bytes" in memory:  # servers from before socket memory was read lack it
        lines.insert(1, _sockets_line(memory))
    last = cleanups["last"]
    if last:
        steps = ", ".join(f"{step} {format_bytes(size)}" for step, size in last["freed"].items())
        lines.append(
            f"           last: {last['level']} at {last['uptime_s']:g} s, freed"
            f" {format_bytes(last['freed_bytes'])} ({steps}), gc {last['gc_collected']} objects,"
            f" rss {format_bytes(last['rss_before'])} -> {format_bytes(last['rss_after'])}"
        )
    return lines


_BOX_SOURCES = {
    "cgroup-v2": "the cgroup's working set, sockets included",
    "cgroup-v1": "the cgroup's working set plus its TCP buffers",
    "processes": "the master's and every worker's rss plus the kernel's TCP buffers",
}


def _sockets_line(memory: Metrics) -> str:
    source = _BOX_SOURCES.get(memory["box_source"], memory["box_source"])
    return (
        f"           box {format_bytes(memory['used_bytes'])} ({source}) is what the levels"
        f" compare; sockets {format_bytes(memory['socket_bytes'])} of it"
    )


def _cache_lines(cache: Metrics) -> list[str]:
    evictions = ", ".join(f"{reason} {count}" for reason, count in cache["evictions"].items())
    return [
        f"Cache      {cache['items']} items (max {cache['max_items']}),"
        f" {format_bytes(cache['bytes'])} of {format_bytes(cache['max_bytes'])};"
        f" hits {cache['hits']}, misses {cache['misses']}"
        f" (hit rate {100.0 * cache['hit_rate']:.1f} %)",
        f"           evictions: {evictions}; rejected {cache['rejected']}",
    ]


def _sse_lines(sse: Metrics) -> list[str]:
    lines = [
        f"SSE        {sse['connections']} connections on {sse['channels']} channels;"
        f" {sse['queued']} events queued ({format_bytes(sse['queued_bytes'])}"
        f" of {format_bytes(sse['queued_bytes_limit'])})",
        f"           published {sse['published']}, delivered {sse['delivered']},"
        f" dropped {sse['dropped']}, overflow disconnects {sse['overflow_disconnects']},"
        f" reaped {sse['reaped']}",
    ]
    history = sse.get("broker", {}).get("history")
    if history:
        lines.append(
            f"           history: {history['events']} events in {history['channels']} channels,"
            f" {format_bytes(history['bytes'])} of {format_bytes(history['max_bytes'])}"
        )
    return lines


def _responses_lines(responses: Metrics) -> list[str]:
    return [
        f"Responses  {responses['runs']} runs ({responses['running']} running),"
        f" {responses['followers']} followers, {format_bytes(responses['bytes'])};"
        f" started {responses['started']}, completed {responses['completed']},"
        f" failed {responses['failed']}, cache hits {responses['cache_hits']}"
    ]


def _process_lines(process: Metrics) -> list[str]:
    gc_stats = process["gc"]
    fds = process["open_fds"] if process["open_fds"] is not None else "n/a"
    return [
        f"Process    threads {process['threads']}, open fds {fds},"
        f" gc counts {_joined(gc_stats['counts'])},"
        f" collections {_joined(gc_stats['collections'])}"
    ]


def _worker_line(worker: Metrics, answering: Metrics) -> str:
    # Ages are differences of the workers' own wall times, measured against
    # the answering worker's live snapshot: no dependence on this machine's clock.
    age = float(answering["at"]) - float(worker["at"])
    seen = "this worker" if worker is answering else f"shared {max(0.0, age):.1f} s ago"
    return (
        f"           {worker['worker']}  {worker['connections']} connections,"
        f" published {worker['published']}, delivered {worker['delivered']},"
        f" rss {format_bytes(worker['rss_bytes'])}, level {worker['level']}  ({seen})"
    )


def render_workers(metrics: Metrics) -> list[str]:
    """The ``Workers`` and ``Total`` lines: every live worker, whichever one answered."""
    workers = metrics.get("workers")
    if not workers:  # a server from before workers were reported
        return []
    total = metrics["total"]
    exchange = metrics.get("exchange", {})
    answering = next((w for w in workers if w["worker"] == metrics["worker"]), workers[0])
    lines = [
        f"Workers    {total['workers']} reporting, this report from {metrics['worker']};"
        f" shared through {exchange.get('kind', '?')} ({exchange.get('state', '?')})"
    ]
    lines += [_worker_line(worker, answering) for worker in workers]
    lines += [
        f"Total      {total['connections']} connections, {total['channels']} channel"
        f" subscriptions; published {total['published']}, delivered {total['delivered']},"
        f" dropped {total['dropped']}, overflow disconnects {total['overflow_disconnects']},"
        f" reaped {total['reaped']}",
        f"           cache hits {total['cache_hits']}, misses {total['cache_misses']};"
        f" rss {format_bytes(total['rss_bytes'])} in all",
    ]
    return lines


def render_report(metrics: Metrics, url: str) -> str:
    """The whole report for one ``/api/admin/metrics`` document.

    The sections describe the worker that answered; ``Workers`` and ``Total``
    (servers that report them) cover every live worker.
    """
    process = metrics["process"]
    header = (
        f"Herald memory report  {url}  pid {process['pid']},"
        f" up {_duration(process['uptime_s'])}, Python {process['python']}"
    )
    lines = [header, ""]
    lines += _memory_lines(metrics["memory"])
    lines += _cache_lines(metrics["cache"])
    lines += _sse_lines(metrics["sse"])
    lines += _responses_lines(metrics["responses"])
    lines += _process_lines(process)
    lines += render_workers(metrics)
    return "\n".join(lines)


def _cell(fill: float, row_bottom: int) -> str:
    """The character of one column in the row whose bottom edge is ``row_bottom``."""
    if fill >= row_bottom + 1:
        return _FULL
    if fill <= row_bottom:
        return ""
    return _EIGHTHS[max(1, math.floor((fill - row_bottom) * (len(_EIGHTHS) - 1)))]


def render_chart(
    samples: Sequence[int],
    limit: int,
    warning: int,
    critical: int,
    *,
    height: int = CHART_HEIGHT,
    width: int = CHART_WIDTH,
) -> list[str]:
    """RSS samples as columns of blocks from 0 (bottom) to ``limit`` (top).

    The rows holding the warning and critical values carry a ``─`` / ``━`` line
    where no column reaches, labelled on the right, so a climbing RSS is seen
    approaching them. Values above the limit are drawn at the top.
    """
    if limit <= 0 or height <= 0:
        return []
    shown = list(samples)[-width:]
    fills = [min(height, max(0.0, value / limit * height)) for value in shown]

    def row_of(value: int) -> int:
        return min(height - 1, max(0, math.floor(value / limit * height)))

    critical_row = row_of(critical)
    # Close thresholds can fall in one row; the warning line then goes one lower
    # so both stay visible.
    warning_row = min(row_of(warning), critical_row - 1) if critical_row > 0 else -1
    lines = [f"{'limit ' + format_bytes(limit):>17} ┤"]
    for row_bottom in range(height - 1, -1, -1):
        line_char, label = "", ""
        if row_bottom == critical_row:
            line_char, label = _CRITICAL_LINE, f"critical {format_bytes(critical)}"
        elif row_bottom == warning_row:
            line_char, label = _WARNING_LINE, f"warning {format_bytes(warning)}"
        cells = [_cell(fill, row_bottom) or line_char or " " for fill in fills]
        cells += [line_char or " "] * (width - len(cells))
        lines.append(f"{'':>17} ┤{''.join(cells)} {label}".rstrip())
    lines.append(f"{'0 B':>17} └{'─' * width}")
    return lines


def _chart_for(samples: Sequence[int], metrics: Metrics, every: float) -> list[str]:
    memory = metrics["memory"]
    thresholds = memory["thresholds"]
    what = "RSS + sockets" if "used_bytes" in memory else "RSS"
    title = f"{what}, last {len(samples)} samples, every {every:g} s: {format_bytes(samples[-1])}"
    return [
        "",
        title,
        *render_chart(
            samples,
            memory["limit_bytes"],
            thresholds["warning_bytes"],
            thresholds["critical_bytes"],
        ),
    ]


# --- command line ------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m app.tools.memory_report",
        description="Print a running Herald's admin metrics as a readable report.",
    )
    parser.add_argument("--url", default=DEFAULT_URL, help=f"server base URL ({DEFAULT_URL})")
    parser.add_argument(
        "--token",
        default=os.environ.get("ADMIN_TOKEN"),
        help="admin token (default: the ADMIN_TOKEN environment variable)",
    )
    parser.add_argument(
        "--watch",
        type=_positive_float,
        metavar="SECONDS",
        help="refresh every SECONDS, with an RSS chart against the warning and critical lines",
    )
    parser.add_argument(
        "--count", type=_positive_int, metavar="N", help="with --watch: stop after N reports"
    )
    parser.add_argument(
        "--timeout",
        type=_positive_float,
        default=DEFAULT_TIMEOUT_SECONDS,
        help=f"HTTP timeout in seconds ({DEFAULT_TIMEOUT_SECONDS:g})",
    )
    budget = parser.add_argument_group("budget (no server needed)")
    budget.add_argument(
        "--budget",
        action="store_true",
        help="print the memory budget of a box for the settings in the environment",
    )
    budget.add_argument(
        "--limit-mb",
        type=_positive_float,
        help="with --budget: the box's limit (default: MEMORY_LIMIT_MB, else the cgroup's)",
    )
    budget.add_argument(
        "--workers",
        type=_positive_int,
        default=int(os.environ.get("WEB_CONCURRENCY", "1")),
        help="with --budget: workers sharing the box (default: WEB_CONCURRENCY, else 1)",
    )
    add_action_arguments(parser)
    return parser


def _print_budget(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(exc, file=err)
        return 2
    limit = detect_memory_limit(args.limit_mb or settings.memory_limit_mb)
    budget = memory_budget(settings, limit.bytes, args.workers)
    print(render_budget(budget), file=out)
    return 0 if budget.fits else 1


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
    return value


def _watch(client: httpx.Client, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    samples: deque[int] = deque(maxlen=CHART_WIDTH)
    clear = out.isatty()
    reports = 0
    status = 0
    while args.count is None or reports < args.count:
        if reports:
            time.sleep(args.watch)
        reports += 1
        try:
            metrics = fetch_metrics(client, args.url, args.token, args.timeout)
        except AdminRequestError as exc:
            print(f"memory_report: {exc}", file=err, flush=True)
            status = 1
            continue
        status = 0
        memory = metrics["memory"]
        samples.append(int(memory.get("used_bytes", memory["rss_bytes"])))
        text = "\n".join(
            [render_report(metrics, args.url), *_chart_for(samples, metrics, args.watch)]
        )
        print((_CLEAR_SCREEN if clear else "") + text + "\n", file=out, flush=True)
    return status


def main(
    argv: Sequence[str] | None = None, *, out: TextIO | None = None, err: TextIO | None = None
) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    args = _parser().parse_args(argv)
    if args.budget:
        return _print_budget(args, out, err)
    with httpx.Client() as client:
        acted = run_action(client, args, out, err)
        if acted is not None:
            return acted
        if args.watch is None:
            try:
                metrics = fetch_metrics(client, args.url, args.token, args.timeout)
            except AdminRequestError as exc:
                print(f"memory_report: {exc}", file=err)
                return 1
            print(render_report(metrics, args.url), file=out)
            return 0
        try:
            return _watch(client, args, out, err)
        except KeyboardInterrupt:
            return 0


if __name__ == "__main__":
    sys.exit(main())
