"""``python -m load_tests.latency`` end to end with tiny sizes, and the floor hub it measures
Herald against: every server delivers every event, and each ratio is of the same round."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from typing import Any

import pytest

from load_tests.latency import KINDS
from tests.support.server import REPO_ROOT, ServerProcess

pytestmark = pytest.mark.integration

RUN_LIMIT_SECONDS = 120
STREAMS = 30
HOST = "127.0.0.1"


async def test_the_floor_writes_each_event_as_one_chunk_to_every_subscriber() -> None:
    floor = ServerProcess(argv=[sys.executable, "-m", "load_tests.floor_hub"]).start()
    try:
        subscribers = []
        for _ in range(2):
            reader, writer = await asyncio.open_connection(HOST, floor.port)
            writer.write(b"GET /events/x HTTP/1.1\r\nHost: x\r\n\r\n")
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert b"transfer-encoding: chunked" in head
            subscribers.append((reader, writer))
        await asyncio.sleep(0.1)
        reader, writer = await asyncio.open_connection(HOST, floor.port)
        body = b'{"s":1}'
        writer.write(b"POST /events/x HTTP/1.1\r\nContent-Length: 7\r\n\r\n" + body)
        assert (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)).startswith(
            b"HTTP/1.1 202"
        )
        frame = b"data: " + body + b"\n\n"
        expected = b"%x\r\n" % len(frame) + frame + b"\r\n"
        for subscriber, _ in subscribers:
            assert await asyncio.wait_for(subscriber.readexactly(len(expected)), 5) == expected
        for _, stream in [*subscribers, (reader, writer)]:
            stream.close()
    finally:
        floor.close()


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    json_path = tmp_path_factory.mktemp("latency") / "report.json"
    started = time.monotonic()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "load_tests.latency",
            *("--streams", str(STREAMS), "--rounds", "2", "--duration", "1", "--drain", "5"),
            *("--client-check-streams", "5", "--fanout-rounds", "0", "--json", str(json_path)),
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=RUN_LIMIT_SECONDS,
    )
    print(result.stdout)
    print(f"latency smoke run: {time.monotonic() - started:.1f} s")
    assert result.returncode == 0, result.stdout + result.stderr
    document: dict[str, Any] = json.loads(json_path.read_text())
    return document


def test_every_server_delivers_every_event_in_every_round(report: dict[str, Any]) -> None:
    (step,) = report["latency"]
    assert step["streams"] == STREAMS and len(step["rounds"]) == 2
    # The order rotates, so no server is always measured first.
    assert step["rounds"][0]["order"] != step["rounds"][1]["order"]
    for measured in step["rounds"]:
        for kind in KINDS:
            figures = measured[kind]
            assert figures["delivered_ratio"] == 1.0, (kind, figures)
            assert figures["expected_deliveries"] == STREAMS * 20
            assert 0 < figures["p50_ms"] <= figures["p99_ms"] <= figures["max_ms"]


def test_each_ratio_is_of_the_floor_in_the_same_round(report: dict[str, Any]) -> None:
    (step,) = report["latency"]
    for kind in KINDS[1:]:
        expected = [r[kind]["p99_ms"] / r["floor"]["p99_ms"] for r in step["rounds"]]
        assert step["summary"][kind]["p99_ratios"] == [round(x, 3) for x in expected]
        assert step["summary"][kind]["met"] in (True, False)


def test_the_client_check_runs_against_the_floor(report: dict[str, Any]) -> None:
    check = report["client_check"]
    assert check["streams"] == 5 and check["delivered_ratio"] == 1.0
    assert check["generator_cpu"] < 0.9  # the client had room to spare
