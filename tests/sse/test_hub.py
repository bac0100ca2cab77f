"""The hub with a MemoryBroker: shared encoding, registries that cannot leak, admission,
housekeeping with a fake clock, counters and replay floors."""

from __future__ import annotations

import asyncio
import functools
import socket
from collections.abc import MutableMapping, Sequence
from typing import Any

import pytest

from app.broker.base import Draft, IdempotencyConflictError, PageLimit, Replay
from app.broker.memory import MemoryBroker
from app.sse.connection import CloseReason
from app.sse.hub import Hub, StreamRefusedError
from app.wire.channels import InvalidChannelError
from app.wire.encoding import PING_FRAME, encode_body, encode_frame
from app.wire.event_id import parse_event_id
from tests.conftest import MakeHub
from tests.sse.test_direct_write import FakeSend, Flow, chunk_of, read_exactly
from tests.support.clock import FakeClock
from tests.support.waiting import wait_until

CHANNEL_TTL = 30.0
PING_SECONDS = 3.0


class RacingBroker(MemoryBroker):
    """Publishes one event between the hub's registration and the broker's replay,
    the window in which a real backplane may deliver an event both ways."""

    async def replay(
        self,
        channels: Sequence[str],
        last_event_id: str | None,
        *,
        every_channel: bool = False,
        page: PageLimit | None = None,
    ) -> Replay:
        (self.raced,) = await self.publish([Draft((channels[0],), b"data: raced\n")])
        return await super().replay(channels, last_event_id, every_channel=every_channel, page=page)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def make_hub(make_hub: MakeHub, clock: FakeClock) -> MakeHub:
    """The shared hubs, on the fake clock, keeping a channel's log CHANNEL_TTL."""
    return functools.partial(make_hub, clock=clock, sse_channel_ttl_seconds=CHANNEL_TTL)


def memory_broker(hub: Hub) -> MemoryBroker:
    assert isinstance(hub.broker, MemoryBroker)
    return hub.broker


def assert_registries_empty(hub: Hub, clock: FakeClock, channels: Sequence[str]) -> None:
    assert hub.connection_count == 0
    assert hub.channel_count == 0
    assert all(hub.subscriber_count(name) == 0 for name in channels)
    assert hub.budget.bytes == 0
    assert hub.stats()["queued"] == 0
    # Broker interest released: every channel log is now sweepable.
    history = memory_broker(hub).history
    assert hub.broker.sweep(clock.now + CHANNEL_TTL + 1) == len(set(channels))
    assert history.channel_count == 0


# --- one encoding for everyone ------------------------------------------------


async def test_one_encoding_is_shared_by_every_subscriber(make_hub: MakeHub) -> None:
    hub = await make_hub()
    before = await hub.publish("news", "before")
    async with (
        hub.subscribe(["news"]) as (first, _),
        hub.subscribe(["news"]) as (second, _),
    ):
        await hub.publish("news", {"headline": "x"})
        sent_first = first.take()
        sent_second = second.take()
    assert sent_first is not None and sent_second is not None
    assert sent_first[0] is sent_second[0]
    # ... and it is the very frame history keeps for replay.
    (retained,) = (await hub.broker.replay(["news"], before)).events
    assert retained.frame is sent_first[0]


async def test_publish_returns_the_event_id(make_hub: MakeHub) -> None:
    hub = await make_hub()
    async with hub.subscribe(["a"]) as (connection, _):
        event_id = await hub.publish("a", "hello", event="greeting")
        payload, _count = connection.take() or (b"", 0)
    assert payload == b"id: " + event_id.encode() + b"\nevent: greeting\ndata: hello\n\n"


# --- registries cannot leak ----------------------------------------------------


async def test_subscribe_unregisters_everything_on_normal_exit(
    make_hub: MakeHub, clock: FakeClock
) -> None:
    hub = await make_hub()
    async with hub.subscribe(["a", "b"]) as (connection, replay):
        assert replay == Replay(head=replay.head)  # a new stream: nothing to replay
        assert hub.connection_count == 1
        assert hub.subscriber_count("a") == hub.subscriber_count("b") == 1
        await hub.publish("a", 1)
        await hub.publish("b", 2)
        assert hub.budget.bytes > 0
    assert connection.close_reason is CloseReason.CLIENT_GONE
    assert_registries_empty(hub, clock, ["a", "b"])


