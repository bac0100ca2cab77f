"""Many subscribe/unsubscribe cycles of the hub in this process, under tracemalloc:
after a warm-up, the memory allocated by Herald's code and still alive does not grow.

The hub runs with the memory broker, as ``python -m app`` does. The cycles end
every way a stream ends: normally after an event was taken, after a replay on
two channels, closed by overflow, by an exception inside the context (a client
gone mid-write), and by cancelling a task that is waiting for events. Each
allocation is traced with its whole stack, and only those with a frame in
``app/`` count: pytest's and asyncio's own bookkeeping is not Herald's leak.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import gc
import logging
import time
import tracemalloc
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from app.broker import create_broker
from app.core.config import load_settings
from app.sse.hub import Hub
from tests.leak.conftest import FigureSheet
from tests.leak.probe import scales

APP_FILES = str(Path(__file__).resolve().parents[2] / "app" / "*")
TRACE_FRAMES = 8
CHANNELS = [f"tm-{n}" for n in range(8)]
QUEUE_SIZE = 2
HISTORY_SIZE = 50
# Growth allowed after warm-up, whatever the number of cycles: a leak of one
# small object per cycle is thousands of blocks; these are a few stray ints and
# dict resizes.
MAX_GROWTH_BLOCKS = 64
MAX_GROWTH_BYTES = 32 * 1024


@dataclass(frozen=True)
class TraceScale:
    warm_up: int
    cycles: int


SCALES = scales(TraceScale(800, 2_500), TraceScale(5_000, 50_000))


class ClientGoneError(Exception):
    """Stands for the write error a stream meets when its client has vanished."""


@pytest.fixture
async def hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> AsyncIterator[Hub]:
    monkeypatch.chdir(tmp_path)  # no stray .env
    settings = load_settings(
        broker_url="memory://", sse_queue_size=QUEUE_SIZE, sse_history_size=HISTORY_SIZE
    )
    hub = Hub(settings, create_broker(settings))
    await hub.start()
    yield hub
    await hub.stop()


class Resume:
    """The id a resuming stream starts from: an event a few cycles old, so replays are real."""

    def __init__(self, event_id: str) -> None:
        self.event_id = event_id


async def one_cycle(hub: Hub, index: int, resume: Resume) -> None:
    channel = CHANNELS[index % len(CHANNELS)]
    kind = index % 5
    if kind == 0:  # a normal stream: one event in, taken by the writer, ended
        async with hub.subscribe([channel]) as (connection, _):
            event_id = await hub.publish(channel, {"n": index}, event="tick")
            assert connection.take() is not None
        if index % 20 == 0:
            resume.event_id = event_id
    elif kind == 1:  # a resumed stream on two channels
        other = CHANNELS[(index + 1) % len(CHANNELS)]
        async with hub.subscribe([channel, other], last_event_id=resume.event_id) as (_, replay):
            assert replay is not None and not replay.reset
    elif kind == 2:  # overflow: the queue is full and the policy closes the stream
        async with hub.subscribe([channel]) as (connection, _):
            for n in range(QUEUE_SIZE + 1):
                await hub.publish(channel, f"burst {n}")
            assert connection.closed
    elif kind == 3:  # the writer fails inside the context
        with contextlib.suppress(ClientGoneError):
            async with hub.subscribe([channel]):
                await hub.publish(channel, "last words")
                raise ClientGoneError
    else:  # the request task is cancelled while it waits for an event

        async def wait_forever() -> None:
            async with hub.subscribe([channel]) as (connection, _):
                while True:
                    await connection.wait()
                    connection.take()

        task = asyncio.create_task(wait_forever())
        await asyncio.sleep(0)
        await hub.publish(channel, "wake")
        await asyncio.sleep(0)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def run_cycles(hub: Hub, first: int, count: int, resume: Resume) -> None:
    for index in range(first, first + count):
        await one_cycle(hub, index, resume)


def innermost_app_frame(traceback: tracemalloc.Traceback) -> str:
    # Frames run from the oldest to the most recent call.
    frames = [f for f in traceback if fnmatch.fnmatch(f.filename, APP_FILES)] or list(traceback)
    frame = frames[-1]
    return f"{Path(frame.filename).name}:{frame.lineno}"


def app_snapshot() -> tracemalloc.Snapshot:
    gc.collect()
    return tracemalloc.take_snapshot().filter_traces(
        [tracemalloc.Filter(True, APP_FILES, all_frames=True)]
    )


@pytest.mark.parametrize("scale", SCALES)
async def test_subscribe_cycles_leave_no_live_objects(
    scale: TraceScale, hub: Hub, caplog: pytest.LogCaptureFixture, figures: FigureSheet
) -> None:
    # Stream-end lines are INFO; captured records would themselves be live objects
    # allocated from app/ frames.
    caplog.set_level(logging.WARNING, logger="herald")
    resume = Resume(await hub.publish(CHANNELS[0], "before the first cycle"))
    tracemalloc.start(TRACE_FRAMES)
    try:
        await run_cycles(hub, 0, scale.warm_up, resume)
        before = app_snapshot()
        started = time.perf_counter()
        await run_cycles(hub, scale.warm_up, scale.cycles, resume)
        elapsed = time.perf_counter() - started
        after = app_snapshot()
    finally:
        tracemalloc.stop()

    differences = after.compare_to(before, "traceback")
    growth_blocks = sum(d.count_diff for d in differences)
    growth_bytes = sum(d.size_diff for d in differences)
    live = after.statistics("filename")
    figures.add("warm-up cycles", scale.warm_up)
    figures.add("measured cycles", scale.cycles)
    figures.add("cycles per second (traced)", scale.cycles / elapsed)
    figures.add("app/ blocks alive before/after", f"{len(before.traces):,} / {len(after.traces):,}")
    figures.add(
        "app/ KB alive before/after",
        f"{sum(t.size for t in before.traces) / 1024:.1f} / {sum(s.size for s in live) / 1024:.1f}",
    )
    figures.add("growth blocks (limit 64)", growth_blocks)
    figures.add("growth bytes (limit 32 KB)", growth_bytes)
    # Per allocating line the figures move both ways (history replaces old events with
    # new ones); show the lines with the largest net change, which sum to the growth.
    by_line: Counter[str] = Counter()
    blocks_by_line: Counter[str] = Counter()
    for difference in differences:
        line = innermost_app_frame(difference.traceback)
        by_line[line] += difference.size_diff
        blocks_by_line[line] += difference.count_diff
    for line, size_diff in sorted(by_line.items(), key=lambda item: -abs(item[1]))[:3]:
        if size_diff:
            figures.add(
                "  net change at", f"{line} {size_diff:+,} B, {blocks_by_line[line]:+,} blocks"
            )

    assert hub.connection_count == 0 and hub.channel_count == 0
    assert hub.budget.bytes == 0
    assert growth_blocks <= MAX_GROWTH_BLOCKS, differences[:5]
    assert growth_bytes <= MAX_GROWTH_BYTES, differences[:5]
