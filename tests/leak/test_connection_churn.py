"""Thousands of streams opened and ended every way a client can end one, against a real
server: afterwards nothing is left behind and RSS has not crept up.

The cycles, interleaved in blocks (per 200: 80 clean, 60 reset, 40 replay, 20 overflow):

- clean: open (one channel, or two), read the ``retry:`` frame, close (FIN).
- reset: the same, then ``SO_LINGER`` 0 and close: the server sees RST.
- replay: resume with ``Last-Event-ID`` on a channel holding 20 events of 16 KB.
  Half read the whole replay and close; half (with a 4 KB receive window) reset
  as soon as the response head arrives, before reading any of the replay.
- overflow: a round of 20 clients with a 4 KB receive window that never read,
  while 60 KB events are published (``SSE_QUEUE_SIZE`` = 4). Ten, on one
  channel, reset once events are queuing behind their stuck writes; the other
  ten, on another, are closed by the server for overflow
  (``SSE_OVERFLOW=disconnect``), which is counted exactly; one of them then
  reads its stream to the end, the others close.

After a warm-up (allocator arenas, interned strings, caches of the libraries),
RSS may drift at most 5 MB, and the hub's connection registry, channel table,
queue byte budget and the event loop's task count return to their idle values.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from tests.leak.conftest import FigureSheet, LeakServer
from tests.leak.probe import MB, AdminProbe, Reading, scales
from tests.leak.raw_http import KeepAliveClient, SseSocket, open_sse
from tests.support.server import ServerProcess

pytestmark = pytest.mark.integration

HOST = "127.0.0.1"
MAX_RSS_DRIFT_BYTES = 5 * MB
QUEUE_SIZE = 4
HISTORY_SIZE = 20
SERVER_ENV = {
    "SSE_QUEUE_SIZE": str(QUEUE_SIZE),
    "SSE_OVERFLOW": "disconnect",
    # Both the replay channel and the overflow channel keep 20 events, so
    # history is full after the first round and stays the same size.
    "SSE_HISTORY_SIZE": str(HISTORY_SIZE),
}
CHANNEL_POOL = 64  # a bounded set of names: history logs are reused, not accumulated
REPLAY_CHANNEL = "churn-replay"
REPLAY_EVENT_BYTES = 16_000
OVERFLOW_CHANNEL = "churn-overflow"
STUCK_CHANNEL = "churn-stuck"
OVERFLOW_EVENT_BYTES = 60_000
OVERFLOW_ROUND = 20
MAX_OVERFLOW_PUBLISHES = 400
SMALL_RECEIVE_BUFFER = 4096
CONCURRENCY = 16
BLOCK = 200
# The fast cycles of one block, in order; the block's last 20 cycles are an overflow round.
BLOCK_KINDS = ["clean"] * 80 + ["reset"] * 60 + ["replay_full", "replay_reset"] * 20


@dataclass(frozen=True)
class ChurnScale:
    cycles: int
    warm_up: int
    checkpoint_every: int


SCALES = scales(ChurnScale(2_000, 600, 1_000), ChurnScale(20_000, 2_000, 2_000))


class Churn:
    """The cycles against one server, and what they saw."""

    def __init__(self, server: ServerProcess, probe: AdminProbe) -> None:
        self.server = server
        self.probe = probe
        self.publisher = KeepAliveClient(HOST, server.port)
        self.kinds: Counter[str] = Counter()
        self.refused: Counter[str] = Counter()
        self.overflows_expected = 0
        self.stuck_queued: list[int] = []  # events queued when the stuck group was reset
        self.replay_first_id = ""
        self.replay_last_marker = b""

    async def open(
        self, path: str, last_event_id: str | None = None, small_window: bool = False
    ) -> SseSocket:
        stream = await open_sse(
            HOST,
            self.server.port,
            path,
            last_event_id=last_event_id,
            receive_buffer=SMALL_RECEIVE_BUFFER if small_window else None,
        )
        if stream.status != 200:
            stream.reset()
            raise AssertionError(f"{path}: status {stream.status}")
        return stream

    async def publish(self, channel: str, size: int) -> str:
        response = await self.publisher.post_text(f"/events/{channel}", b"x" * size)
        assert response.status == 202, response.body
        event_id: str = response.json()["id"]
        return event_id

    async def fill_replay_history(self) -> None:
        ids = [await self.publish(REPLAY_CHANNEL, REPLAY_EVENT_BYTES) for _ in range(HISTORY_SIZE)]
        self.replay_first_id = ids[0]
        self.replay_last_marker = f"id: {ids[-1]}\n".encode()

    # --- one cycle of each kind ------------------------------------------------

    async def cycle(self, kind: str, index: int) -> None:
        channel = f"churn-{index % CHANNEL_POOL}"
        if index % 3 == 0:
            path = f"/events?channel={channel}&channel=churn-{(index + 1) % CHANNEL_POOL}"
        else:
            path = f"/events/{channel}"
        if kind == "clean":
            stream = await self.open(path)
            await stream.read_until(b"retry:")
            await stream.close()
        elif kind == "reset":
            stream = await self.open(path)
            await stream.read_until(b"retry:")
            stream.reset()
        elif kind == "replay_full":
            stream = await self.open(f"/events/{REPLAY_CHANNEL}", self.replay_first_id)
            await stream.read_until(self.replay_last_marker)
            await stream.close()
        elif kind == "replay_reset":
            stream = await self.open(
                f"/events/{REPLAY_CHANNEL}", self.replay_first_id, small_window=True
            )
            stream.reset()
        else:
            raise AssertionError(kind)
        self.kinds[kind] += 1

    async def wait_for(
        self, condition: Callable[[Reading], bool], what: str, timeout: float = 20.0
    ) -> Reading:
        deadline = time.monotonic() + timeout
        while True:
            reading = await self.probe.read()
            if condition(reading):
                return reading
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}: {reading.document['sse']}")
            await asyncio.sleep(0.02)

    async def overflow_round(self) -> None:
        await self.wait_for(lambda r: r.connections == 0, "the previous block to close")
        half = OVERFLOW_ROUND // 2
        # Two groups on two channels, so publishing to one cannot overflow the other.
        vanishing = [
            await self.open(f"/events/{STUCK_CHANNEL}", small_window=True) for _ in range(half)
        ]
        overflowing = [
            await self.open(f"/events/{OVERFLOW_CHANNEL}", small_window=True)
            for _ in range(OVERFLOW_ROUND - half)
        ]
        for client in vanishing + overflowing:
            await client.read_until(b"retry:")
        start = (await self.probe.read()).document["sse"]["overflow_disconnects"]

        def overflowed(reading: Reading) -> int:
            return int(reading.document["sse"]["overflow_disconnects"]) - int(start)

        # Events queue only behind a write that is waiting on the socket: once the
        # queues hold one event per client on average, their writers are stuck.
        for _ in range(MAX_OVERFLOW_PUBLISHES):
            await self.publish(STUCK_CHANNEL, OVERFLOW_EVENT_BYTES)
            reading = await self.probe.read()
            if reading.queued >= len(vanishing):
                break
        else:
            raise AssertionError(f"writers never blocked: {reading.document['sse']}")
        self.stuck_queued.append(reading.queued)
        # Normally none; counted so the exact check below also holds if one did.
        overflowed_before_reset = overflowed(reading)
        for client in vanishing:
            client.reset()  # gone while the server's writes to it are stuck
        await self.wait_for(
            lambda r: r.connections == len(overflowing), "the reset clients to be released"
        )
        expected = overflowed_before_reset + len(overflowing)
        for published in range(MAX_OVERFLOW_PUBLISHES):
            await self.publish(OVERFLOW_CHANNEL, OVERFLOW_EVENT_BYTES)
            if published % 4 == 3 and overflowed(await self.probe.read()) >= expected:
                break
        # Closed by the server, their last writes wait on clients that do not read: one
        # reads its stream to the end, the others close (unread data: the kernel sends RST).
        reader, *closing = overflowing
        for client in closing:
            await client.close()
        while not (reader.body.finished or reader.ended):
            try:
                await reader.next_messages()
            except EOFError:
                break
        await reader.close()
        reading = await self.wait_for(lambda r: r.connections == 0, "overflowed streams to end")
        # Exactly the clients that were still there, and never one that had gone.
        assert overflowed(reading) == expected
        self.overflows_expected += expected
        self.kinds["overflow"] += OVERFLOW_ROUND

    async def block(self, first_index: int) -> None:
        slots = asyncio.Semaphore(CONCURRENCY)

        async def bounded(kind: str, index: int) -> None:
            async with slots:
                try:
                    await self.cycle(kind, index)
                except (AssertionError, OSError, EOFError, TimeoutError) as exc:
                    self.refused[f"{kind}: {type(exc).__name__}: {exc}"[:160]] += 1

        await asyncio.gather(
            *(bounded(kind, first_index + n) for n, kind in enumerate(BLOCK_KINDS))
        )
        await self.overflow_round()

    async def aclose(self) -> None:
        await self.publisher.aclose()


def assert_idle(reading: Reading, idle: Reading) -> None:
    assert reading.connections == 0, reading.document["sse"]
    assert reading.channels == 0, reading.document["sse"]
    assert reading.queued == reading.queued_bytes == 0, reading.document["sse"]
    assert reading.tasks == idle.tasks, (reading.tasks, idle.tasks)


@pytest.mark.parametrize("scale", SCALES)
async def test_connect_disconnect_cycles_leave_nothing_behind(
    scale: ChurnScale,
    leak_server: LeakServer,
    probe_factory: Callable[[ServerProcess], AdminProbe],
    figures: FigureSheet,
) -> None:
    server = leak_server(**SERVER_ENV)
    probe = probe_factory(server)
    churn = Churn(server, probe)
    idle = await probe.read()
    await churn.fill_replay_history()
    figures.add("server", "python -m app, memory://, SSE_QUEUE_SIZE=4, SSE_HISTORY_SIZE=20")
    figures.add("idle: tasks", idle.tasks)
    figures.add("idle: RSS MB (before any stream)", idle.rss_mb)

    started = time.perf_counter()
    checkpoints: list[tuple[int, float]] = []
    warm: Reading | None = None
    done = 0
    try:
        while done < scale.cycles:
            await churn.block(done)
            done += BLOCK
            if done == scale.warm_up or (done > scale.warm_up and warm is None):
                warm = await probe.wait_idle(idle.tasks)
                assert_idle(warm, idle)
                checkpoints.append((done, warm.rss_mb))
            elif done % scale.checkpoint_every == 0 or done >= scale.cycles:
                reading = await probe.wait_idle(idle.tasks)
                assert_idle(reading, idle)
                checkpoints.append((done, reading.rss_mb))
        elapsed = time.perf_counter() - started
        end = await probe.wait_idle(idle.tasks)
    finally:
        await churn.aclose()

    assert warm is not None
    drift = end.rss_bytes - warm.rss_bytes
    figures.add("cycles", sum(churn.kinds.values()))
    figures.add("  by kind", ", ".join(f"{k} {v:,}" for k, v in sorted(churn.kinds.items())))
    figures.add("  failed", sum(churn.refused.values()))
    figures.add("duration s", elapsed)
    figures.add("cycles per second", sum(churn.kinds.values()) / elapsed)
    figures.add("warm-up cycles", scale.warm_up)
    figures.add("RSS MB after warm-up (idle)", warm.rss_mb)
    figures.add("RSS MB at the end (idle)", end.rss_mb)
    figures.add("RSS drift MB (limit 5)", drift / MB)
    figures.add(
        "RSS MB at checkpoints (idle)", ", ".join(f"{n:,}: {m:.1f}" for n, m in checkpoints)
    )
    figures.add(
        "end: connections/channels/tasks",
        f"{end.connections}/{end.channels}/{end.tasks} (idle {idle.tasks} tasks)",
    )
    figures.add("overflow disconnects", end.document["sse"]["overflow_disconnects"])
    figures.add(
        "queued when stuck clients reset (min)",
        f"{min(churn.stuck_queued)} events for {OVERFLOW_ROUND // 2} clients",
    )
    figures.add("history channel logs", end.history_channels)

    assert not churn.refused, churn.refused.most_common(5)
    assert_idle(end, idle)
    assert drift <= MAX_RSS_DRIFT_BYTES, f"RSS grew {drift / MB:.1f} MB after warm-up"
    assert end.document["sse"]["overflow_disconnects"] == churn.overflows_expected
    # The broker's per-channel logs are reused across cycles, not accumulated.
    assert end.history_channels <= CHANNEL_POOL + 3