async def test_subscribe_unregisters_everything_on_exception(
    make_hub: MakeHub, clock: FakeClock
) -> None:
    hub = await make_hub()
    with pytest.raises(RuntimeError, match="writer failed"):
        async with hub.subscribe(["a", "b"]):
            await hub.publish("a", 1)
            raise RuntimeError("writer failed")
    assert_registries_empty(hub, clock, ["a", "b"])


async def test_subscribe_unregisters_everything_on_cancellation(
    make_hub: MakeHub, clock: FakeClock
) -> None:
    hub = await make_hub()
    entered = asyncio.Event()

    async def stream() -> None:
        async with hub.subscribe(["a"]) as (connection, _):
            entered.set()
            while True:
                await connection.wait()
                connection.take()

    task = asyncio.create_task(stream())
    await entered.wait()
    await hub.publish("a", 1)
    task.cancel()
    await asyncio.wait([task], timeout=1)
    assert task.cancelled()
    assert_registries_empty(hub, clock, ["a"])


async def test_many_overlapping_subscriptions_leave_nothing_behind(
    make_hub: MakeHub, clock: FakeClock
) -> None:
    hub = await make_hub(sse_queue_size=3)
    channels = ["a", "b", "c"]

    async def stream(index: int) -> None:
        names = channels[: index % 3 + 1]
        async with hub.subscribe(names):
            await asyncio.sleep(0)
            if index % 2:
                raise ValueError(index)

    for channel in channels:
        await hub.publish(channel, "before")
    results = await asyncio.gather(*(stream(i) for i in range(30)), return_exceptions=True)
    for channel in channels * 5:  # overflow some queues on the way
        await hub.publish(channel, "during")
    assert sum(isinstance(result, ValueError) for result in results) == 15
    assert_registries_empty(hub, clock, channels)
    assert hub.closed_by_reason[CloseReason.CLIENT_GONE] == 30


async def test_duplicate_channel_names_are_deduplicated(
    make_hub: MakeHub, clock: FakeClock
) -> None:
    hub = await make_hub()
    async with hub.subscribe(["a", "b", "a", "a"]) as (connection, _):
        assert connection.channels == ("a", "b")
        assert hub.subscriber_count("a") == 1
        await hub.publish("a", 1)
        assert connection.queued == 1
    assert_registries_empty(hub, clock, ["a", "b"])


# --- admission -------------------------------------------------------------------


@pytest.mark.parametrize("name", ["", "has space", "x" * 129, "emoji-🎉", "a\nb", "semi;colon"])
async def test_invalid_channel_name_is_refused(make_hub: MakeHub, name: str) -> None:
    hub = await make_hub()
    with pytest.raises(InvalidChannelError):
        async with hub.subscribe(["ok", name]):
            pytest.fail("an invalid channel must not open a stream")
    with pytest.raises(InvalidChannelError):
        await hub.publish(name, 1)
    assert hub.connection_count == 0
    assert hub.counters.opened == 0
    assert hub.counters.published == 0


async def test_valid_channel_name_characters_are_accepted(make_hub: MakeHub) -> None:
    hub = await make_hub()
    name = "Org.team_1:room/42-" + "x" * 109
    async with hub.subscribe([name]) as (connection, _):
        assert connection.channels == (name,)


async def test_connection_cap_refuses_new_streams(make_hub: MakeHub) -> None:
    hub = await make_hub(sse_max_connections=2)
    async with hub.subscribe(["a"]), hub.subscribe(["b"]):
        with pytest.raises(StreamRefusedError, match="limit 2"):
            async with hub.subscribe(["c"]):
                pytest.fail("the cap must refuse a third stream")
        assert hub.connection_count == 2
        assert hub.subscriber_count("c") == 0
    # Once a slot is free, streams are admitted again.
    async with hub.subscribe(["c"]):
        assert hub.connection_count == 1


