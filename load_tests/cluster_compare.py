"""Publishes and deliveries per second through the broker: one ``redis-server`` next to a
3-master, 3-replica Redis Cluster, same run, alternating rounds.

Usage (from the repository root)::

    python -m load_tests.cluster_compare --seconds 3 --rounds 2
    python -m load_tests.cluster_compare --fanout-subscribers 1000 --rounds 2

Publish step: each round, per broker: ``--publishers`` tasks publish one 64-byte event at
a time, each awaiting its answer, over ``--channels`` channels for ``--seconds``; one worker's
broker (the same process) has a subscriber on every channel and counts what its reader
delivers. No HTTP, no hub: the figures are the broker's (Herald's reader and Redis).
``--wait-replicas 0`` shows the cluster without the durability ``WAIT``.

Fan-out step (``--fanout-subscribers N``, 0 skips it): one Herald worker per broker
(``python -m app``, ``BROKER_URL`` the redis-server or the cluster), both started at once
and holding N streams of the load generator (``load_tests/generator.py``), then the
benchmark's closed-loop fan-out (4 publishers, a window of 50 events) against each in
alternating rounds: deliveries per second and per second of the worker's CPU, as in
``python -m load_tests.latency``'s fan-out step. Everything runs on 127.0.0.1 and
stops at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import statistics
import time
import uuid
from collections.abc import Callable
from typing import Any

from app.broker.base import Broker, Draft
from app.broker.redis import RedisBroker
from app.broker.redis_cluster import RedisClusterBroker
from tests.support.redis_cluster import RedisCluster
from tests.support.redis_server import RedisServer

__all__ = ["main"]


async def _round(make: Callable[[], Broker], args: argparse.Namespace) -> tuple[float, float]:
    delivered = 0

    def count(_event: object) -> None:
        nonlocal delivered
        delivered += 1

    broker = make()
    await broker.connect(count)
    channels = [f"bench{i}" for i in range(args.channels)]
    for channel in channels:
        await broker.subscribe(channel)
    await asyncio.sleep(0.5)
    acked = 0
    stop = time.monotonic() + args.seconds

    async def publisher(index: int) -> None:
        nonlocal acked
        i = index
        while time.monotonic() < stop:
            channel = channels[i % len(channels)]
            i += args.publishers
            await broker.publish([Draft((channel,), b'data: {"n":1234567890,"pad":"xxxxxx"}\n')])
            acked += 1

    started = time.monotonic()
    await asyncio.gather(*(publisher(i) for i in range(args.publishers)))
    elapsed = time.monotonic() - started
    deadline = time.monotonic() + 10
    while delivered < acked and time.monotonic() < deadline:  # noqa: ASYNC110 - a counter
        await asyncio.sleep(0.05)
    drained = time.monotonic() - started
    await broker.disconnect()
    return acked / elapsed, delivered / drained


async def _run(args: argparse.Namespace) -> dict[str, Any]:
    single = RedisServer().start()
    cluster = RedisCluster().start()
    try:
        makers: dict[str, Callable[[], Broker]] = {
            "redis://": lambda: RedisBroker(
                single.url, history_size=100, channel_ttl_seconds=60, key_prefix=_prefix()
            ),
            "redis+cluster://": lambda: RedisClusterBroker(
                cluster.url,
                history_size=100,
                channel_ttl_seconds=60,
                key_prefix=_prefix(),
                wait_replicas=args.wait_replicas,
            ),
        }
        figures: dict[str, list[tuple[float, float]]] = {name: [] for name in makers}
        for _ in range(args.rounds):
            for name, make in makers.items():
                figures[name].append(await _round(make, args))
        return {
            name: (
                statistics.median(p for p, _ in rounds),
                statistics.median(d for _, d in rounds),
            )
            for name, rounds in figures.items()
        }
    finally:
        cluster.close()
        single.close()


def fanout(args: argparse.Namespace, single: RedisServer, cluster: RedisCluster) -> None:
    """The fan-out step: deliveries/s through a Herald worker on each broker."""
    from load_tests.benchmark import (
        _connect,
        herald_spec,
        plan_placement,
    )
    from load_tests.generator import raise_open_file_limit
    from load_tests.latency import measure_fanout, serving

    raise_open_file_limit()
    placement = plan_placement(True)
    base = herald_spec(args.fanout_subscribers)
    urls = {"redis://": single.url, "redis+cluster://": cluster.url}
    with contextlib.ExitStack() as stack:
        servers = {
            name: stack.enter_context(
                serving(dataclasses.replace(base, env={**base.env, "BROKER_URL": url}), placement)
            )
            for name, url in urls.items()
        }
        for _, gen in servers.values():
            _connect(gen, args.fanout_subscribers)
        for number in range(args.rounds):
            names = list(servers) if number % 2 == 0 else list(reversed(servers))
            for name in names:
                measured = measure_fanout(*servers[name], args.fanout_seconds)
                rate, share = measured["deliveries_per_second"], measured["server_cpu"] or 0.0
                cpu_note = f"worker CPU {share:.0%}, generator {measured['generator_cpu']:.0%}"
                print(
                    f"  round {number + 1} {name:18} fan-out {rate:10,.0f} deliveries/s,"
                    f" {measured['deliveries_per_cpu_second'] or 0:10,.0f} per worker CPU-second"
                    f" ({cpu_note})",
                    flush=True,
                )


def _prefix() -> str:
    return f"b{uuid.uuid4().hex[:8]}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m load_tests.cluster_compare")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--publishers", type=int, default=16)
    parser.add_argument("--channels", type=int, default=12)
    parser.add_argument("--wait-replicas", type=int, default=1)
    parser.add_argument("--fanout-subscribers", type=int, default=0, help="0 skips fan-out")
    parser.add_argument("--fanout-seconds", type=float, default=8.0)
    parser.add_argument("--no-publish", action="store_true", help="the fan-out step only")
    args = parser.parse_args(argv)
    if args.fanout_subscribers:
        single, cluster = RedisServer().start(), RedisCluster().start()
        try:
            print(f"fan-out to {args.fanout_subscribers:,} streams, {args.rounds} rounds")
            fanout(args, single, cluster)
        finally:
            cluster.close()
            single.close()
    if args.no_publish:
        return 0
    results = asyncio.run(_run(args))
    print(
        f"{args.publishers} publishers awaiting each answer, {args.channels} channels, "
        f"{args.seconds} s x {args.rounds} rounds (median), cluster WAIT {args.wait_replicas}"
    )
    for name, (published, delivered) in results.items():
        print(f"  {name:18} publish {published:8.0f} events/s   delivered {delivered:8.0f} /s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
