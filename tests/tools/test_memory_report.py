"""``python -m app.tools.memory_report``: the chart as exact text, and the tool run as a
subprocess against real servers (report, watch mode, every way it can fail)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator

import pytest

from app.fleet.aggregate import total
from app.tools.memory_report import render_chart, render_workers
from tests.conftest import FAST_TIMERS
from tests.support.server import REPO_ROOT, ServerProcess, free_port
from tests.support.snapshots import MB, make_snapshot

TOKEN = "report-token"


def report(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if k != "ADMIN_TOKEN"}
    return subprocess.run(
        [sys.executable, "-m", "app.tools.memory_report", *args],
        cwd=REPO_ROOT,
        env={**environment, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )


# --- the chart ------------------------------------------------------------------------


def test_chart_draws_columns_against_the_threshold_lines() -> None:
    lines = render_chart([0, 100, 250, 400, 500], 400, 200, 300, height=4, width=5)
    assert lines == [
        "      limit 400 B ┤",
        "                  ┤━━━██ critical 300 B",
        "                  ┤──▄██ warning 200 B",
        "                  ┤  ███",
        "                  ┤ ████",
        "              0 B └─────",
    ]


def test_chart_keeps_both_lines_when_thresholds_share_a_row() -> None:
    lines = render_chart([], 400, 330, 340, height=4, width=3)
    assert lines[1].endswith("┤━━━ critical 340 B")
    assert lines[2].endswith("┤─── warning 330 B")


def test_chart_shows_only_the_newest_samples() -> None:
    lines = render_chart([400, 400, 0, 0], 400, 200, 300, height=4, width=2)
    assert all("█" not in line for line in lines)  # the two full columns scrolled off


# --- workers and total ----------------------------------------------------------------


def test_workers_and_total_close_the_report() -> None:
    at = 1_700_000_000.0
    one = make_snapshot(pid=1, at=at, connections=13, published=10, delivered=40, rss_bytes=60 * MB)
    two = make_snapshot(pid=2, at=at - 1.25, connections=17, published=1, delivered=4)
    document = {
        "worker": "box:1",
        "workers": [one, two],
        "total": {**total([one, two]), "cache_hits": 6, "cache_misses": 2},
        "exchange": {"kind": "files", "state": "ok"},
    }
    assert render_workers(document) == [
        "Workers    2 reporting, this report from box:1; shared through files (ok)",
        "           box:1  13 connections, published 10, delivered 40, rss 60.0 MB,"
        " level normal  (this worker)",
        "           box:2  17 connections, published 1, delivered 4, rss 50.0 MB,"
        " level normal  (shared 1.2 s ago)",
        "Total      30 connections, 0 channel subscriptions; published 11, delivered 44,"
        " dropped 0, overflow disconnects 0, reaped 0",
        "           cache hits 6, misses 2; rss 110.0 MB in all",
    ]


def test_a_server_without_workers_is_reported_as_before() -> None:
    assert render_workers({"memory": {}}) == []


# --- the tool against real servers ------------------------------------------------------


@pytest.fixture(scope="module")
def report_server() -> Iterator[ServerProcess]:
    server = ServerProcess({**FAST_TIMERS, "ADMIN_TOKEN": TOKEN}).start()
    yield server
    server.close()


@pytest.mark.integration
def test_report_of_a_healthy_server(report_server: ServerProcess) -> None:
    result = report("--url", report_server.base_url, "--token", TOKEN)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"Herald memory report  {report_server.base_url}  pid ")
    assert f"pid {report_server.process.pid}," in lines[0]  # type: ignore[union-attr]
    text = result.stdout
    assert "level NORMAL" in text
    assert "new streams and responses: accepted" in text
    assert "limit from default" in text or "limit from cgroup" in text
    assert "leak suspected: no" in text
    assert "           box " in text and "is what the levels compare" in text
    sections = ("Memory ", "Trend ", "Cleanups ", "Cache ", "SSE ", "Responses ", "Process ")
    for section in (*sections, "Workers ", "Total "):
        assert any(line.startswith(section) for line in lines), section
    assert "Workers    1 reporting, this report from " in text
    assert "shared through local (ok)" in text
    assert "┤" not in text  # the chart is for --watch


@pytest.mark.integration
def test_token_from_the_environment(report_server: ServerProcess) -> None:
    result = report("--url", report_server.base_url, env={"ADMIN_TOKEN": TOKEN})
    assert result.returncode == 0, result.stderr
    assert "level NORMAL" in result.stdout


@pytest.mark.integration
def test_watch_refreshes_with_a_chart(report_server: ServerProcess) -> None:
    result = report(
        "--url", report_server.base_url, "--token", TOKEN, "--watch", "0.2", "--count", "3"
    )
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert text.count("Herald memory report") == 3
    assert "RSS + sockets, last 3 samples, every 0.2 s:" in text
    assert "RSS + sockets, last 1 samples" in text  # the chart grows with each refresh
    last_chart = text.rsplit("RSS + sockets, last 3 samples", 1)[1]
    assert "━ critical " in last_chart and "─ warning " in last_chart
    assert any(block in last_chart for block in "▁▂▃▄▅▆▇█")
    assert "\x1b[" not in text  # no screen clearing when stdout is not a terminal


@pytest.mark.integration
def test_report_of_a_critical_server(server_factory: Callable[..., ServerProcess]) -> None:
    server = server_factory(ADMIN_TOKEN=TOKEN, MEMORY_LIMIT_MB="40")
    result = report("--url", server.base_url, "--token", TOKEN)
    assert result.returncode == 0, result.stderr
    assert "level CRITICAL" in result.stdout
    assert "health 10/100" in result.stdout
    assert "new streams and responses: REFUSED (503)" in result.stdout
    assert "last: critical at " in result.stdout
    assert "limit from setting" in result.stdout


@pytest.mark.integration
@pytest.mark.parametrize(
    ("token", "message"),
    [
        ("wrong", "answered 403: invalid admin token"),
        (None, "answered 401: missing admin token"),
    ],
)
def test_bad_or_missing_token(
    report_server: ServerProcess, token: str | None, message: str
) -> None:
    args = ["--url", report_server.base_url] + (["--token", token] if token else [])
    result = report(*args)
    assert result.returncode == 1
    assert result.stdout == ""
    assert message in result.stderr
    assert TOKEN not in result.stderr


@pytest.mark.integration
def test_admin_api_off(herald: ServerProcess) -> None:
    result = report("--url", herald.base_url, "--token", TOKEN)
    assert result.returncode == 1
    assert "answered 503: admin API is disabled: set ADMIN_TOKEN" in result.stderr


def test_server_down() -> None:
    result = report("--url", f"http://127.0.0.1:{free_port()}", "--token", TOKEN, "--timeout", "2")
    assert result.returncode == 1
    assert "cannot reach" in result.stderr


def test_watch_keeps_going_when_a_fetch_fails() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = report("--url", url, "--token", TOKEN, "--watch", "0.05", "--count", "2")
    assert result.returncode == 1
    assert result.stderr.count("cannot reach") == 2


@pytest.mark.parametrize("args", [["--watch", "0"], ["--watch", "-1"], ["--count", "0"]])
def test_bad_arguments(args: list[str]) -> None:
    result = report(*args)
    assert result.returncode == 2
    assert "must be > 0" in result.stderr