async def test_admission_check_refusal_is_raised(make_hub: MakeHub) -> None:
    hub = await make_hub()
    refusal = StreamRefusedError("memory pressure", retry_after=11)
    verdict: list[StreamRefusedError | None] = [refusal]
    hub.admission_checks.append(lambda: verdict[0])
    with pytest.raises(StreamRefusedError) as refused:
        async with hub.subscribe(["a"]):
            pytest.fail("the admission check must refuse the stream")
    assert refused.value is refusal
    assert refused.value.retry_after == 11
    assert hub.connection_count == 0
    verdict[0] = None
    async with hub.subscribe(["a"]):
        assert hub.connection_count == 1


async def test_a_stream_opened_while_the_server_drains_is_closed_at_once(
    make_hub: MakeHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    # It was opening when shutdown swept the hub; left open it would hold the process.
    draining = False
    monkeypatch.setattr("app.sse.hub.shutdown_requested", lambda: draining)
    hub = await make_hub()
    async with hub.subscribe(["a"]) as (before, _):
        draining = True
        await wait_until(lambda: before.close_reason is not None, what="the shutdown sweep")
        async with hub.subscribe(["a"]) as (late, _):
            assert late.close_reason is CloseReason.SHUTDOWN
    assert before.close_reason is CloseReason.SHUTDOWN


# --- housekeeping ------------------------------------------------------------------


async def test_reap_idle_closes_only_idle_connections(make_hub: MakeHub, clock: FakeClock) -> None:
    hub = await make_hub(sse_idle_timeout_seconds=10, sse_ping_seconds=PING_SECONDS)
    async with hub.subscribe(["a"]) as (idle, _), hub.subscribe(["a"]) as (active, _):
        clock.now += 5
        await hub.publish("a", 1)
        # What the writer does after a delivery:
        for connection in (idle, active):
            assert connection.take() is not None
        active.last_delivery = clock()
        # A ping reaches the kernel even for a vanished client: no activity.
        clock.now += PING_SECONDS
        hub.heartbeat()
        assert idle.take() == (PING_FRAME, 0)
        assert active.take() == (PING_FRAME, 0)

        clock.now += 5 - PING_SECONDS  # exactly at the deadline: not yet idle
        assert hub.reap_idle() == 0
        clock.now += 1
        assert hub.reap_idle() == 1
        assert idle.close_reason is CloseReason.IDLE
        assert not active.closed
        assert hub.counters.reaped == 1

        clock.now += 5
        assert hub.reap_idle() == 1  # the idle one is not counted twice
        assert active.close_reason is CloseReason.IDLE
        assert hub.counters.reaped == 2
    assert hub.closed_by_reason == {CloseReason.IDLE: 2}


async def test_cleanup_reaps_and_sweeps_idle_channels(make_hub: MakeHub, clock: FakeClock) -> None:
    hub = await make_hub(sse_idle_timeout_seconds=10)
    await hub.publish("orphan", 1)
    async with hub.subscribe(["watched"]) as (connection, _):
        clock.now += CHANNEL_TTL + 1
        hub.cleanup()
        assert connection.close_reason is CloseReason.IDLE
        assert memory_broker(hub).history.channel_count == 1  # "watched" is kept


async def test_heartbeat_sets_ping_only_on_idle_connections(
    make_hub: MakeHub, clock: FakeClock
) -> None:
    hub = await make_hub(sse_ping_seconds=PING_SECONDS)
    async with hub.subscribe(["quiet"]) as (quiet, _), hub.subscribe(["busy"]) as (busy, _):
        clock.now += PING_SECONDS
        await hub.publish("busy", 1)
        hub.heartbeat()
        assert quiet.ping_due
        await asyncio.wait_for(quiet.wait(), 1)
        assert quiet.take() == (PING_FRAME, 0)
        assert not busy.ping_due
        item = busy.take()
        assert item is not None and item[1] == 1
        assert busy.take() is None


async def test_close_all_closes_every_open_connection_once(make_hub: MakeHub) -> None:
    hub = await make_hub()
    async with (
        hub.subscribe(["a"]) as (first, _),
        hub.subscribe(["b"]) as (second, _),
        hub.subscribe(["a", "b"]) as (third, _),
    ):
        third.close(CloseReason.IDLE)
        assert hub.close_all(CloseReason.SHUTDOWN) == 2
        assert first.close_reason is second.close_reason is CloseReason.SHUTDOWN
        assert third.close_reason is CloseReason.IDLE
        assert hub.close_all(CloseReason.SHUTDOWN) == 0
    assert hub.closed_by_reason == {CloseReason.SHUTDOWN: 2, CloseReason.IDLE: 1}


# --- counters and stats --------------------------------------------------------------


async def test_overflow_disconnects_are_counted_once_per_connection(make_hub: MakeHub) -> None:
    hub = await make_hub(sse_queue_size=2, sse_overflow="disconnect")
    async with hub.subscribe(["a"]) as (slow, _), hub.subscribe(["a"]) as (slower, _):
        for i in range(6):
            await hub.publish("a", i)
        assert slow.close_reason is slower.close_reason is CloseReason.OVERFLOW
        assert hub.counters.overflow_disconnects == 2
        assert hub.counters.published == 6
        assert hub.counters.dropped == 0


async def test_drop_oldest_counts_each_dropped_event(make_hub: MakeHub) -> None:
    hub = await make_hub(sse_queue_size=2, sse_overflow="drop_oldest")
    async with hub.subscribe(["a"]) as (slow, _), hub.subscribe(["a"]) as (fast, _):
        for i in range(5):
            await hub.publish("a", i)
            if i < 4:
                fast.take()
        assert not slow.closed
        assert slow.dropped == 3
        assert fast.dropped == 0
        assert hub.counters.dropped == 3
        assert hub.counters.overflow_disconnects == 0


async def test_publish_without_subscribers_is_counted_and_retained(make_hub: MakeHub) -> None:
    hub = await make_hub()
    event_id = await hub.publish("nobody", 1)
    assert hub.counters.published == 1
    assert memory_broker(hub).history.stats()["events"] == 1
    assert parse_event_id(event_id) is not None


async def test_publish_with_a_key_publishes_once_and_says_when_it_replayed(
    make_hub: MakeHub,
) -> None:
    hub = await make_hub()
    first = await hub.publish("keyed", {"n": 1}, idempotency_key="k1")
    again = await hub.publish("keyed", {"n": 1}, idempotency_key="k1")
    assert not first.replayed and again.replayed and again.ids == first.ids
    assert hub.counters.published == 1 and hub.counters.replayed_publishes == 1
    with pytest.raises(IdempotencyConflictError):
        await hub.publish("keyed", {"n": 2}, idempotency_key="k1")
    assert memory_broker(hub).history.stats()["events"] == 1
    off = await make_hub(publish_idempotency_seconds=0)
    answers = [await off.publish("keyed", 1, idempotency_key="k1") for _ in range(2)]
    assert not any(a.replayed for a in answers) and answers[0].ids != answers[1].ids


async def test_stats_shape(make_hub: MakeHub) -> None:
    hub = await make_hub(sse_queue_max_mb=1)
    async with hub.subscribe(["a", "b"]) as (connection, _):
        await hub.publish("a", 1)
        await hub.publish("c", 2)
        stats = hub.stats()
        queued_bytes = hub.budget.bytes
        connection.delivered = 4  # as the writer would
        assert hub.stats()["delivered"] == 4
    assert set(stats) == {
        "connections",
        "channels",
        "patterns",
        "queued",
        "queued_bytes",
        "queued_bytes_limit",
        "published",
        "replayed_publishes",
        "delivered",
        "dropped",
        "overflow_disconnects",
        "reaped",
        "opened",
        "closed",
        "replays",
        "broker",
        "client_limits",
    }
    assert stats["replays"] == hub.replays.stats()
    assert stats["connections"] == 1
    assert stats["channels"] == 2
    assert stats["queued"] == 1
    assert stats["queued_bytes"] == queued_bytes > 0
    assert stats["queued_bytes_limit"] == 1024 * 1024
    assert stats["published"] == 2
    assert stats["opened"] == 1
    assert stats["closed"] == {}
    assert stats["broker"] == {
        "url": "memory://",
        "state": "ok",
        "history": memory_broker(hub).history.stats(),
        "idempotency": memory_broker(hub).keys.stats(),
    }
    assert stats["client_limits"] == hub.limits.stats()
    after = hub.stats()
    assert after["delivered"] == 4  # kept after the connection is gone
    assert after["closed"] == {"client_gone": 1}
    assert after["connections"] == after["queued"] == after["queued_bytes"] == 0


# --- catch-up: registration first, then the replay, then the cursor --------------------


async def test_an_event_both_queued_live_and_replayed_is_sent_once(make_hub: MakeHub) -> None:
    hub = await make_hub(broker_class=RacingBroker)
    broker = memory_broker(hub)
    assert isinstance(broker, RacingBroker)
    resume_from = await hub.publish("a", "seen")
    missed = await hub.publish("a", "missed")
    async with hub.subscribe(["a"], last_event_id=resume_from) as (connection, replay):
        assert not replay.reset
        # The raced event arrived live *and* in the replay.
        assert [event.id for event in replay.events] == [missed, broker.raced.id]
        assert replay.head == broker.raced.id
        assert connection.cursor == broker.raced.key
        assert connection.take() is None  # the live copy was dropped by go_live
        live = await hub.publish("a", "live")
        payload, count = connection.take() or (b"", 0)
        assert count == 1
        assert payload.startswith(b"id: " + live.encode() + b"\n")


async def test_reset_replay_goes_live_at_the_head(make_hub: MakeHub) -> None:
    hub = await make_hub(broker_class=RacingBroker)
    broker = memory_broker(hub)
    assert isinstance(broker, RacingBroker)
    await hub.publish("a", "old")
    async with hub.subscribe(["a"], last_event_id="garbage") as (connection, replay):
        assert replay.reset and replay.reason == "unknown_id"
        assert replay.head == broker.raced.id
        assert connection.cursor == broker.raced.key
        assert connection.take() is None  # covered by the reset, not resent


async def test_a_new_stream_starts_at_the_head_and_gets_everything_after(
    make_hub: MakeHub,
) -> None:
    hub = await make_hub(broker_class=RacingBroker)
    await hub.publish("a", "before")
    async with hub.subscribe(["a"]) as (connection, replay):
        raced = memory_broker(hub)
        assert isinstance(raced, RacingBroker)
        assert replay == Replay(head=raced.raced.id)  # published before the head: not sent
        after = await hub.publish("a", "after")
        payload, count = connection.take() or (b"", 0)
    assert count == 1 and payload.startswith(b"id: " + after.encode() + b"\n")


async def test_replay_from_the_head_is_empty_and_goes_live_there(make_hub: MakeHub) -> None:
    hub = await make_hub()
    newest = await hub.publish("a", 1)
    async with hub.subscribe(["a"], last_event_id=newest) as (connection, replay):
        assert replay == Replay(head=newest)
        assert connection.cursor == parse_event_id(newest)


async def test_a_live_stream_on_two_channels_gets_each_event_once_in_id_order(
    make_hub: MakeHub,
) -> None:
    hub = await make_hub()
    async with hub.subscribe(["a", "b"]) as (connection, _):
        ids = [await hub.publish(name, i) for i, name in enumerate("abab")]
        payload, count = connection.take() or (b"", 0)
    assert count == 4
    sent = [line[4:].decode() for line in payload.split(b"\n") if line.startswith(b"id: ")]
    assert sent == ids


async def test_a_broker_resync_closes_every_stream_to_resume_from_history(
    make_hub: MakeHub,
) -> None:
    hub = await make_hub()
    async with hub.subscribe(["a"]) as (first, _), hub.subscribe(["b"]) as (second, _):
        hub._resync("test: the live feed skipped events")
        assert first.close_reason is second.close_reason is CloseReason.RESYNC


async def test_streams_beyond_the_per_client_limit_are_refused_with_429(
    make_hub: MakeHub,
) -> None:
    hub = await make_hub(sse_max_connections_per_ip=1)
    async with hub.subscribe(["a"], client="10.0.0.1"):
        with pytest.raises(StreamRefusedError) as refused:
            async with hub.subscribe(["b"], client="10.0.0.1"):
                pass
        assert refused.value.status_code == 429
        assert refused.value.retry_after > 0
        assert hub.connection_count == 1  # the refused stream was never registered
        async with hub.subscribe(["b"], client="10.0.0.2"):
            pass
    # Released on exit, also when the body raised.
    with pytest.raises(RuntimeError):
        async with hub.subscribe(["a"], client="10.0.0.1"):
            raise RuntimeError("writer failed")
    async with hub.subscribe(["a"], client="10.0.0.1"):
        pass
    assert hub.stats()["client_limits"]["clients_with_streams"] == 0  # type: ignore[index]


async def test_the_server_wide_cap_still_answers_503(make_hub: MakeHub) -> None:
    hub = await make_hub(sse_max_connections=1, sse_max_connections_per_ip=5)
    async with hub.subscribe(["a"], client="10.0.0.1"):
        with pytest.raises(StreamRefusedError) as refused:
            async with hub.subscribe(["a"], client="10.0.0.2"):
                pass
    assert refused.value.status_code == 503


async def next_iteration() -> None:
    """Let the loop run what is ready now: a pass scheduled "at once" runs in it, a held
    one does not."""
    await asyncio.sleep(0)


@pytest.mark.parametrize(("pass_seconds", "held"), [(0.0, False), (0.05, True)])
async def test_events_soon_after_an_expensive_write_pass_share_the_next_write(
    make_hub: MakeHub, clock: FakeClock, pass_seconds: float, held: bool
) -> None:
    """Coalescing holds events back only when the hub is behind: events that come sooner
    after a pass than the pass took (here: one slow write) wait twice its duration after it,
    and share one write; after a cheap pass nothing waits."""
    hub = await make_hub(sse_write_coalesce_ms=1000)
    writes: list[bytes] = []

    async def send(message: MutableMapping[str, Any]) -> None:
        clock.advance(pass_seconds)  # a pass over many streams takes time
        writes.append(message["body"])

    async with hub.subscribe(["burst"]) as (connection, _):
        connection.send = send  # as the stream's writer does once it is pumping
        writer = asyncio.create_task(connection.wait())
        await next_iteration()
        await hub.publish("burst", "first")
        await next_iteration()
        assert len(writes) == 1  # an idle hub writes at once
        first_pass_end = clock()
        assert hub._last_flush_cost == pytest.approx(pass_seconds)  # on the hub's clock
        await hub.publish("burst", "second")
        await hub.publish("burst", "third")
        await next_iteration()
        if held:  # twice the pass, far below the 1 s cap
            assert hub._next_pass_at == pytest.approx(first_pass_end + 2 * pass_seconds)
            assert len(writes) == 1
            await wait_until(lambda: len(writes) == 2, what="the held pass")
        else:
            assert hub._next_pass_at == first_pass_end
            assert len(writes) == 2
        assert writes[1].count(b"data: ") == 2  # one write for both
        assert not writer.done()  # all of it written without waking the writer
        connection.close(CloseReason.SHUTDOWN)
        await writer


@pytest.mark.parametrize(("idle_passes", "held"), [(1.25, False), (1.0, False), (0.75, True)])
async def test_a_hub_that_keeps_up_writes_at_once_however_long_its_passes(
    make_hub: MakeHub, clock: FakeClock, idle_passes: float, held: bool
) -> None:
    """An event arriving after the loop was idle at least as long as the last pass took is
    written at once, not held for a multiple of that pass (2,000 streams at 20 events/s);
    idle for less, the hub is behind and holds it."""
    pass_seconds = 0.25  # a binary fraction: "exactly as long as the pass" is exact
    hub = await make_hub(sse_write_coalesce_ms=1000)
    writes: list[bytes] = []

    async def send(message: MutableMapping[str, Any]) -> None:
        clock.advance(pass_seconds)  # a pass over many streams takes time
        writes.append(message["body"])

    async with hub.subscribe(["steady"]) as (connection, _):
        connection.send = send
        writer = asyncio.create_task(connection.wait())
        await next_iteration()
        await hub.publish("steady", "first")
        await next_iteration()
        assert len(writes) == 1
        pass_end = clock()
        clock.advance(idle_passes * pass_seconds)
        await hub.publish("steady", "second")
        await next_iteration()
        if held:
            assert hub._next_pass_at == pytest.approx(pass_end + 2 * pass_seconds)
            assert len(writes) == 1
        else:
            assert hub._next_pass_at == pass_end + idle_passes * pass_seconds
            assert len(writes) == 2
        connection.close(CloseReason.SHUTDOWN)
        await writer


async def test_a_hub_that_keeps_up_writes_inside_the_fan_out_and_queues_when_behind(
    make_hub: MakeHub, clock: FakeClock, loopback: tuple[asyncio.Transport, socket.socket]
) -> None:
    """Design note 12: keeping up, the publish itself writes the event to the stream's
    transport (no pass scheduled); behind, the event is queued for the next pass."""
    transport, client = loopback
    hub = await make_hub(sse_write_coalesce_ms=1000)
    async with hub.subscribe(["through"]) as (connection, _):
        connection.send, connection.transport, connection.flow = FakeSend(), transport, Flow()
        writer = asyncio.create_task(connection.wait())
        await next_iteration()
        event_id = await hub.publish("through", "now")
        # Before the loop has run again: written by the fan-out, nothing left for a pass.
        assert connection.delivered == 1 and connection.queued == 0 and not hub._to_flush
        frame = encode_frame(event_id, encode_body("now"))
        assert await read_exactly(client, len(chunk_of(frame))) == chunk_of(frame)
        hub._last_flush_cost = 60.0  # the last writes took a minute: the hub is behind
        await hub.publish("through", "later")
        assert connection.queued == 1 and hub._to_flush == [connection]
        assert connection.delivered == 1
        # What arrived during one event's writes is a burst: its pass runs at once, not
        # held (up to the 1 s cap, twice the last writes).
        assert hub._next_pass_at == clock()
        await next_iteration()
        assert connection.delivered == 2 and connection.queued == 0
        # After a pass, the same hurry is a hub falling behind: held (design note 9), here
        # up to the cap.
        hub._last_flush_cost = 60.0
        await hub.publish("through", "held")
        assert hub._next_pass_at == hub._last_flush_end + 1.0
        await next_iteration()
        assert connection.delivered == 2 and connection.queued == 1
        assert not writer.done()
        connection.close(CloseReason.SHUTDOWN)
        await writer


async def test_heartbeat_pings_a_stream_only_after_a_ping_interval_of_quiet(
    make_hub: MakeHub, clock: FakeClock
) -> None:
    hub = await make_hub(sse_ping_seconds=PING_SECONDS)
    tick = hub.ping_tick_seconds
    assert tick == min(1.0, PING_SECONDS / 4)
    async with hub.subscribe(["a"]) as (fed, _), hub.subscribe(["b"]) as (quiet, _):
        # Just short of the interval less one tick: nobody is pinged yet.
        clock.now += PING_SECONDS - tick - 0.01
        hub.heartbeat()
        assert not fed.ping_due and not quiet.ping_due
        await hub.publish("a", 1)  # an event resets the fed stream's quiet time
        fed.last_delivery = clock()
        assert fed.take() is not None
        clock.now += 0.02
        hub.heartbeat()  # the quiet one is due: silent for the interval by the next tick
        assert quiet.ping_due and not fed.ping_due
        assert quiet.take() == (PING_FRAME, 0)
        clock.now += tick
        hub.heartbeat()  # just pinged: not again on the next tick
        assert not quiet.ping_due and not fed.ping_due
        clock.now += PING_SECONDS - 2 * tick
        hub.heartbeat()  # a ping interval after the ping, and after the fed stream's event
        assert quiet.ping_due and fed.ping_due
