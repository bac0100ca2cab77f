"""Ten thousand distinct streamed responses through the response cache of a real server:
the cache never holds more than 50 entries or 10 MB, and RSS stays bounded.

The requests are ``POST /api/responses`` with the echo producer (``ECHO_DELAY_MS``
= 0, so a run completes at once and its text enters the cache). Most inputs are
a short sentence, which makes the item bound evict; every thousand responses a
burst of 25 answers of 500,000 characters makes the byte bound evict too
(25 x 500 KB is more than 10 MB). ``MAX_INPUT_CHARS`` is raised for them; the
cache bounds are the defaults. While the churn runs, the admin metrics are
sampled every 50 ms; every sample must be within both bounds.

RSS: after a warm-up of one thousand responses (one burst included), no sample
taken during the later churn may exceed the warm-up's peak by more than 10 MB:
memory follows the bounds, not the number of responses served. The peak is the
figure to bound here, not the idle RSS between bursts: glibc keeps some of the
freed 500 KB blocks in its heap, so idle RSS after a burst wanders (measured
between 65 and 92 MB over 20,000 responses) while the peak stays within 2 MB
of 113 MB. The idle figures are printed all the same.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from tests.leak.conftest import FigureSheet, LeakServer
from tests.leak.probe import MB, AdminProbe, Reading, scales
from tests.leak.raw_http import KeepAliveClient
from tests.support.server import ServerProcess

pytestmark = pytest.mark.integration

HOST = "127.0.0.1"
CACHE_MAX_ITEMS = 50  # the defaults, which the server must report
CACHE_MAX_BYTES = 10 * MB
LARGE_CHARS = 500_000
BURST_EVERY = 1_000
BURST_OFFSET = 500  # the burst sits in the middle of each thousand
BURST_SIZE = 25
WARM_UP = 1_000
CLIENTS = 8  # requests in flight
MONITOR_SECONDS = 0.05
MAX_PEAK_GROWTH_BYTES = 10 * MB
# Runs outlive their requests (a 201 comes before the answer is produced): room for those the
# churn has going, so that only the cache's bounds are what this test meets.
SERVER_ENV = {
    "ECHO_DELAY_MS": "0",
    "MAX_INPUT_CHARS": str(LARGE_CHARS + 100),
    "RESPONSE_MAX_RUNS": "200",
}


@dataclass(frozen=True)
class CacheScale:
    responses: int


SCALES = scales(CacheScale(10_000), CacheScale(50_000))


def is_large(index: int) -> bool:
    return BURST_OFFSET <= index % BURST_EVERY < BURST_OFFSET + BURST_SIZE


def input_text(index: int) -> str:
    if is_large(index):
        return f"large-{index}-" + "x" * LARGE_CHARS  # one word: one delta
    return f"response number {index}: a short answer, echoed word by word"


@dataclass
class Peaks:
    items: int = 0
    bytes: int = 0
    rss: int = 0
    samples: int = 0
    over_bounds: list[dict[str, object]] = field(default_factory=list)

    def see(self, reading: Reading) -> None:
        cache = reading.document["cache"]
        self.items = max(self.items, cache["items"])
        self.bytes = max(self.bytes, cache["bytes"])
        self.rss = max(self.rss, reading.rss_bytes)
        self.samples += 1
        if cache["items"] > CACHE_MAX_ITEMS or cache["bytes"] > CACHE_MAX_BYTES:
            self.over_bounds.append(cache)


async def churn(server: ServerProcess, probe: AdminProbe, first: int, count: int) -> Peaks:
    """Create responses ``first`` .. ``first + count - 1``; sample the cache meanwhile."""
    peaks = Peaks()
    pending = iter(range(first, first + count))
    failures: list[tuple[int, int, bytes]] = []
    done = asyncio.Event()

    async def client() -> None:
        http = KeepAliveClient(HOST, server.port)
        try:
            for index in pending:  # one shared iterator: each index is taken once
                response = await http.post_json(
                    "/api/responses", {"input": input_text(index), "producer": "echo"}
                )
                if response.status != 201 or response.json()["cached"]:
                    failures.append((index, response.status, response.body[:200]))
        finally:
            await http.aclose()

    async def monitor() -> None:
        while not done.is_set():
            peaks.see(await probe.read())
            await asyncio.sleep(MONITOR_SECONDS)

    watcher = asyncio.create_task(monitor())
    try:
        await asyncio.gather(*(client() for _ in range(CLIENTS)))
    finally:
        done.set()
        await watcher
    assert not failures, failures[:5]
    return peaks


async def settled(probe: AdminProbe, idle_tasks: int) -> Reading:
    """Every run finished (a run is a task) and a fresh RSS reading."""
    reading = await probe.wait_idle(idle_tasks)
    assert reading.tasks == idle_tasks, reading.document["responses"]
    assert reading.document["responses"]["running"] == 0
    return reading


@pytest.mark.parametrize("scale", SCALES)
async def test_cache_churn_stays_within_bounds(
    scale: CacheScale,
    leak_server: LeakServer,
    probe_factory: Callable[[ServerProcess], AdminProbe],
    figures: FigureSheet,
) -> None:
    server = leak_server(**SERVER_ENV)
    probe = probe_factory(server)
    idle = await probe.read()
    assert idle.document["cache"]["max_items"] == CACHE_MAX_ITEMS
    assert idle.document["cache"]["max_bytes"] == CACHE_MAX_BYTES

    started = time.perf_counter()
    warm_peaks = await churn(server, probe, 0, WARM_UP)
    warm = await settled(probe, idle.tasks)
    peaks = await churn(server, probe, WARM_UP, scale.responses - WARM_UP)
    elapsed = time.perf_counter() - started
    end = await settled(probe, idle.tasks)

    # The cache still works: the newest answer is a hit, the first one long evicted.
    http = KeepAliveClient(HOST, server.port)
    try:
        newest = await http.post_json("/api/responses", {"input": input_text(scale.responses - 1)})
        oldest = await http.post_json("/api/responses", {"input": input_text(0)})
    finally:
        await http.aclose()

    cache = end.document["cache"]
    runs = end.document["responses"]
    figures.add("responses", scale.responses)
    figures.add("  of which large (500,000 chars)", sum(map(is_large, range(scale.responses))))
    figures.add("duration s", elapsed)
    figures.add("responses per second", scale.responses / elapsed)
    figures.add("cache samples taken", warm_peaks.samples + peaks.samples)
    figures.add("cache peak items (limit 50)", max(warm_peaks.items, peaks.items))
    figures.add("cache peak MB (limit 10)", max(warm_peaks.bytes, peaks.bytes) / MB)
    figures.add("cache evictions", cache["evictions"])
    figures.add("runs kept / evicted", f"{runs['runs']} / {runs['evicted']:,}")
    figures.add("RSS MB idle before", idle.rss_mb)
    figures.add(
        "RSS MB peak in warm-up / after", f"{warm_peaks.rss / MB:.1f} / {peaks.rss / MB:.1f}"
    )
    figures.add("RSS MB idle after warm-up / at end", f"{warm.rss_mb:.1f} / {end.rss_mb:.1f}")
    figures.add("RSS peak growth MB (limit 10)", (peaks.rss - warm_peaks.rss) / MB)

    assert not warm_peaks.over_bounds and not peaks.over_bounds, peaks.over_bounds[:3]
    assert cache["items"] <= CACHE_MAX_ITEMS and cache["bytes"] <= CACHE_MAX_BYTES
    # Both bounds did the evicting, and nothing was too large to cache at all.
    assert cache["evictions"]["items"] > 0 and cache["evictions"]["bytes"] > 0
    assert cache["rejected"] == 0
    assert runs["completed"] == scale.responses and runs["failed"] == 0
    assert newest.status == oldest.status == 201
    assert newest.json()["cached"] is True and oldest.json()["cached"] is False
    assert peaks.rss - warm_peaks.rss <= MAX_PEAK_GROWTH_BYTES
    assert end.rss_bytes <= warm_peaks.rss + MAX_PEAK_GROWTH_BYTES
