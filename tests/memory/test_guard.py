"""The memory guard driven by an injected RSS source and clock, against a real hub
(MemoryBroker) and response service: levels, cleanups, refusal and the trend."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from app.broker.memory import MemoryBroker
from app.core.config import SettingsError, load_settings
from app.main import create_app
from app.memory import box as box_module
from app.memory.box import BoxMemory, BoxReading, register_server_root
from app.memory.cleanup import CRITICAL_HISTORY_KEEP
from app.memory.guard import (
    ADMISSION_ESTIMATE_BYTES,
    MEMORY_RETRY_AFTER_SECONDS,
    RECYCLE_HOLD_SECONDS,
    REFUSAL_DETAIL,
    SHED_BACKOFF_SECONDS,
    TREND_WARMUP_SECONDS,
    TRIM_CROWD_MIN_STREAMS,
    MemoryGuard,
)
from app.memory.levels import MemoryLevel
from app.memory.limits import MemoryLimit
from app.memory.pressure import WRITE_PAUSES
from app.responses.service import ResponseService, build_producers
from app.sse.connection import CloseReason
from app.sse.hub import Hub, StreamRefusedError
from tests.support.clock import FakeClock
from tests.support.logs import capture_logs
from tests.support.waiting import wait_until

MB = 1024 * 1024
LIMIT = MemoryLimit(bytes=100 * MB, source="setting")
HISTORY_SIZE = 40
CACHE_TTL = 60.0


class FakeRss:
    """An RSS source whose reading the test sets, as a percentage of LIMIT."""

    def __init__(self) -> None:
        self.bytes = 10 * MB
        self.reads = 0

    def set_percent(self, percent: float) -> None:
        self.bytes = int(LIMIT.bytes * percent / 100)

    def __call__(self) -> int:
        self.reads += 1
        return self.bytes


class FakeSockets:
    """A socket memory reading the test sets, in bytes (0 unless a test says otherwise)."""

    def __init__(self) -> None:
        self.bytes = 0

    def __call__(self) -> int:
        return self.bytes


class HeapReleases:
    """Counts the guard's malloc_trim calls."""

    def __init__(self) -> None:
        self.count = 0

    def append_one(self) -> bool:
        self.count += 1
        return True


class Parts:
    def __init__(
        self, hub: Hub, service: ResponseService, guard: MemoryGuard, sockets: FakeSockets
    ) -> None:
        self.hub = hub
        self.service = service
        self.guard = guard
        self.sockets = sockets
        self.heap_releases = HeapReleases()

    @property
    def history_events(self) -> int:
        assert isinstance(self.hub.broker, MemoryBroker)
        return len(self.hub.broker.history)

    def at(self, percent: float) -> MemoryLevel | None:
        """Set RSS to ``percent`` of the limit and take one sample."""
        rss = self.guard._rss_source
        assert isinstance(rss, FakeRss)
        rss.set_percent(percent)
        return self.guard.check()


MakeParts = Callable[..., Awaitable[Parts]]


@pytest.fixture
def memory_log() -> Iterator[list[logging.LogRecord]]:
    with capture_logs("herald.memory") as records:
        yield records


