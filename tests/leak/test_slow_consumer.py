"""A consumer that stops reading, among others that read at full speed, against a real
server: the server's memory stays bounded, the slow one is handled per ``SSE_OVERFLOW``,
and the fast ones see the same delivery rate and latency as without it.

Each policy runs two phases on one server, with the same publisher (8 KB events
at a fixed rate, each carrying its sequence number and publish time) and four
fast readers: first without, then with a slow client — one with a 4 KB receive
window that reads the response head and then nothing, so the server's writes
back up and its queue (``SSE_QUEUE_SIZE`` = 16) fills.

- ``disconnect``: the server cuts the slow stream (one overflow disconnect, an
  abort: RST, so what was still in flight is dropped rather than left in kernel
  buffers); what reached the client is a gapless prefix, and reconnecting with
  its ``Last-Event-ID`` continues exactly after it (or says ``reset`` if history
  no longer reaches back). The slow client joined up to date, holding the id
  of the newest event, as a browser that has been following the channel does.
- ``drop_oldest``: the slow stream stays open; when the client reads again it
  finds ``event: gap`` frames, and the events it receives plus the ``dropped``
  counts they announce add up to every event published.

The bounds on the fast readers are generous (this machine is shared): every
event arrives, the rate is within 20 % of the baseline, and p50/p99 latency
within three times the baseline plus a few tens of milliseconds.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from app.wire.parser import SSEMessage
from tests.leak.conftest import FigureSheet, LeakServer
from tests.leak.probe import MB, AdminProbe, scales
from tests.leak.raw_http import KeepAliveClient, SseSocket, open_sse
from tests.support.server import ServerProcess

pytestmark = pytest.mark.integration

HOST = "127.0.0.1"
CHANNEL = "feed"
QUEUE_SIZE = 16
HISTORY_SIZE = 500  # replay reaches back this many events (filled before the baseline)
FAST_READERS = 4
EVENT_BYTES = 8_000
RATE_PER_SECOND = 250
SMALL_RECEIVE_BUFFER = 4096
MAX_RSS_GROWTH_BYTES = 10 * MB
RATE_FLOOR = 0.8
LATENCY_FACTOR = 3.0
P50_SLACK_SECONDS = 0.025
P99_SLACK_SECONDS = 0.1
MONITOR_SECONDS = 0.1


@dataclass(frozen=True)
class SlowScale:
    seconds: float


SCALES = scales(SlowScale(3.0), SlowScale(30.0))


@dataclass
class ReaderLog:
    """What one reader saw: sequence numbers, latencies, gap announcements."""

    sequences: list[int] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    arrivals: list[float] = field(default_factory=list)
    dropped_announced: int = 0
    last_id: str = ""

    def take(self, message: SSEMessage) -> None:
        now = time.perf_counter()
        if message.event == "gap":
            self.dropped_announced += json.loads(message.data)["dropped"]
            return
        sequence, published_at, _ = message.data.split(" ", 2)
        self.sequences.append(int(sequence))
        self.latencies.append(now - float(published_at))
        self.arrivals.append(now)
        self.last_id = message.id

    @property
    def rate(self) -> float:
        if len(self.arrivals) < 2:
            return 0.0
        return (len(self.arrivals) - 1) / (self.arrivals[-1] - self.arrivals[0])


@dataclass
class Phase:
    """One publishing run: what the fast readers saw and what the server held."""

    published: int = 0
    readers: list[ReaderLog] = field(default_factory=list)
    peak_rss: int = 0
    peak_queued: int = 0
    peak_queued_bytes: int = 0

    def latencies(self) -> list[float]:
        return sorted(value for reader in self.readers for value in reader.latencies)

    def percentile(self, fraction: float) -> float:
        values = self.latencies()
        return values[min(len(values) - 1, int(fraction * len(values)))]

    @property
    def rate(self) -> float:
        return statistics.mean(reader.rate for reader in self.readers)


async def read_until(stream: SseSocket, log: ReaderLog, last_sequence: int) -> None:
    """Read until the event with ``last_sequence``, or until the server ends the stream."""
    while not stream.body.finished and (not log.sequences or log.sequences[-1] < last_sequence):
        try:
            messages = await stream.next_messages(timeout=15.0)
        except EOFError:
            return
        for message in messages:
            log.take(message)


async def publish_at_rate(publisher: KeepAliveClient, seconds: float, done: asyncio.Event) -> int:
    count = int(seconds * RATE_PER_SECOND)
    padding = "x" * EVENT_BYTES
    started = time.perf_counter()
    for sequence in range(count):
        due = started + sequence / RATE_PER_SECOND
        await asyncio.sleep(max(0.0, due - time.perf_counter()))
        body = f"{sequence} {time.perf_counter():.6f} {padding}".encode()
        response = await publisher.post_text(f"/events/{CHANNEL}", body)
        assert response.status == 202, response.body
    done.set()  # stops the monitor
    return count


async def monitor(probe: AdminProbe, phase: Phase, stop: asyncio.Event) -> None:
    while not stop.is_set():
        reading = await probe.read()
        phase.peak_rss = max(phase.peak_rss, reading.rss_bytes)
        phase.peak_queued = max(phase.peak_queued, reading.queued)
        phase.peak_queued_bytes = max(phase.peak_queued_bytes, reading.queued_bytes)
        await asyncio.sleep(MONITOR_SECONDS)


async def run_phase(
    server: ServerProcess, probe: AdminProbe, seconds: float, expected_connections: int
) -> Phase:
    """Fast readers plus whoever is already connected; publish for ``seconds``."""
    phase = Phase()
    streams = [await open_sse(HOST, server.port, f"/events/{CHANNEL}") for _ in range(FAST_READERS)]
    publisher = KeepAliveClient(HOST, server.port)
    done = asyncio.Event()
    try:
        for stream in streams:
            assert stream.status == 200
            await stream.read_until(b"retry:")
        # Polling a figure in another process: there is no event to wait on.
        while (await probe.read()).connections < expected_connections:  # noqa: ASYNC110
            await asyncio.sleep(0.02)
        phase.readers = [ReaderLog() for _ in streams]
        watcher = asyncio.create_task(monitor(probe, phase, done))
        count = int(seconds * RATE_PER_SECOND)
        readers = [
            asyncio.create_task(read_until(stream, log, count - 1))
            for stream, log in zip(streams, phase.readers, strict=True)
        ]
        phase.published = await publish_at_rate(publisher, seconds, done)
        await asyncio.wait_for(asyncio.gather(*readers), timeout=30)
        await watcher
    finally:
        done.set()
        for stream in streams:
            await stream.close()
        await publisher.aclose()
    return phase


def record(figures: FigureSheet, name: str, phase: Phase) -> None:
    received = ", ".join(f"{len(r.sequences):,}" for r in phase.readers)
    figures.add(f"{name}: published / each received", f"{phase.published:,} / {received}")
    figures.add(f"{name}: rate /s per reader", phase.rate)
    figures.add(
        f"{name}: latency p50 / p99 ms",
        f"{phase.percentile(0.5) * 1000:.1f} / {phase.percentile(0.99) * 1000:.1f}",
    )
    figures.add(f"{name}: peak RSS MB", phase.peak_rss / MB)
    queued_kb = phase.peak_queued_bytes / 1024
    figures.add(f"{name}: peak queued events / KB", f"{phase.peak_queued} / {queued_kb:.0f}")


async def fill_history(server: ServerProcess) -> None:
    """History at its full size before the baseline, so both phases hold the same."""
    publisher = KeepAliveClient(HOST, server.port)
    body = b"0 0 " + b"x" * EVENT_BYTES
    try:
        for _ in range(HISTORY_SIZE):
            response = await publisher.post_text(f"/events/{CHANNEL}", body)
            assert response.status == 202, response.body
    finally:
        await publisher.aclose()


async def slow_client_overflow(
    server: ServerProcess, policy: str, slow: SseSocket, phase: Phase, joined_at: str
) -> str:
    """Read what the slow client was sent, check it against the policy; a figure line."""
    log = ReaderLog(last_id=joined_at)
    last = phase.published - 1
    if policy == "disconnect":
        await read_until(slow, log, last)
        # Stream ended by the server: what arrived is a prefix with no hole.
        assert slow.reset_by_server, "an overflow cut is an abort (RST)"
        assert log.sequences == list(range(len(log.sequences))), "a hole before the cut"
        assert log.dropped_announced == 0
        await slow.close()
        resumed = await open_sse(HOST, server.port, f"/events/{CHANNEL}", last_event_id=log.last_id)
        try:
            first = [m for m in await resumed.next_messages() if m.event != "gap"]
            while not first:
                first = await resumed.next_messages()
        finally:
            resumed.reset()
        missed = phase.published - len(log.sequences)
        if missed <= HISTORY_SIZE:
            # History reaches back: the replay continues exactly after the cut.
            assert first[0].data.split(" ", 1)[0] == str(len(log.sequences)), first[0]
        else:
            assert first[0].event == "reset", first[0]
        return f"cut after {len(log.sequences):,} events; resume gets '{first[0].event}'"
    await read_until(slow, log, last)
    await slow.close()
    # Nothing lost silently: every event was received or announced as dropped.
    assert log.sequences[-1] == last
    assert len(log.sequences) + log.dropped_announced == phase.published
    assert log.dropped_announced > 0
    return f"received {len(log.sequences):,}, announced dropped {log.dropped_announced:,}"


@pytest.mark.parametrize("policy", ["disconnect", "drop_oldest"])
@pytest.mark.parametrize("scale", SCALES)
async def test_slow_consumer_is_contained(
    scale: SlowScale,
    policy: str,
    leak_server: LeakServer,
    probe_factory: Callable[[ServerProcess], AdminProbe],
    figures: FigureSheet,
) -> None:
    server = leak_server(
        SSE_OVERFLOW=policy,
        SSE_QUEUE_SIZE=str(QUEUE_SIZE),
        SSE_HISTORY_SIZE=str(HISTORY_SIZE),
    )
    probe = probe_factory(server)
    idle = await probe.read()
    figures.add(
        "server",
        f"SSE_OVERFLOW={policy}, SSE_QUEUE_SIZE={QUEUE_SIZE}, SSE_HISTORY_SIZE={HISTORY_SIZE}",
    )
    figures.add(
        "publisher",
        f"{RATE_PER_SECOND} events/s of {EVENT_BYTES:,} B for {scale.seconds:g} s, "
        f"{FAST_READERS} fast readers",
    )
    figures.add("idle RSS MB", idle.rss_mb)
    await fill_history(server)

    baseline = await run_phase(server, probe, scale.seconds, FAST_READERS)
    record(figures, "no slow client", baseline)
    before = (await probe.read()).document["sse"]
    newest = baseline.readers[0].last_id  # the slow client joins up to date
    slow = await open_sse(
        HOST,
        server.port,
        f"/events/{CHANNEL}",
        last_event_id=newest,
        receive_buffer=SMALL_RECEIVE_BUFFER,
    )
    assert slow.status == 200
    with_slow = await run_phase(server, probe, scale.seconds, FAST_READERS + 1)
    record(figures, "with slow client", with_slow)
    after = (await probe.read()).document["sse"]
    overflows = after["overflow_disconnects"] - before["overflow_disconnects"]
    dropped = after["dropped"] - before["dropped"]
    figures.add("overflow disconnects / dropped events", f"{overflows} / {dropped:,}")
    growth = with_slow.peak_rss - baseline.peak_rss
    figures.add("peak RSS growth with slow client MB", growth / MB)
    outcome = await slow_client_overflow(server, policy, slow, with_slow, newest)
    figures.add("slow client", outcome)
    end = await probe.wait_idle(idle.tasks)
    figures.add("RSS MB at the end (idle)", end.rss_mb)

    for phase in (baseline, with_slow):
        for reader in phase.readers:  # the fast readers got everything, in order
            assert reader.sequences == list(range(phase.published))
            assert reader.dropped_announced == 0
    if policy == "disconnect":
        assert overflows == 1 and dropped == 0
    else:
        assert overflows == 0 and dropped > 0
    # One queue of QUEUE_SIZE events is all a slow client may hold (the fast ones' are empty).
    assert with_slow.peak_queued <= QUEUE_SIZE * (FAST_READERS + 1)
    assert growth <= MAX_RSS_GROWTH_BYTES, f"RSS grew {growth / MB:.1f} MB with the slow client"
    assert with_slow.rate >= RATE_FLOOR * baseline.rate
    assert with_slow.percentile(0.5) <= (
        LATENCY_FACTOR * baseline.percentile(0.5) + P50_SLACK_SECONDS
    )
    assert with_slow.percentile(0.99) <= (
        LATENCY_FACTOR * baseline.percentile(0.99) + P99_SLACK_SECONDS
    )
    assert end.connections == end.channels == 0 and end.tasks == idle.tasks
