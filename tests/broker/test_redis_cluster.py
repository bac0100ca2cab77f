"""RedisClusterBroker against a real 3-master, 3-replica Redis Cluster, no Herald process,
beyond the broker contract (tests/broker/test_contract.py): channels over every master, one
order across log shards in every worker, multi-shard events as one event with one id,
publisher ids as cursors across shards, gaps, held events, durability (WAIT), a worker's
order across shards, a failing shard, a keyed batch completed by its retry."""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections.abc import AsyncIterator, Iterable
from typing import Any

import pytest
import redis

from app.broker.base import BrokerUnavailableError, Draft, PageLimit, PublishKey
from app.broker.idempotency import fingerprint
from app.broker.publish_script import PUBLISH_SCRIPT, publish_arguments
from app.broker.redis_cluster import RedisClusterBroker
from app.wire.event import Event
from tests.support.publishing import assert_serves_degraded, publish_one
from tests.support.redis_cluster import RedisCluster
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration

CHANNELS = [f"ch{i}" for i in range(12)]


def new_broker(cluster: RedisCluster, **options: Any) -> RedisClusterBroker:
    options.setdefault("history_size", 100)
    options.setdefault("channel_ttl_seconds", 60)
    options.setdefault("key_prefix", f"u{uuid.uuid4().hex[:10]}")
    options.setdefault("block_ms", 300)
    return RedisClusterBroker(cluster.url, **options)


class Worker:
    """A broker and what its listener got: one Herald worker, without the hub."""

    def __init__(self, broker: RedisClusterBroker) -> None:
        self.broker = broker
        self.received: list[Event] = []
        self.resyncs: list[str] = []

    async def start(self, channels: Iterable[str] = CHANNELS) -> Worker:
        await self.broker.connect(self.received.append, self.resyncs.append)
        for channel in channels:
            await self.broker.subscribe(channel)
        return self


@pytest.fixture
async def worker(redis_cluster: RedisCluster) -> AsyncIterator[Worker]:
    started = await Worker(new_broker(redis_cluster)).start()
    yield started
    await started.broker.disconnect()


def ids(events: Iterable[Event]) -> list[str]:
    return [event.id for event in events]


async def test_channels_spread_over_every_master(
    redis_cluster: RedisCluster, worker: Worker
) -> None:
    broker = worker.broker
    masters = {redis_cluster.master_of(broker.key(channel)) for channel in CHANNELS}
    assert masters == set(redis_cluster.masters())
    # A channel's keys share its shard's slot: one script writes them all.
    shard = broker.shards[broker.shard_of("ch1")]
    assert broker.key("ch1") == f"{shard.tag}:c:ch1"


async def test_every_worker_delivers_one_order_across_shards(
    redis_cluster: RedisCluster, worker: Worker
) -> None:
    other = await Worker(new_broker(redis_cluster, key_prefix=worker.broker.key_prefix)).start()
    try:
        published = [
            await publish_one(worker.broker, CHANNELS[i % len(CHANNELS)], f"data: {i}\n".encode())
            for i in range(60)
        ]
        for seen in (worker, other):
            await wait_until(lambda seen=seen: len(seen.received) == len(published))  # type: ignore[misc]
    finally:
        await other.broker.disconnect()
    keys = [event.key for event in worker.received]
    assert keys == sorted(set(keys)), "not one increasing order"
    assert ids(worker.received) == ids(other.received), "two workers, two orders"
    assert sorted(ids(published)) == sorted(ids(worker.received))
    # Sequential publishes from one worker: each id is above the one before (one clock here).
    assert [e.key for e in published] == sorted(e.key for e in published)
    print(f"\n60 events over {len(CHANNELS)} channels: {worker.broker.stats()['ticks']} ticks")