def logged(records: list[logging.LogRecord], text: str) -> list[str]:
    return [record.getMessage() for record in records if text in record.getMessage()]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def make_parts(
    clock: FakeClock, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> AsyncIterator[MakeParts]:
    monkeypatch.chdir(tmp_path)  # no stray .env
    hubs: list[Hub] = []
    services: list[ResponseService] = []

    async def make(rss: Callable[[], int] | None = None, **overrides: object) -> Parts:
        settings = load_settings(
            **{
                "sse_history_size": HISTORY_SIZE,
                "cache_ttl_seconds": CACHE_TTL,
                "echo_delay_ms": 0,
                **overrides,
            }
        )
        broker = MemoryBroker(
            history_size=settings.sse_history_size,
            history_max_bytes=settings.sse_history_max_bytes,
            history_max_channels=settings.sse_history_max_channels,
            channel_ttl_seconds=settings.sse_channel_ttl_seconds,
            clock=clock,
        )
        hub = Hub(settings, broker, clock=clock)
        await hub.start()
        hubs.append(hub)
        service = ResponseService(settings, build_producers(settings), clock=clock)
        services.append(service)
        sockets = FakeSockets()
        heap_releases = HeapReleases()
        rss_source = rss or FakeRss()
        guard = MemoryGuard(
            settings,
            hub,
            service,
            rss_source=rss_source,
            clock=clock,
            limit=LIMIT,
            release_heap=heap_releases.append_one,
            # A box of this one process: its RSS and the sockets' kernel memory.
            box=BoxMemory("processes", lambda: BoxReading(rss_source() + sockets(), sockets())),
        )
        parts = Parts(hub, service, guard, sockets)
        parts.heap_releases = heap_releases
        return parts

    yield make
    for service in services:
        await service.stop()
    for hub in hubs:
        await hub.stop()


async def fill(parts: Parts, clock: FakeClock) -> None:
    """An expired cache entry, ten live ones, and full histories on two channels."""
    cache = parts.service.cache
    cache.set("stale", "old answer")
    clock.now += CACHE_TTL + 1
    for index in range(10):
        cache.set(f"key-{index}", "answer " * 20)
    for index in range(HISTORY_SIZE):
        await parts.hub.publish("alpha", {"n": index})
        await parts.hub.publish("beta", {"n": index})
    assert parts.history_events == 2 * HISTORY_SIZE


async def finished_run(parts: Parts) -> None:
    created = parts.service.create("hello there")
    assert created.run.task is not None
    await created.run.task
    assert created.run.finished


# --- levels and hysteresis -------------------------------------------------------


async def test_levels_follow_rss_with_hysteresis(make_parts: MakeParts) -> None:
    parts = await make_parts()  # thresholds 75 / 90, hysteresis 5
    assert parts.at(50) is None
    assert parts.at(76) is MemoryLevel.WARNING
    assert parts.at(74) is None  # inside the band: no flapping back to normal
    assert parts.at(76) is None
    assert parts.at(69) is MemoryLevel.NORMAL
    assert parts.at(91) is MemoryLevel.CRITICAL
    assert parts.at(86) is None  # still critical until under 85
    assert parts.at(84) is MemoryLevel.WARNING
    assert parts.at(90) is MemoryLevel.CRITICAL
    assert parts.at(10) is MemoryLevel.NORMAL
    assert parts.guard.level is MemoryLevel.NORMAL
    assert parts.guard.snapshot()["transitions"] == {"normal": 2, "warning": 2, "critical": 2}


async def test_percent_is_rss_over_the_limit(make_parts: MakeParts) -> None:
    parts = await make_parts()
    parts.at(42.5)
    snapshot = parts.guard.snapshot()
    assert snapshot["percent"] == pytest.approx(42.5, abs=0.01)
    assert snapshot["rss_bytes"] == int(LIMIT.bytes * 0.425)
    assert snapshot["limit_bytes"] == LIMIT.bytes
    assert snapshot["limit_source"] == "setting"


async def test_socket_memory_counts_toward_the_level(
    make_parts: MakeParts, memory_log: list[logging.LogRecord]
) -> None:
    # Kernel send buffers of stalled clients: invisible in RSS, charged to the container.
    parts = await make_parts()
    parts.sockets.bytes = int(LIMIT.bytes * 0.45)
    assert parts.at(40) is MemoryLevel.WARNING  # RSS alone (40 %) would be normal
    snapshot = parts.guard.snapshot()
    assert snapshot["rss_bytes"] == int(LIMIT.bytes * 0.40)
    assert snapshot["socket_bytes"] == int(LIMIT.bytes * 0.45)
    assert snapshot["box_source"] == "processes"
    assert snapshot["used_bytes"] == snapshot["rss_bytes"] + snapshot["socket_bytes"]
    assert snapshot["percent"] == pytest.approx(85.0, abs=0.01)
    parts.sockets.bytes = int(LIMIT.bytes * 0.55)
    assert parts.at(40) is MemoryLevel.CRITICAL
    assert parts.guard.refusing
    [line] = logged(memory_log, "-> critical")
    assert "box 95.0 MB (sockets 55.0 MB; this worker's rss 40.0 MB) of 100.0 MB (95.0%)" in line
    parts.sockets.bytes = 0  # the stalled clients were cut: their buffers are freed
    assert parts.at(40) is MemoryLevel.NORMAL
    assert not parts.guard.refusing


# --- warning: light cleanup --------------------------------------------------------


async def test_entering_warning_runs_the_light_cleanup(
    make_parts: MakeParts, clock: FakeClock, memory_log: list[logging.LogRecord]
) -> None:
    parts = await make_parts()
    await fill(parts, clock)
    cache = parts.service.cache
    assert parts.at(80) is MemoryLevel.WARNING

    stats = cache.stats()
    assert stats.evictions["ttl"] == 1  # the expired entry went first
    assert stats.items == 5  # then half of the ten live ones
    assert stats.evictions["pressure"] == 5
    assert parts.history_events == 2 * (HISTORY_SIZE // 2)
    assert parts.guard.refusal() is None  # warning never refuses
    assert parts.guard.cleanups[MemoryLevel.WARNING] == 1
    last = parts.guard.last_cleanup
    assert last is not None and last["level"] == "warning"
    freed = last["freed"]
    assert isinstance(freed, dict)
    assert freed["cache_expired"] > 0
    assert freed["cache_shrunk"] > 0
    assert freed["history_trimmed"] > 0
    assert parts.guard.freed_bytes == sum(freed.values())
    assert logged(memory_log, "memory cleanup (warning): freed")


async def test_staying_in_warning_does_not_clean_up_again(
    make_parts: MakeParts, clock: FakeClock
) -> None:
    parts = await make_parts()
    parts.at(80)
    await fill(parts, clock)
    for _ in range(3):
        parts.at(80)
    assert parts.service.cache.items == 11  # untouched by the later samples
    assert parts.guard.cleanups[MemoryLevel.WARNING] == 1


# --- critical: aggressive cleanup and refusal ----------------------------------------


async def test_entering_critical_runs_the_aggressive_cleanup(
    make_parts: MakeParts, clock: FakeClock, memory_log: list[logging.LogRecord]
) -> None:
    parts = await make_parts()
    await fill(parts, clock)
    await finished_run(parts)
    assert len(parts.service.runs) == 1
    assert parts.at(95) is MemoryLevel.CRITICAL

    assert parts.service.cache.items == 0
    assert parts.history_events == 2 * CRITICAL_HISTORY_KEEP
    assert len(parts.service.runs) == 0  # finished runs forgotten
    assert parts.guard.cleanups[MemoryLevel.CRITICAL] == 1
    assert parts.guard.cleanups[MemoryLevel.WARNING] == 0  # straight to critical: one cleanup
    last = parts.guard.last_cleanup
    assert last is not None
    assert last["level"] == "critical"
    assert last["heap_released"] is True
    freed = last["freed"]
    assert isinstance(freed, dict)
    assert freed["cache_cleared"] > 0 and freed["history_trimmed"] > 0
    assert freed["runs_trimmed"] > 0
    assert logged(memory_log, "memory cleanup (critical): freed")
    assert logged(memory_log, "refusing new streams")


async def test_a_draining_worker_samples_but_does_nothing(
    make_parts: MakeParts, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Its exit hands everything back; a cleanup would only stall the loop closing streams.
    parts = await make_parts()
    await fill(parts, clock)
    monkeypatch.setattr("app.sse.hub.shutdown_requested", lambda: True)
    await wait_until(lambda: parts.hub.draining, what="the hub seeing the shutdown")
    parts.at(95)
    assert parts.guard.percent == pytest.approx(95)
    assert parts.guard.cleanups[MemoryLevel.CRITICAL] == 0
    assert parts.service.cache.items > 0 and parts.history_events == 2 * HISTORY_SIZE
    assert parts.heap_releases.count == 0


async def test_critical_refuses_new_streams_and_responses(make_parts: MakeParts) -> None:
    parts = await make_parts()
    await parts.guard.start()
    try:
        parts.at(95)
        with pytest.raises(StreamRefusedError) as refused_stream:
            async with parts.hub.subscribe(["news"]):
                pass
        with pytest.raises(StreamRefusedError) as refused_response:
            parts.service.create("hello")
    finally:
        await parts.guard.stop()
    for refusal in (refused_stream.value, refused_response.value):
        assert refusal.retry_after == MEMORY_RETRY_AFTER_SECONDS
        assert refusal.detail == REFUSAL_DETAIL
    assert parts.hub.connection_count == 0
    assert len(parts.service.runs) == 0
    assert parts.guard.refused == 2


async def test_refusal_is_lifted_back_under_the_critical_band(make_parts: MakeParts) -> None:
    parts = await make_parts()
    await parts.guard.start()
    try:
        parts.at(95)
        assert parts.at(87) is None  # inside the hysteresis band: still critical
        assert parts.guard.level is MemoryLevel.CRITICAL
        assert parts.guard.refusing
        with pytest.raises(StreamRefusedError):
            parts.service.create("hello")
        # Under 85 %: a crowd whose idle cost sits in the warning band is let back in.
        assert parts.at(84) is MemoryLevel.WARNING
        assert not parts.guard.refusing
        async with parts.hub.subscribe(["news"]) as (connection, _):
            assert not connection.closed
        assert not parts.service.create("hello").cached
    finally:
        await parts.guard.stop()


async def test_a_crowd_arriving_between_samples_is_refused_at_the_line(
    make_parts: MakeParts,
) -> None:
    parts = await make_parts()
    await parts.guard.start()
    try:
        parts.at(80)
        room = int(LIMIT.bytes * 0.10) // ADMISSION_ESTIMATE_BYTES  # from 80 % to 90 %
        async with contextlib.AsyncExitStack() as crowd:
            for _ in range(room - 1):
                await crowd.enter_async_context(parts.hub.subscribe(["crowd"]))
            with pytest.raises(StreamRefusedError):
                async with parts.hub.subscribe(["crowd"]):
                    pass
            assert not parts.guard.refusing  # not latched: the next sample decides
            parts.at(80)  # the sample shows what the crowd really costs: room again
            async with parts.hub.subscribe(["crowd"]) as (connection, _):
                assert not connection.closed
    finally:
        await parts.guard.stop()


async def test_open_streams_are_not_cut_at_critical(make_parts: MakeParts) -> None:
    parts = await make_parts()
    await parts.guard.start()
    try:
        async with parts.hub.subscribe(["news"]) as (connection, _):
            parts.at(99)
            assert parts.guard.refusing
            await parts.hub.publish("news", "still here")
            assert not connection.closed
            taken = connection.take()
            assert taken is not None and b"still here" in taken[0]
    finally:
        await parts.guard.stop()


async def test_falling_to_warning_runs_no_light_cleanup(
    make_parts: MakeParts, clock: FakeClock
) -> None:
    parts = await make_parts()
    parts.at(95)
    await fill(parts, clock)
    parts.at(84)
    assert parts.guard.cleanups == {MemoryLevel.CRITICAL: 1}
    assert parts.service.cache.items == 11


async def test_each_entry_into_critical_cleans_up_once(
    make_parts: MakeParts, clock: FakeClock
) -> None:
    parts = await make_parts()
    for _ in range(2):
        await fill(parts, clock)
        parts.at(95)
        parts.at(97)
        assert parts.service.cache.items == 0
        parts.at(10)
    assert parts.guard.cleanups[MemoryLevel.CRITICAL] == 2


async def test_a_failing_cleanup_step_does_not_stop_the_others(
    make_parts: MakeParts, clock: FakeClock, memory_log: list[logging.LogRecord]
) -> None:
    parts = await make_parts()
    await fill(parts, clock)

    def broken(keep: int) -> int:
        raise RuntimeError("history is broken")

    parts.hub.broker.trim_history = broken  # type: ignore[method-assign]
    parts.at(95)
    assert parts.service.cache.items == 0  # the step after the failing one still ran
    last = parts.guard.last_cleanup
    assert last is not None and last["failed"] == ["history_trimmed"]
    assert logged(memory_log, "history_trimmed failed")


# --- the sampling task ----------------------------------------------------------------


async def test_start_samples_at_once_and_registers_the_refusal(make_parts: MakeParts) -> None:
    rss = FakeRss()
    rss.set_percent(95)
    parts = await make_parts(rss, memory_check_seconds=3600)
    await parts.guard.start()
    try:
        assert parts.guard.level is MemoryLevel.CRITICAL  # before any interval passed
        assert parts.hub.admission_checks == [parts.guard._check_refusal]
        assert parts.service.admission_checks == [parts.guard._check_refusal]
    finally:
        await parts.guard.stop()
    assert parts.hub.admission_checks == []
    assert parts.service.admission_checks == []


async def test_the_task_samples_every_interval_until_stopped(make_parts: MakeParts) -> None:
    rss = FakeRss()
    parts = await make_parts(rss, memory_check_seconds=0.01)
    await parts.guard.start()
    await asyncio.sleep(0.2)
    await parts.guard.stop()
    sampled = rss.reads
    assert sampled >= 5
    await asyncio.sleep(0.05)
    assert rss.reads == sampled


async def test_a_failing_probe_is_logged_and_sampling_goes_on(
    make_parts: MakeParts, memory_log: list[logging.LogRecord]
) -> None:
    calls = 0

    def flaky() -> int:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise OSError("proc is gone")
        return 95 * MB

    parts = await make_parts(flaky, memory_check_seconds=0.01)
    await parts.guard.start()
    await asyncio.sleep(0.1)
    await parts.guard.stop()
    assert calls >= 4
    assert parts.guard.level is MemoryLevel.CRITICAL
    assert logged(memory_log, "memory check failed")


# --- leak suspicion -----------------------------------------------------------------


async def test_steady_growth_with_steady_connections_is_a_suspected_leak(
    make_parts: MakeParts, clock: FakeClock, memory_log: list[logging.LogRecord]
) -> None:
    slope = 10 * 1024  # bytes per second
    rss = FakeRss()
    parts = await make_parts(rss, memory_check_seconds=5)
    # Warm-up samples climb steeply but are not held against the process.
    for _ in range(int(TREND_WARMUP_SECONDS // 5)):
        rss.bytes += 1 * MB
        parts.guard.check()
        clock.now += 5
    assert parts.guard.trend_report().samples == 0
    for _ in range(20):
        clock.now += 5
        rss.bytes += slope * 5
        parts.guard.check()
    trend = parts.guard.snapshot()["trend"]
    assert isinstance(trend, dict)
    assert trend["leak_suspected"] is True
    assert trend["slope_bytes_per_s"] == pytest.approx(slope)
    # Logged once when it starts, not on every sample after.
    assert len(logged(memory_log, "memory leak suspected")) == 1


async def test_growth_that_follows_connections_is_not_a_leak(
    make_parts: MakeParts, clock: FakeClock
) -> None:
    rss = FakeRss()
    parts = await make_parts(rss, memory_check_seconds=5)
    clock.now += TREND_WARMUP_SECONDS
    async with contextlib.AsyncExitStack() as streams:
        for _ in range(20):
            await streams.enter_async_context(parts.hub.subscribe(["load"]))
            clock.now += 5
            rss.bytes += 50 * 1024
            parts.guard.check()
    trend = parts.guard.trend_report()
    assert trend.slope_bytes_per_s > 1024
    assert not trend.connections_steady
    assert not trend.leak_suspected


# --- health score and wiring ----------------------------------------------------------


async def test_health_score_follows_the_level(make_parts: MakeParts) -> None:
    parts = await make_parts()
    parts.at(0)
    assert parts.guard.health_score() == 100
    parts.at(37.5)
    assert parts.guard.health_score() == 75
    parts.at(80)
    assert parts.guard.health_score() == 50 - round(40 * 5 / 15)
    parts.at(95)
    assert parts.guard.health_score() == 10


def test_hysteresis_wider_than_the_warning_line_fails_start_up(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    settings = load_settings(memory_warning_percent=50, memory_hysteresis_percent=60)
    with pytest.raises(SettingsError, match="MEMORY_HYSTERESIS_PERCENT"):
        create_app(settings)


# --- shedding and handing memory back --------------------------------------------------


async def test_past_critical_the_streams_holding_the_most_are_shed(make_parts: MakeParts) -> None:
    parts = await make_parts(sse_queue_size=1000, sse_queue_max_mb=64)
    blob = "x" * 60_000
    async with contextlib.AsyncExitStack() as streams:
        heavy, _ = await streams.enter_async_context(parts.hub.subscribe(["busy"]))
        for _ in range(300):  # ~18 MB queued for a reader that is not taking it
            await parts.hub.publish("busy", blob)
        light, _ = await streams.enter_async_context(parts.hub.subscribe(["busy"]))
        for _ in range(20):  # ~1.2 MB more for both
            await parts.hub.publish("busy", blob)
        calm, _ = await streams.enter_async_context(parts.hub.subscribe(["calm"]))
        parts.at(74)  # under the warning line: nothing is cut
        assert not heavy.closed
        # At 80 % one worker gives back the excess over the warning line's floor (70 %, so
        # 10 MB of 100 MB): the heaviest stream alone covers it.
        assert parts.at(80) is MemoryLevel.WARNING
        assert heavy.close_reason is CloseReason.MEMORY
        assert not light.closed and not calm.closed
        assert parts.guard.shed_streams == 1
        assert parts.guard.shed_bytes >= 10 * MB
        # Still past it on the next sample: the next heaviest goes; the idle stream never.
        parts.at(95)
        assert light.close_reason is CloseReason.MEMORY
        assert not calm.closed
        assert parts.guard.snapshot()["shed"] == {
            "streams": 2,
            "bytes": parts.guard.shed_bytes,
        }
    assert parts.hub.closed_by_reason["memory"] == 2
    assert parts.heap_releases.count >= 2  # a trim after every shed (and the cleanup's)


async def test_a_crowd_leaving_hands_the_heap_back(make_parts: MakeParts) -> None:
    parts = await make_parts()
    await parts.guard.start()
    try:
        async with contextlib.AsyncExitStack() as crowd:
            for _ in range(TRIM_CROWD_MIN_STREAMS + 1):
                await crowd.enter_async_context(parts.hub.subscribe(["crowd"]))
            parts.at(30)
            released = parts.heap_releases.count
            parts.at(30)
            assert parts.heap_releases.count == released  # nobody left: nothing to trim
        async with parts.hub.subscribe(["crowd"]):
            # The crowd is gone (one stream stays): the heap is handed back once.
            parts.at(50)
            assert parts.heap_releases.count == released + 1
            assert parts.guard.snapshot()["trims"] == 1
            parts.at(50)  # once per crowd, not on every sample
            assert parts.heap_releases.count == released + 1
    finally:
        await parts.guard.stop()


async def test_readers_stalling_between_samples_are_weighed_at_once(
    make_parts: MakeParts, clock: FakeClock
) -> None:
    # Each paused transport is a reader that stopped: the guard samples when the last reading
    # plus what those streams can hold reaches the warning line, without waiting a second.
    parts = await make_parts(sse_socket_send_buffer_kb=64, sse_transport_buffer_kb=64)
    await parts.guard.start()
    try:
        parts.at(60)
        checks = parts.guard.checks
        clock.advance(1)
        WRITE_PAUSES.paused()  # 448 KB against 15 MB of room: nothing to look at yet
        await asyncio.sleep(0)
        assert parts.guard.checks == checks and parts.guard.early_checks == 0
        for _ in range(40):  # ~18 MB more, held by readers that stopped together
            WRITE_PAUSES.paused()
        await asyncio.sleep(0)
        assert parts.guard.early_checks == 1
        assert parts.guard.checks == checks + 1
        for _ in range(40):  # right after a sample: the next weighing waits its turn
            WRITE_PAUSES.paused()
        await asyncio.sleep(0)
        assert parts.guard.early_checks == 1
    finally:
        await parts.guard.stop()
    assert WRITE_PAUSES.listener is None


async def test_a_worker_that_stays_bloated_after_its_crowd_left_is_recycled(
    make_parts: MakeParts, clock: FakeClock
) -> None:
    recycles: list[int] = []
    register_server_root(os.getppid(), 2, lambda: recycles.append(1))
    try:
        parts = await make_parts(memory_recycle_mb=20)
        await parts.guard.start()  # RSS at start: 10 MB
        try:
            async with contextlib.AsyncExitStack() as crowd:
                for _ in range(TRIM_CROWD_MIN_STREAMS + 1):
                    await crowd.enter_async_context(parts.hub.subscribe(["crowd"]))
                parts.at(40)
                clock.advance(60)
                parts.at(40)
                assert not recycles  # the crowd is still here
            parts.at(25)  # gone, but only 15 MB above the start: a trim's business
            clock.advance(60)
            parts.at(25)
            assert not recycles
            parts.at(40)  # 30 MB above the start with its crowd gone
            clock.advance(RECYCLE_HOLD_SECONDS - 0.1)
            parts.at(40)
            assert not recycles  # not before the excess has lasted
            clock.advance(RECYCLE_HOLD_SECONDS + 0.2)
            parts.at(40)
            assert recycles == [1]
            assert parts.guard.snapshot()["recycled"] is True
            clock.advance(60)
            parts.at(40)
            assert recycles == [1]  # once
        finally:
            await parts.guard.stop()
    finally:
        register_server_root(os.getpid(), 1)
        box_module._server_root = None


async def test_a_shed_client_is_pushed_back_while_the_box_is_still_full(
    make_parts: MakeParts, clock: FakeClock
) -> None:
    parts = await make_parts(sse_queue_size=1000, sse_queue_max_mb=64)
    await parts.guard.start()
    blob = "x" * 60_000
    try:
        async with parts.hub.subscribe(["busy"], client="198.51.100.7") as (stalled, _):
            for _ in range(300):  # ~18 MB this reader is not taking
                await parts.hub.publish("busy", blob)
            parts.at(80)
            assert stalled.close_reason is CloseReason.MEMORY
        # It comes back after its retry: while the box is still past the warning line.
        with pytest.raises(StreamRefusedError) as deferred:
            async with parts.hub.subscribe(["busy"], client="198.51.100.7"):
                pass
        assert deferred.value.status_code == 503  # a browser gets it as a deferral
        assert parts.guard.backed_off == 1
        async with parts.hub.subscribe(["busy"], client="198.51.100.8") as (other, _):
            assert not other.closed  # anyone else is welcome
        clock.advance(SHED_BACKOFF_SECONDS)
        async with parts.hub.subscribe(["busy"], client="198.51.100.7") as (back, _):
            assert not back.closed  # its time is up
    finally:
        await parts.guard.stop()
    assert parts.hub.client_checks == []
