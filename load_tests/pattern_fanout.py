"""Fan-out cost of pattern subscriptions: 1,000 exact + 1,000 URL-pattern subscribers
against 1,000 exact only, in one run, in this process.

Usage (from the repository root)::

    python -m load_tests.pattern_fanout                 # 2,000 events over 50 topics
    python -m load_tests.pattern_fanout --events 5000 --topics 500

It builds a real ``Hub`` on ``memory://`` and opens the streams through
``Hub.open`` (exact topics as channels, Mercure ``urlpattern`` matchers as
patterns: 10 distinct patterns shared by the 1,000 pattern subscribers, one of
which matches each topic), then publishes through ``Hub.publish_frame`` and
times the synchronous fan-out. Nothing writes to a socket: the figure is the
hub's cost to decide and queue each delivery (the part patterns change), and
queues are emptied (untimed) between events so none overflows. Printed: deliveries per
second for each scenario, the match cache's evaluations and hits.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time

from app.broker.memory import MemoryBroker
from app.core.config import load_settings
from app.mercure.matchers import URLPATTERN, parse_matcher
from app.sse.hub import Hub

__all__ = ["run"]

HUB_URL = "https://localhost/.well-known/mercure"
PATTERN_KINDS = 10


async def _scenario(*, exact: int, patterns: int, events: int, topics: int) -> dict[str, float]:
    settings = load_settings(sse_max_connections=100_000, sse_queue_size=10)
    broker = MemoryBroker(
        history_size=0, history_max_bytes=0, history_max_channels=10, channel_ttl_seconds=60
    )
    hub = Hub(settings, broker)
    await hub.start()
    topic_names = [f"https://example.com/k{n % PATTERN_KINDS}/{n}" for n in range(topics)]
    matchers = [
        parse_matcher(URLPATTERN, f"https://example.com/k{k}/:id", hub_url=HUB_URL, max_length=200)
        for k in range(PATTERN_KINDS)
    ]
    async with contextlib.AsyncExitStack() as stack:
        connections = []
        for n in range(exact):
            connections.append(
                await stack.enter_async_context(hub.open([topic_names[n % topics]], validated=True))
            )
        for n in range(patterns):
            connections.append(
                await stack.enter_async_context(
                    hub.open([], patterns=[matchers[n % PATTERN_KINDS]], validated=True)
                )
            )
        for connection in connections:
            connection.go_live((0, 0))
        body = b"data: x\n"
        delivered = 0
        elapsed = 0.0
        for n in range(events):
            started = time.perf_counter()
            await hub.publish_frame(topic_names[n % topics], body, event_id=None)
            elapsed += time.perf_counter() - started
            for connection in connections:
                delivered += connection.queued
                connection.discard_queue()
        stats = hub._patterns.stats()
    await hub.stop()
    return {
        "deliveries": delivered,
        "seconds": elapsed,
        "per_second": delivered / elapsed,
        "evaluations": stats["evaluations"],
        "cache_hits": stats["cache_hits"],
    }


def run(events: int, topics: int) -> None:
    exact_only = asyncio.run(_scenario(exact=1000, patterns=0, events=events, topics=topics))
    mixed = asyncio.run(_scenario(exact=1000, patterns=1000, events=events, topics=topics))
    for name, result in (("1,000 exact", exact_only), ("1,000 exact + 1,000 pattern", mixed)):
        print(
            f"{name:30s} deliveries {result['deliveries']:>9,.0f}  "
            f"{result['per_second']:>12,.0f}/s  pattern evaluations {result['evaluations']:,.0f}"
            f"  cache hits {result['cache_hits']:,.0f}"
        )
    print("timed: publish_frame only (id, history, fan-out); draining queues is not timed")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--topics", type=int, default=50)
    args = parser.parse_args()
    run(args.events, args.topics)


if __name__ == "__main__":
    main()