async def test_an_event_on_channels_of_several_shards_is_one_event_with_one_id(
    worker: Worker,
) -> None:
    broker = worker.broker
    by_shard = {broker.shard_of(c): c for c in CHANNELS}
    x, y, z = list(by_shard.values())[:3]  # three channels on three shards
    start = (await broker.replay([x, y, z], None)).head
    before = await publish_one(broker, z, b"data: before\n")
    (multi,) = await broker.publish([Draft((x, y), b"data: multi\n")])
    after = await publish_one(broker, z, b"data: after\n")
    await wait_until(lambda: any(e.id == after.id for e in worker.received))
    # Delivered once, under the id the publisher got, in the one order.
    assert [e.id for e in worker.received if e.channels == (x, y)] == [multi.id]
    assert ids(worker.received) == ids(sorted(worker.received, key=lambda e: e.key))
    for stream in ([x], [y], [x, y], [x, y, z], [y, z]):
        replayed = await broker.replay(stream, start)
        assert ids(e for e in replayed.events if e.channels == (x, y)) == [multi.id], stream
        resumed = await broker.replay(stream, multi.id)
        assert all(e.channels != (x, y) for e in resumed.events), stream
        if z in stream:
            assert after.id in ids(resumed.events)
    # From just before it, on its non-home channel only (found through its reference).
    just_before = await broker.replay([y], before.id)
    assert ids(just_before.events)[:1] == [multi.id]
    assert before.key < multi.key < after.key


async def test_a_publisher_id_is_a_cursor_across_shards(worker: Worker) -> None:
    broker = worker.broker
    by_shard = {broker.shard_of(c): c for c in CHANNELS}
    x, y = list(by_shard.values())[:2]
    supplied = f"urn:event:{uuid.uuid4().hex}"
    await broker.publish([Draft((x, y), b"data: tagged\n", event_id=supplied)])
    later = [await publish_one(broker, channel, b"data: later\n") for channel in (y, x, y)]
    # A replay covers what every shard's frontier has passed; newer events arrive live
    # (design note 8). Once the merge delivered the last one, the replay must hold them all.
    await wait_until(lambda: any(e.id == later[-1].id for e in worker.received))
    for stream in ([x], [y], [x, y]):
        replay = await broker.replay(stream, supplied)
        assert not replay.reset, stream
        expected = [e.id for e in later if e.channels[0] in stream]
        assert ids(replay.events) == expected, stream
    unknown = await broker.replay([x], "urn:event:never-published")
    assert unknown.reset and unknown.reason == "unknown_id"


async def test_events_trimmed_from_a_shard_log_before_the_reader_got_them_cause_a_resync(
    redis_cluster: RedisCluster, worker: Worker
) -> None:
    broker = worker.broker
    await publish_one(broker, "ch1", b"data: seen\n")
    await wait_until(lambda: len(worker.received) == 1)
    shard = broker.shards[broker.shard_of("ch1")]
    master = redis_cluster.master_of(shard.log_key)
    sizes = (broker.log_size, broker.history_size, broker.channel_ttl_ms)
    # Three events and a trim in one transaction: the reader wakes to find only the last.
    with redis.Redis(port=master) as client, client.pipeline(transaction=True) as pipe:
        for i in range(3):
            homes, _ = broker.shard_parts([Draft(("ch1",), f"data: {i}\n".encode())])
            drafts = ((p.draft, p.channel_keys, p.aliases, p.reference) for p in homes[shard.index])
            keys, args = publish_arguments(shard.log_key, shard.counter_key, sizes, drafts)
            pipe.eval(PUBLISH_SCRIPT, len(keys), *keys, *args)
        pipe.xtrim(shard.log_key, maxlen=1, approximate=False)
        pipe.execute()
    await wait_until(lambda: bool(worker.resyncs))
    assert "left the log unread" in worker.resyncs[0]


