"""``python -m load_tests.benchmark`` end to end with tiny sizes: every figure present and sane."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any

import pytest

from load_tests.benchmark import box_test_lines
from tests.support.server import REPO_ROOT

pytestmark = pytest.mark.integration

RUN_LIMIT_SECONDS = 90
CONNECTIONS = 50
SUBSCRIBERS = 100
BOX_CONNECTIONS = 60
STALLED = 20
STALLED_EVENTS = 600  # enough to cut a stalled stream with the defaults
KIB = 1024
MIB = 1024 * 1024


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    json_path = tmp_path_factory.mktemp("benchmark") / "report.json"
    started = time.monotonic()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "load_tests.benchmark",
            *("--connections", str(CONNECTIONS), "--fanout-subscribers", str(SUBSCRIBERS)),
            *("--duration", "2", "--warmup", "0.5", "--drain", "5", "--rate", "20"),
            *("--box-connections", str(BOX_CONNECTIONS), "--settle-seconds", "2"),
            *("--stalled-streams", str(STALLED), "--stalled-events", str(STALLED_EVENTS)),
            *("--publish-rounds", "0"),  # its tool has a smoke test of its own
            *("--box-test-seconds", "0"),  # so has the box test (tests/load_tests/test_box.py)
            *("--json", str(json_path)),
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=RUN_LIMIT_SECONDS,
    )
    print(result.stdout)
    print(f"benchmark smoke run: {time.monotonic() - started:.1f} s")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "herald/baseline" in result.stdout
    document: dict[str, Any] = json.loads(json_path.read_text())
    return document


@pytest.mark.parametrize("kind", ["herald", "baseline"])
def test_idle_connection_memory(report: dict[str, Any], kind: str) -> None:
    idle = report["results"][kind]["idle_connections"]
    [step] = idle["steps"]
    assert step["connections"] == CONNECTIONS
    assert 20 * MIB < idle["rss_idle_bytes"] < 1024 * MIB
    assert step["rss_bytes"] >= idle["rss_idle_bytes"] - MIB
    # Noisy at 50 streams, but a stream costs kilobytes, not nothing and not megabytes.
    assert -50_000 < step["per_connection_bytes"] < 500_000


@pytest.mark.parametrize("kind", ["herald", "baseline"])
def test_fanout_counts_every_delivery(report: dict[str, Any], kind: str) -> None:
    fanout = report["results"][kind]["throughput"]["fanout"]
    assert fanout["subscribers"] == SUBSCRIBERS
    assert fanout["deliveries"] > 0 and fanout["deliveries_per_second"] > 0
    assert fanout["events_per_second"] > 0
    assert fanout["disconnects"] == 0 and fanout["drained"]
    assert 0 < fanout["generator_cpu"] < 2
    assert fanout["server_cpu"] is None or 0 < fanout["server_cpu"] < 2
    check = fanout["parser_check"]
    assert check["checked"] and check["agree"] and check["counted"] > 0
    # Both servers deliver the generator's payload as the event data, unchanged.
    assert set(json.loads(check["first_data"])) == {"s", "t", "p"}


@pytest.mark.parametrize("kind", ["herald", "baseline"])
def test_latency_at_a_fixed_rate(report: dict[str, Any], kind: str) -> None:
    latency = report["results"][kind]["throughput"]["latency"]
    assert latency["subscribers"] == SUBSCRIBERS
    assert latency["published"] == 40  # 20 events/s for 2 s
    assert latency["expected_deliveries"] == 40 * SUBSCRIBERS
    assert latency["deliveries"] == latency["expected_deliveries"]
    assert latency["delivered_ratio"] == 1.0 and latency["drained"]
    assert 0 < latency["p50_ms"] <= latency["p99_ms"] <= latency["max_ms"] < 10_000
    assert latency["parser_check"]["agree"]


@pytest.mark.parametrize("kind", ["herald", "baseline"])
def test_two_workers_hold_every_stream(report: dict[str, Any], kind: str) -> None:
    box = report["results"][kind]["box"]
    assert box["workers"] == 2
    assert box["held"] == BOX_CONNECTIONS and box["failed"] == 0
    roles = [process["role"] for process in box["processes"]]
    assert roles.count("master") == 1 and roles.count("worker") == 2
    assert sum(process["connections"] for process in box["processes"]) == BOX_CONNECTIONS
    assert box["total_rss_bytes"] == pytest.approx(
        sum(process["rss_bytes"] for process in box["processes"]), rel=0.05
    )
    assert box["total_rss_bytes"] > 40 * MIB


def test_stalled_clients_before_and_after(report: dict[str, Any]) -> None:
    stalled = report["results"]["herald"]["stalled"]
    before, after = stalled["before"], stalled["after"]
    assert before["streams"] == after["streams"] == STALLED
    # Before: nothing cut, and the kernel keeps everything published to each stream.
    assert before["still_open"] == STALLED
    assert before["per_stream_bytes"]["end_port_tcp_bytes"] > 400 * KIB
    # After: every stalled stream cut with its buffers freed, having held little.
    assert after["still_open"] == 0
    assert after["per_stream_bytes"]["peak_port_tcp_bytes"] < 200 * KIB
    assert after["per_stream_bytes"]["end_port_tcp_bytes"] < 10 * KIB


def test_ratios_targets_and_conditions(report: dict[str, Any]) -> None:
    ratios = report["ratios"]
    assert len(ratios) == 6  # RSS at 50, fan-out, per CPU-second, p50, p99, box RSS
    assert all(value is None or value > 0 for value in ratios.values())
    assert ratios[f"RSS per idle connection, {CONNECTIONS} connections"] is not None
    # The sizes here are not the targets', so no target is judged on them.
    assert set(report["targets"]) == {
        "rss_per_idle_connection_10k",
        "fanout_ratio_2k",
        "p99_latency_2k_20eps",
        "box_16k_two_workers",
        "box_test_default_mix",
        "publish_vs_bare",
        "publish_vs_baseline",
        "batch_memory",
        "batch_redis",
        "redis_vs_memory",
    }
    assert all(check["met"] is None for check in report["targets"].values())
    machine = report["meta"]["machine"]
    assert machine["cpus"] >= 1 and machine["python"].count(".") == 2
    assert report["meta"]["options"]["fanout_subscribers"] == SUBSCRIBERS


def test_the_box_test_row() -> None:
    box = {
        "oom_kills": 0,
        "worker_deaths": 0,
        "limit_bytes": 512 * MIB,
        "peak_total_bytes": 433 * MIB,
        "peak_socket_bytes": 34 * MIB,
        "after_minus_idle_bytes": 1 * MIB,
        "idle_browsers": 12_000,
        "idle_fed_at_end": 12_000,
        "stalled_browsers": 1_500,
        "stalled_resumes": 3_644,
        "passed": True,
    }
    text = "\n".join(box_test_lines({"herald": {"box_test": box}}))
    assert "OOM kills 0, worker deaths 0" in text
    assert "12,000 of 12,000" in text
    assert "433.0 of 512.0 MiB" in text and "+1.0 MiB over idle" in text
    assert box_test_lines({"herald": {"box_test": None}}) == []
