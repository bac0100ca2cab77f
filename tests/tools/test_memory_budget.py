"""The memory budget: its rows follow the settings, add up to the box, and the blueprint's
own settings fit the blueprint's own box."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest

from app.broker.idempotency import RECORD_BYTES
from app.core.config import load_settings
from app.publishing.idempotency import MAX_KEY_LENGTH
from app.tools.memory_budget import (
    MASTER_IDLE_BYTES,
    STREAM_IDLE_BYTES,
    STREAM_KERNEL_BYTES,
    STREAM_RSS_BYTES,
    WORKER_IDLE_BYTES,
    memory_budget,
    render_budget,
)
from app.tools.memory_report import main
from tests.support.server import REPO_ROOT
from tests.test_render_blueprint import services

MB = 1024 * 1024


@pytest.fixture(autouse=True)
def no_env_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)


def blueprint_env() -> dict[str, str]:
    (web,) = services("web")
    env = {item["key"]: str(item["value"]) for item in web["envVars"] if "value" in item}
    env["BROKER_URL"] = "redis://127.0.0.1:6379/0"  # fromService: the Key Value's URL
    return env


def test_the_blueprints_settings_fit_its_box() -> None:
    env = blueprint_env()
    settings = load_settings(**{key.lower(): value for key, value in env.items()})
    budget = memory_budget(settings, int(float(env["MEMORY_LIMIT_MB"]) * MB), 2)
    assert budget.fits, render_budget(budget)
    assert budget.total_bytes == budget.limit_bytes
    # Streams have room: thousands of them even with every reserved bound at its worst.
    assert budget.streams_admitted > 7000


def test_streams_past_the_setting_are_not_counted() -> None:
    env = blueprint_env() | {"SSE_MAX_CONNECTIONS": "1000"}
    settings = load_settings(**{key.lower(): value for key, value in env.items()})
    budget = memory_budget(settings, 512 * MB, 2)
    assert budget.streams_allowed == 2000
    assert budget.streams_admitted == 2000
    assert budget.stream_room_bytes == 2000 * STREAM_IDLE_BYTES
    assert budget.total_bytes == budget.limit_bytes
    assert "refuses past" not in render_budget(budget)


def test_rows_follow_the_settings_once_per_worker() -> None:
    settings = load_settings(
        broker_url="redis://127.0.0.1:6379/0",
        sse_queue_max_mb=8,
        cache_max_mb=2,
        response_max_runs=10,
        response_max_kb=64,
        sse_max_connections=100_000,  # the critical line bounds the streams, not the setting
    )
    one = memory_budget(settings, 512 * MB, 1)
    two = memory_budget(settings, 512 * MB, 2)
    rows = {row.bound: row.worst_bytes for row in two.reserved}
    assert rows["SSE_QUEUE_MAX_MB"] == 2 * 8 * MB
    assert rows["CACHE_MAX_MB"] == 2 * 2 * MB
    assert rows["RESPONSE_MAX_RUNS x RESPONSE_MAX_KB"] == 2 * 10 * 64 * 1024 * 2
    assert rows["measured"] == MASTER_IDLE_BYTES + 2 * WORKER_IDLE_BYTES
    assert {row.bound: row.worst_bytes for row in one.reserved}["measured"] == WORKER_IDLE_BYTES
    # The streams take the room from the reserve to the critical line, no more.
    assert two.reserved_bytes + two.stream_room_bytes <= two.critical_bytes
    assert two.critical_bytes - (two.reserved_bytes + two.stream_room_bytes) < STREAM_IDLE_BYTES
    assert two.total_bytes == two.limit_bytes


def test_a_streams_idle_cost_is_its_workers_part_and_its_kernels() -> None:
    env = blueprint_env()
    settings = load_settings(**{key.lower(): value for key, value in env.items()})
    budget = memory_budget(settings, 512 * MB, 2)
    assert STREAM_IDLE_BYTES == STREAM_RSS_BYTES + STREAM_KERNEL_BYTES
    assert budget.streams_admitted > 0
    assert budget.stream_rss_bytes == budget.streams_admitted * STREAM_RSS_BYTES
    assert budget.stream_kernel_bytes == budget.streams_admitted * STREAM_KERNEL_BYTES
    assert budget.stream_rss_bytes + budget.stream_kernel_bytes == budget.stream_room_bytes
    assert (
        budget.reserved_bytes
        + budget.stream_rss_bytes
        + budget.stream_kernel_bytes
        + budget.stalled_room_bytes
        == budget.limit_bytes
    )
    lines = render_budget(budget).splitlines()
    rows = {
        label: line
        for line in lines
        for label in ("in the workers", "in the kernel", "open streams at idle cost")
        if line.strip().startswith(label)
    }
    assert f"{STREAM_RSS_BYTES // 1024} KiB each" in rows["in the workers"]
    assert f"{budget.stream_rss_bytes / MB:.1f} MiB" in rows["in the workers"]
    assert f"{budget.stream_kernel_bytes / MB:.1f} MiB" in rows["in the kernel"]
    assert f"{budget.stream_room_bytes / MB:.1f} MiB" in rows["open streams at idle cost"]


def test_in_process_idempotency_keys_have_a_row_of_their_own() -> None:
    def keys_row(**overrides: object) -> int | None:
        rows = {
            row.bound: row.worst_bytes
            for row in memory_budget(load_settings(**overrides), 512 * MB, 1).reserved
        }
        return rows.get("PUBLISH_IDEMPOTENCY_MAX_KEYS")

    assert keys_row(publish_idempotency_max_keys=1000) == 1000 * (RECORD_BYTES + MAX_KEY_LENGTH)
    assert keys_row(publish_idempotency_seconds=0) is None
    # In Redis, not in the worker: docs/memory.md sizes it.
    assert keys_row(broker_url="redis://127.0.0.1:6379/0") is None


def test_a_bound_too_large_for_the_box_does_not_fit() -> None:
    settings = load_settings(response_max_runs=200, response_max_kb=1024)
    budget = memory_budget(settings, 512 * MB, 2)
    assert not budget.fits
    assert budget.streams_admitted == 0
    assert "DOES NOT FIT" in render_budget(budget)


def test_the_report_prints_the_budget_and_exits_1_when_it_does_not_fit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for key, value in blueprint_env().items():
        monkeypatch.setenv(key, value)
    out = io.StringIO()
    assert main(["--budget", "--workers", "2"], out=out, err=io.StringIO()) == 0
    text = out.getvalue()
    assert "Memory budget: 512.0 MiB box, 2 worker(s)" in text
    assert "= total" in text and "fits:" in text
    monkeypatch.setenv("RESPONSE_MAX_KB", "4096")
    assert main(["--budget", "--workers", "2"], out=io.StringIO(), err=io.StringIO()) == 1


def test_the_budget_needs_no_server() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "app.tools.memory_report", "--budget", "--limit-mb", "512"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 worker(s)" in result.stdout
