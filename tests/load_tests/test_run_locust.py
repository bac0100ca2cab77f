"""``python -m load_tests.run_locust``: a real headless Locust run against a server it starts.

Locust is gevent-based and patches the standard library on import, so it runs
in a subprocess here, never imported into pytest.
"""

from __future__ import annotations

import csv
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.server import REPO_ROOT

pytestmark = pytest.mark.integration

RUN_LIMIT_SECONDS = 30


def run_locust(*argv: str) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "load_tests.run_locust", *argv],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=RUN_LIMIT_SECONDS,
    )
    return result, time.monotonic() - started


def stats_rows(out: Path) -> dict[tuple[str, str], dict[str, str]]:
    with (out / "herald_stats.csv").open(newline="") as stats:
        return {(row["Type"], row["Name"]): row for row in csv.DictReader(stats)}


def test_headless_run_writes_csv_and_html_and_passes(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result, elapsed = run_locust(
        *("--users", "6", "--spawn-rate", "6", "--run-time", "6s", "--out", str(out), "--quiet"),
        # Short holds so subscribers resume with Last-Event-ID during the run. The
        # responses client asks one question every time: its first ask is produced and
        # every later one is a cache hit. (A random mix of fresh and repeated questions
        # left a 6 s run with no second repeat about one run in five.)
        *("--", "--hold-min", "1", "--hold-max", "2"),
        *("--cache-hit-ratio", "1", "--hit-pool", "1"),
    )
    output = result.stdout + result.stderr
    print(f"locust run: exit {result.returncode} in {elapsed:.1f} s")

    assert result.returncode == 0, output
    assert "thresholds met" in output
    rows = stats_rows(out)
    deliveries = rows[("SSE", "delivery")]
    print(
        f"deliveries {deliveries['Request Count']}, p95 {deliveries['95%']} ms, "
        f"streams opened {rows[('GET', 'GET /events/[channel]')]['Request Count']}"
    )
    assert int(deliveries["Request Count"]) > 0
    assert int(deliveries["Failure Count"]) == 0
    # 3 subscribers holding 1-2 s streams for 6 s: they reconnected, and resuming
    # produced no reset, gap or repeated event (those would be failure rows).
    assert int(rows[("GET", "GET /events/[channel]")]["Request Count"]) > 3
    assert not {("SSE", "reset"), ("SSE", "gap"), ("SSE", "order")} & rows.keys()
    assert int(rows[("RESPONSE", "response (produced)")]["Request Count"]) > 0
    assert int(rows[("RESPONSE", "response (cache hit)")]["Request Count"]) > 0
    assert int(rows[("GET", "GET /api/admin/metrics")]["Request Count"]) > 0
    batches = rows[("POST", "POST /events (batch)")]  # each answered 202 with its 100 ids
    assert int(batches["Request Count"]) > 0 and int(batches["Failure Count"]) == 0
    assert int(rows[("", "Aggregated")]["Failure Count"]) == 0
    html = (out / "report.html").read_text()
    assert "delivery" in html and "GET /events/[channel]" in html


def test_a_violated_latency_threshold_fails_the_run(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result, _ = run_locust(
        *("--users", "3", "--spawn-rate", "3", "--run-time", "4s", "--out", str(out), "--quiet"),
        *("--responders", "0", "--admins", "0", "--delivery-p95-ms", "0"),
    )
    output = result.stdout + result.stderr

    assert result.returncode == 1, output
    assert "threshold violated: p95 delivery latency" in output
    # Nothing else went wrong: the latency threshold alone decided.
    rows = stats_rows(out)
    assert int(rows[("SSE", "delivery")]["Request Count"]) > 0
    assert int(rows[("", "Aggregated")]["Failure Count"]) == 0


def test_a_violated_batch_threshold_fails_the_run(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result, _ = run_locust(
        *("--users", "3", "--spawn-rate", "3", "--run-time", "4s", "--out", str(out), "--quiet"),
        *("--responders", "0", "--admins", "0", "--publishers", "0", "--batch-p95-ms", "0"),
    )
    output = result.stdout + result.stderr

    assert result.returncode == 1, output
    assert "threshold violated: p95 batch answer" in output
    assert "threshold violated: p95 delivery" not in output
    rows = stats_rows(out)
    assert int(rows[("POST", "POST /events (batch)")]["Request Count"]) > 0
    assert int(rows[("", "Aggregated")]["Failure Count"]) == 0
