"""The fleet view: shares on a timer, reads on demand with this worker live, survives a
failing exchange, and leaves nothing behind when it stops."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.fleet.base import ExchangeUnavailableError, StatsExchange
from app.fleet.files import FileExchange
from app.fleet.snapshot import WorkerSnapshot
from app.fleet.view import FleetView
from tests.support.logs import capture_logs
from tests.support.snapshots import make_snapshot

INTERVAL = 0.05


class LiveFigures:
    """Stands in for take_snapshot: this worker's figures, changed by the test."""

    def __init__(self, pid: int = 1) -> None:
        self.pid = pid
        self.connections = 0
        self.taken = 0
        self.fail_next = False

    def __call__(self) -> WorkerSnapshot:
        self.taken += 1
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("probe broke")
        return make_snapshot(pid=self.pid, connections=self.connections)


class BrokenExchange(StatsExchange):
    kind = "broken"

    def __init__(self) -> None:
        super().__init__("box:1", 60)
        self.broken = True
        self.hang = False
        self.published: list[WorkerSnapshot] = []

    async def _check(self) -> None:
        if self.hang:
            await asyncio.sleep(3600)
        if self.broken:
            raise ExchangeUnavailableError("redis is away")

    async def publish(self, snapshot: WorkerSnapshot) -> None:
        await self._check()
        self.published.append(snapshot)

    async def collect(self) -> list[WorkerSnapshot]:
        await self._check()
        return [make_snapshot(pid=2, connections=7)]

    async def remove(self) -> None:
        await self._check()


@pytest.fixture
def fleet_log() -> Iterator[list[logging.LogRecord]]:
    with capture_logs("herald.fleet") as records:
        yield records


def files(directory: Path, pid: int) -> FileExchange:
    return FileExchange(directory, f"box:{pid}", 60)  # expiry is the exchanges' tests' business


async def test_a_started_worker_is_seen_at_once(tmp_path: Path) -> None:
    view = FleetView(files(tmp_path, 1), LiveFigures(1), interval_seconds=3600)
    await view.start()
    try:
        assert [s["pid"] for s in await files(tmp_path, 2).collect()] == [1]
    finally:
        await view.stop()


async def test_the_snapshot_is_shared_again_every_interval(tmp_path: Path) -> None:
    figures = LiveFigures(1)
    view = FleetView(files(tmp_path, 1), figures, interval_seconds=INTERVAL)
    await view.start()
    try:
        figures.connections = 9
        await asyncio.sleep(INTERVAL * 4)
        shared = await files(tmp_path, 2).collect()
        assert [(s["pid"], s["connections"]) for s in shared] == [(1, 9)]
        assert figures.taken >= 3
    finally:
        await view.stop()


async def test_this_worker_reads_itself_live_and_the_others_as_shared(tmp_path: Path) -> None:
    mine, theirs = LiveFigures(1), LiveFigures(2)
    mine.connections, theirs.connections = 4, 6
    view = FleetView(files(tmp_path, 1), mine, interval_seconds=3600)
    other = FleetView(files(tmp_path, 2), theirs, interval_seconds=3600)
    await view.start()
    await other.start()
    try:
        mine.connections = 5  # not shared yet: the reading must still say 5
        theirs.connections = 8  # not shared yet either: the others' figures are as shared
        reading = await view.read()
        assert reading.worker == "box:1"
        assert [(s["worker"], s["connections"]) for s in reading.workers] == [
            ("box:1", 5),
            ("box:2", 6),
        ]
        assert reading.total()["connections"] == 11
        assert reading.total()["workers"] == 2
        assert (reading.exchange, reading.exchange_state) == ("files", "ok")
    finally:
        await view.stop()
        await other.stop()


async def test_stop_removes_the_snapshot_and_the_task(tmp_path: Path) -> None:
    figures = LiveFigures(1)
    view = FleetView(files(tmp_path, 1), figures, interval_seconds=INTERVAL)
    await view.start()
    await view.stop()
    assert await files(tmp_path, 2).collect() == []
    taken = figures.taken
    await asyncio.sleep(INTERVAL * 3)
    assert figures.taken == taken  # nothing shares any more
    assert os.listdir(tmp_path) == []  # the partial file is gone too
    assert not [t for t in asyncio.all_tasks() if t.get_name() == "herald worker stats"]