async def test_a_listener_that_raises_is_a_resync_and_every_reader_reads_on(
    redis_cluster: RedisCluster,
) -> None:
    """The hub's fan-out runs in a reader's task (as it failed when uvloop refused to abort
    a stream whose client had reset first). Had the exception ended that task, the merge
    would wait for its shard for ever: nothing after it would be delivered, and the event
    would have reached only some streams."""
    failures = ["a fan-out that fails"]
    worker = Worker(new_broker(redis_cluster))

    def listener(event: Event) -> None:
        if failures:
            raise RuntimeError(failures.pop())
        worker.received.append(event)

    await worker.broker.connect(listener, worker.resyncs.append)
    try:
        for channel in CHANNELS:
            await worker.broker.subscribe(channel)
        failed = await publish_one(worker.broker, "ch0", b"data: failed\n")
        await wait_until(lambda: bool(worker.resyncs), what="a resync for the failed fan-out")
        assert failed.id in worker.resyncs[0]
        # Every shard's reader reads on, the failed one's included, and the merge moves.
        after = [await publish_one(worker.broker, c, b"data: after\n") for c in CHANNELS]
        await wait_until(
            lambda: ids(worker.received) == ids(after), what="every later event delivered"
        )
        assert len(worker.resyncs) == 1
    finally:
        await worker.broker.disconnect()


async def test_a_later_page_on_an_unreachable_node_is_unavailable_and_read_again(
    worker: Worker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A page after the first meets a node that does not answer (CLUSTERDOWN in a failover):
    ``BrokerUnavailableError``, which the stream waits out, not the node's RedisError, which
    ended the stream; the same call then reads the page."""
    broker = worker.broker
    events = [await publish_one(broker, "ch1", f"data: {i}\n".encode()) for i in range(6)]
    replay = await broker.replay(["ch1"], events[0].id, page=PageLimit(2, 1 << 20))
    got = list(replay.events)
    assert replay.rest is not None and len(got) <= 2
    client = broker.nodes.client

    def unreachable(*args: Any) -> Any:
        raise redis.exceptions.ConnectionError("Connection refused")

    monkeypatch.setattr(broker.nodes, "client", unreachable)
    with pytest.raises(BrokerUnavailableError):
        await replay.rest.next()
    monkeypatch.setattr(broker.nodes, "client", client)
    while page := await replay.rest.next():
        got += page
    assert ids(got) == ids(events[1:])


async def test_held_events_are_bounded(redis_cluster: RedisCluster) -> None:
    """A shard whose frontier cannot move holds every delivery back; past the bound the
    reader lets the held events go, resyncs, and replays wait until the merge is past."""
    bounded = await Worker(new_broker(redis_cluster, held_events=100)).start()
    try:
        stuck = bounded.broker.shards[0]
        # As if shard 0 could not be read: no tick, no entry moves its frontier.
        stuck.frontier = (0, 0)
        bounded.broker._want_tick = lambda *args: None  # type: ignore[method-assign]
        assert stuck.task is not None
        stuck.task.cancel()
        others = [c for c in CHANNELS if bounded.broker.shard_of(c) != 0]
        for i in range(110):
            await publish_one(bounded.broker, others[i % len(others)], b"data: x\n")
        await wait_until(lambda: bool(bounded.resyncs))
        assert bounded.received == []
        assert bounded.broker.stats()["held_events"] <= 100
        assert "REDIS_CLUSTER_HELD_EVENTS" in bounded.resyncs[0]
        with pytest.raises(BrokerUnavailableError):
            await bounded.broker.replay(others[:1], None)
    finally:
        await bounded.broker.disconnect()


async def test_a_publish_is_refused_when_no_replica_acknowledges_it(
    redis_cluster: RedisCluster,
) -> None:
    """WAIT asks for more replicas than a master has: written on the master only, so not
    acknowledged."""
    strict = await Worker(new_broker(redis_cluster, wait_replicas=2, wait_timeout_ms=50)).start()
    try:
        started = time.monotonic()
        with pytest.raises(BrokerUnavailableError):
            await publish_one(strict.broker, "ch1", b"data: x\n")
        assert time.monotonic() - started < 5
    finally:
        await strict.broker.disconnect()


async def test_round_trips_per_publish(redis_cluster: RedisCluster, worker: Worker) -> None:
    """One pipeline (script + WAIT) per shard a publish touches; printed for the docs."""
    broker = worker.broker
    count = 40
    started = time.monotonic()
    for i in range(count):
        await publish_one(broker, CHANNELS[i % len(CHANNELS)], b"data: x\n")
    with_wait = (time.monotonic() - started) / count
    fast = await Worker(new_broker(redis_cluster, wait_replicas=0)).start([])
    try:
        started = time.monotonic()
        for i in range(count):
            await publish_one(fast.broker, CHANNELS[i % len(CHANNELS)], b"data: x\n")
        without = (time.monotonic() - started) / count
    finally:
        await fast.broker.disconnect()
    assert broker.publish_calls >= count
    print(f"\nsequential publish: {with_wait * 1000:.2f} ms with WAIT 1,", end=" ")
    print(f"{without * 1000:.2f} ms without")
    for pair in itertools.pairwise(worker.received):
        assert pair[0].key < pair[1].key


async def test_an_unreachable_cluster_serves_degraded() -> None:
    from tests.support.server import free_port

    seeds = f"redis+cluster://127.0.0.1:{free_port()},127.0.0.1:{free_port()}"
    unreachable = RedisClusterBroker(seeds, history_size=10, channel_ttl_seconds=60)
    await assert_serves_degraded(unreachable)


async def test_a_workers_publishes_keep_their_order_across_shards(
    redis_cluster: RedisCluster,
) -> None:
    """Shard j's ids run 5 s ahead (as a tick puts an idle shard ahead, larger): an event
    published on another shard right after one on j must still come after it (the floor)."""
    from app.broker.redis_cluster.merge import TICK_SCRIPT

    quiet = await Worker(new_broker(redis_cluster)).start([])
    broker = quiet.broker
    try:
        by_shard = {broker.shard_of(c): c for c in CHANNELS}
        (j, ahead_channel), (_, behind_channel) = list(by_shard.items())[:2]
        shard = broker.shards[j]
        now_ms = int(time.time() * 1000)
        args = (broker.log_size, broker.shard_count, j, now_ms, 0, 5000)
        await broker.nodes.on_master(
            shard.slot,
            [("EVAL", TICK_SCRIPT, 2, shard.log_key, shard.counter_key, *args)],
            None,
        )
        # No tick moves the other shard past `first` before `second` is written.
        broker._want_tick = lambda *args: None  # type: ignore[method-assign]
        first = await publish_one(broker, ahead_channel, b"data: first\n")
        second = await publish_one(broker, behind_channel, b"data: second\n")
    finally:
        await broker.disconnect()
    assert first.key[0] >= now_ms + 5000
    assert second.key > first.key


async def test_a_failing_shard_fails_only_the_publishes_that_touch_it(worker: Worker) -> None:
    """Concurrent publishes share one script call per shard: a shard that cannot take its
    part (as a master without a replica in sync answers WAIT) refuses only its own."""
    broker = worker.broker
    by_shard = {broker.shard_of(c): c for c in CHANNELS}
    (bad, bad_channel), (_, good_channel) = list(by_shard.items())[:2]
    real = broker._write_shard

    async def failing(shard: Any, part: Any, runs: Any) -> tuple[list[bytes], bytes]:
        if shard.index == bad:
            raise redis.exceptions.ConnectionError("as if its master were gone")
        return await real(shard, part, runs)

    broker._write_shard = failing  # type: ignore[method-assign]
    outcomes = await asyncio.gather(
        *(publish_one(broker, c, b"data: x\n") for c in [bad_channel, good_channel] * 3),
        publish_one(broker, [good_channel, bad_channel], b"data: both\n"),
        return_exceptions=True,
    )
    for outcome, channel in zip(outcomes[:6], [bad_channel, good_channel] * 3, strict=True):
        if channel == bad_channel:
            assert isinstance(outcome, BrokerUnavailableError)
        else:
            assert isinstance(outcome, Event), outcome
    assert isinstance(outcomes[6], BrokerUnavailableError)  # it touches the failing shard


async def test_a_keyed_batch_that_failed_on_one_shard_is_completed_by_its_retry(
    worker: Worker,
) -> None:
    """Each home shard keeps the record of its part: a retry with the key answers the parts
    already written from their records and writes the missing one, each part once."""
    broker = worker.broker
    by_shard = {broker.shard_of(c): c for c in CHANNELS}
    (bad, bad_channel), (_, good_channel) = list(by_shard.items())[:2]
    drafts = [
        Draft((good_channel,), b"data: good\n"),
        Draft((bad_channel,), b"data: bad\n"),
        Draft((good_channel, bad_channel), b"data: both\n"),
    ]
    key = PublishKey(f"batch-{uuid.uuid4().hex}", fingerprint(drafts))
    real = broker._write_shard

    async def failing(shard: Any, part: Any, runs: Any) -> tuple[list[bytes], bytes]:
        # The bad shard takes references, then fails its home part.
        if shard.index == bad and any(p.reference == "" for p in part):
            raise redis.exceptions.ConnectionError("as if its master were gone")
        return await real(shard, part, runs)

    broker._write_shard = failing  # type: ignore[method-assign]
    with pytest.raises(BrokerUnavailableError):
        await broker.publish_once(drafts, key)
    broker._write_shard = real  # type: ignore[method-assign]
    await wait_until(lambda: len(worker.received) == 2, what="the good shard's part")
    landed = ids(worker.received)
    retried = await broker.publish_once(drafts, key)
    again = await broker.publish_once(drafts, key)
    assert not retried.replayed and again.replayed and again.ids == retried.ids
    marker = await publish_one(broker, good_channel, b"data: marker\n")
    await wait_until(lambda: marker.id in ids(worker.received), what="the marker")
    published = [e for e in worker.received if e.id != marker.id]
    # Every event once, under the ids the retry answered with; the good shard's part is
    # what the failed try wrote there.
    assert sorted(ids(published)) == sorted(retried.ids)
    assert landed == [retried.ids[0], retried.ids[2]]
    assert [e.channels for e in retried.events] == [d.channels for d in drafts]


async def test_a_keyed_request_whose_reference_failed_writes_none_of_its_part(
    worker: Worker,
) -> None:
    """An event whose references did not land holds back its whole keyed request, so each
    shard's record answers for the request's whole part there."""
    broker = worker.broker
    by_shard = {broker.shard_of(c): c for c in CHANNELS}
    (bad, bad_channel), (_, good_channel) = list(by_shard.items())[:2]
    drafts = [
        Draft((good_channel,), b"data: good\n"),
        Draft((good_channel, bad_channel), b"data: both\n"),
    ]
    key = PublishKey(f"batch-{uuid.uuid4().hex}", fingerprint(drafts))
    real = broker._write_shard

    async def failing(shard: Any, part: Any, runs: Any) -> tuple[list[bytes], bytes]:
        if shard.index == bad:
            raise redis.exceptions.ConnectionError("as if its master were gone")
        return await real(shard, part, runs)

    broker._write_shard = failing  # type: ignore[method-assign]
    with pytest.raises(BrokerUnavailableError):
        await broker.publish_once(drafts, key)
    broker._write_shard = real  # type: ignore[method-assign]
    retried = await broker.publish_once(drafts, key)
    assert not retried.replayed
    marker = await publish_one(broker, good_channel, b"data: marker\n")
    await wait_until(lambda: marker.id in ids(worker.received), what="the marker")
    assert ids(e for e in worker.received if e.id != marker.id) == retried.ids