async def test_without_the_exchange_a_worker_reports_itself_and_says_so(
    fleet_log: list[logging.LogRecord],
) -> None:
    exchange = BrokenExchange()
    view = FleetView(exchange, LiveFigures(1), interval_seconds=INTERVAL)
    await view.start()  # Redis away at start-up must not stop the worker
    try:
        for _ in range(2):
            reading = await view.read()
            assert [s["worker"] for s in reading.workers] == ["box:1"]
            assert reading.exchange_state == "down"
        await asyncio.sleep(INTERVAL * 3)  # failed publishes meanwhile
        warnings = [r for r in fleet_log if r.levelno == logging.WARNING]
        assert len(warnings) == 1, "one warning per outage, not one per call"
        assert "reporting this worker alone: redis is away" in warnings[0].getMessage()

        exchange.broken = False
        reading = await view.read()
        assert [s["worker"] for s in reading.workers] == ["box:1", "box:2"]
        assert reading.exchange_state == "ok"
        assert any("is back" in r.getMessage() for r in fleet_log)
    finally:
        await view.stop()


async def test_a_hanging_exchange_costs_at_most_the_timeout() -> None:
    exchange = BrokenExchange()
    exchange.broken, exchange.hang = False, True
    view = FleetView(exchange, LiveFigures(1), interval_seconds=3600, timeout_seconds=0.1)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await view.start()
    reading = await view.read()
    await view.stop()
    assert loop.time() - started < 1.0  # start, read and stop: three bounded calls
    assert [s["worker"] for s in reading.workers] == ["box:1"]
    assert reading.exchange_state == "down"


async def test_a_failing_snapshot_does_not_stop_sharing(
    tmp_path: Path, fleet_log: list[logging.LogRecord]
) -> None:
    figures = LiveFigures(1)
    view = FleetView(files(tmp_path, 1), figures, interval_seconds=INTERVAL)
    await view.start()
    try:
        figures.fail_next = True
        figures.connections = 3
        await asyncio.sleep(INTERVAL * 4)
        assert any(r.levelno == logging.ERROR for r in fleet_log)
        shared = await files(tmp_path, 2).collect()
        assert [s["connections"] for s in shared] == [3]
    finally:
        await view.stop()


class SwallowingExchange(StatsExchange):
    """Loses a cancellation the way ``asyncio.wait_for`` can on Python 3.11 (gh-86296), which
    redis-py uses for every socket write: the call returns normally, the cancel is gone."""

    kind = "swallowing"

    def __init__(self) -> None:
        super().__init__("box:1", 60)
        self.publishes = 0
        self.entered = asyncio.Event()

    async def _lose_a_cancellation(self) -> None:
        self.entered.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(3600)

    async def publish(self, snapshot: WorkerSnapshot) -> None:
        self.publishes += 1
        if self.publishes > 1:  # start()'s own publish goes through
            await self._lose_a_cancellation()

    async def collect(self) -> list[WorkerSnapshot]:
        await self._lose_a_cancellation()
        return []

    async def remove(self) -> None:
        return None


async def test_a_cancellation_lost_inside_the_exchange_still_stops_sharing() -> None:
    """Regression: a gunicorn worker hung in shutdown about one stop in thirty with Redis."""
    exchange = SwallowingExchange()
    view = FleetView(exchange, LiveFigures(1), interval_seconds=0.01, timeout_seconds=5)
    await view.start()
    await exchange.entered.wait()  # the share task is inside a publish
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with asyncio.timeout(10):  # without the fix: forever
        await view.stop()
    assert loop.time() - started < 1.0
    assert not [t for t in asyncio.all_tasks() if t.get_name() == "herald worker stats"]
    assert exchange.publishes == 2  # nothing shared after the lost cancellation


async def test_a_cancelled_read_stays_cancelled_even_if_the_exchange_loses_it() -> None:
    exchange = SwallowingExchange()
    view = FleetView(exchange, LiveFigures(1), interval_seconds=3600, timeout_seconds=5)
    reading = asyncio.create_task(view.read())
    await exchange.entered.wait()
    reading.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reading
