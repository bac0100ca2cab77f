"""One stream's bounded queue: batching, overflow policies, the shared byte budget,
the cursor, heartbeats, waking and closing."""

from __future__ import annotations

import asyncio

import pytest

from app.sse.connection import (
    ALREADY_CLOSED,
    ALREADY_HAD,
    DROPPED_OLDEST,
    OVERFLOWED,
    QUEUED,
    CloseReason,
    Connection,
    QueueBudget,
)
from app.wire.encoding import PING_FRAME, encode_body, encode_frame
from app.wire.event import Event
from app.wire.event_id import format_event_id

WAKE_TIMEOUT = 1.0


def make_event(seq: int, data: str = "x", channel: str = "c") -> Event:
    key = (1_700_000_000_000, seq)
    event_id = format_event_id(key)
    return Event(key, event_id, (channel,), encode_frame(event_id, encode_body(data)))


def make_connection(
    *, maxsize: int = 10, drop_oldest: bool = False, budget: QueueBudget | None = None
) -> Connection:
    return Connection(
        ("c",),
        maxsize=maxsize,
        drop_oldest=drop_oldest,
        budget=budget if budget is not None else QueueBudget(1 << 30),
        now=0.0,
    )


def gap(dropped: int) -> bytes:
    return b'event: gap\ndata: {"dropped":%d}\n\n' % dropped


# --- queueing and batching ---------------------------------------------------


def test_take_returns_queued_events_in_order_as_one_payload() -> None:
    connection = make_connection()
    events = [make_event(i, f"e{i}") for i in range(3)]
    assert [connection.push(event) for event in events] == [QUEUED] * 3
    assert connection.queued == 3
    assert connection.take() == (b"".join(event.frame for event in events), 3)
    assert connection.queued == 0
    assert connection.take() is None


def test_take_of_a_single_event_returns_the_shared_frame_itself() -> None:
    connection = make_connection()
    event = make_event(1)
    connection.push(event)
    payload, count = connection.take() or (b"", -1)
    assert payload is event.frame
    assert count == 1


def test_take_on_an_empty_queue_returns_none() -> None:
    assert make_connection().take() is None


# --- overflow ----------------------------------------------------------------


def test_overflow_disconnect_closes_with_reason_overflow() -> None:
    connection = make_connection(maxsize=2)
    assert connection.push(make_event(1)) == QUEUED
    assert connection.push(make_event(2)) == QUEUED
    assert connection.push(make_event(3)) == OVERFLOWED
    assert connection.closed
    assert connection.close_reason is CloseReason.OVERFLOW
    assert connection.push(make_event(4)) == ALREADY_CLOSED
    assert connection.queued == 2


def test_overflow_drop_oldest_drops_oldest_and_sends_gap_frame_first() -> None:
    connection = make_connection(maxsize=2, drop_oldest=True)
    events = [make_event(i, f"e{i}") for i in range(5)]
    outcomes = [connection.push(event) for event in events]
    assert outcomes == [QUEUED, QUEUED, DROPPED_OLDEST, DROPPED_OLDEST, DROPPED_OLDEST]
    assert not connection.closed
    assert connection.dropped == 3
    assert connection.queued == 2
    payload, count = connection.take() or (b"", -1)
    assert payload == gap(3) + events[3].frame + events[4].frame
    assert count == 2  # the gap frame is not an event


def test_gap_counter_restarts_after_the_gap_frame_is_sent() -> None:
    connection = make_connection(maxsize=1, drop_oldest=True)
    for seq in range(3):
        connection.push(make_event(seq))
    assert (connection.take() or (b"",))[0].startswith(gap(2))
    last = make_event(10)
    connection.push(make_event(9))
    connection.push(last)
    assert connection.take() == (gap(1) + last.frame, 1)
    assert connection.push(make_event(11)) == QUEUED
    assert connection.take() == (make_event(11).frame, 1)


# --- the shared byte budget ---------------------------------------------------


def test_budget_counts_an_event_held_by_many_queues_once() -> None:
    budget = QueueBudget(1 << 20)
    connections = [make_connection(budget=budget) for _ in range(5)]
    event = make_event(1, "x" * 100)
    for connection in connections:
        connection.push(event)
    assert budget.bytes == len(event.frame)
    assert event.refs == 5

    for connection in connections[:3]:
        connection.take()
    assert budget.bytes == len(event.frame)
    assert event.refs == 2

    connections[3].take()
    connections[4].discard_queue()
    assert budget.bytes == 0
    assert event.refs == 0


def test_budget_counts_distinct_events_separately() -> None:
    budget = QueueBudget(1 << 20)
    connection = make_connection(budget=budget)
    first, second = make_event(1, "a"), make_event(2, "bb")
    connection.push(first)
    connection.push(second)
    assert budget.bytes == len(first.frame) + len(second.frame)
    connection.discard_queue()
    assert budget.bytes == 0
    assert connection.take() is None


def test_budget_released_by_drop_oldest() -> None:
    budget = QueueBudget(1 << 20)
    connection = make_connection(maxsize=1, drop_oldest=True, budget=budget)
    small, large = make_event(1, "a"), make_event(2, "b" * 50)
    connection.push(small)
    connection.push(large)
    assert budget.bytes == len(large.frame)
    assert small.refs == 0


def test_exceeded_budget_makes_a_behind_connection_overflow() -> None:
    held = make_event(1, "x" * 100)
    budget = QueueBudget(len(held.frame) - 1)
    behind = make_connection(budget=budget)
    caught_up = make_connection(budget=budget)
    behind.push(held)
    assert budget.exceeded

    fresh = make_event(2)
    # An empty queue is not behind: it still takes the event.
    assert caught_up.push(fresh) == QUEUED
    # The one already holding events is cut off long before its own cap of 10.
    assert behind.push(fresh) == OVERFLOWED
    assert behind.close_reason is CloseReason.OVERFLOW


def test_exceeded_budget_drops_oldest_of_a_behind_connection() -> None:
    held = make_event(1, "x" * 100)
    budget = QueueBudget(len(held.frame) - 1)
    behind = make_connection(drop_oldest=True, budget=budget)
    behind.push(held)
    fresh = make_event(2)
    assert behind.push(fresh) == DROPPED_OLDEST
    assert budget.bytes == len(fresh.frame)
    assert behind.take() == (gap(1) + fresh.frame, 1)


def test_budget_within_limit_is_not_exceeded() -> None:
    event = make_event(1)
    budget = QueueBudget(len(event.frame))
    connection = make_connection(budget=budget)
    connection.push(event)
    assert not budget.exceeded


# --- the cursor: at most once per stream -----------------------------------------


def test_go_live_drops_what_the_replay_covered_and_releases_its_bytes() -> None:
    budget = QueueBudget(1 << 20)
    connection = make_connection(budget=budget)
    events = [make_event(i) for i in range(1, 5)]
    for event in events:
        connection.push(event)  # queued while catching up: cursor None
    connection.go_live(events[1].key)
    assert connection.cursor == events[3].key
    assert connection.take() == (events[2].frame + events[3].frame, 2)
    assert budget.bytes == 0


def test_go_live_past_everything_queued_leaves_nothing_and_keeps_the_head() -> None:
    budget = QueueBudget(1 << 20)
    connection = make_connection(budget=budget)
    for event in [make_event(i) for i in range(1, 3)]:
        connection.push(event)
    connection.go_live((1_700_000_000_000, 7))
    assert connection.take() is None
    assert budget.bytes == 0
    assert connection.cursor == (1_700_000_000_000, 7)


def test_go_live_keeps_one_copy_of_an_event_queued_twice() -> None:
    connection = make_connection()
    first, second = make_event(1), make_event(2)
    for event in (first, first, second, second):
        connection.push(event)
    connection.go_live((1_700_000_000_000, 0))
    assert connection.take() == (first.frame + second.frame, 2)


def test_live_push_at_or_below_the_cursor_is_skipped() -> None:
    # Regression: a live stream received ...125, ...136, ...125 after a resume; every
    # push above the cursor moves it, so a second copy of any earlier event is refused.
    connection = make_connection()
    connection.go_live((1_700_000_000_000, 2))
    replayed, newer, newest = make_event(2), make_event(3), make_event(4)
    assert connection.push(replayed) == ALREADY_HAD
    assert connection.push(newest) == QUEUED
    assert connection.push(newer) == ALREADY_HAD
    assert connection.push(newest) == ALREADY_HAD
    assert connection.take() == (newest.frame, 1)


# --- heartbeats ----------------------------------------------------------------


def test_ping_on_an_idle_connection_yields_ping_frame_with_count_zero() -> None:
    connection = make_connection()
    connection.request_ping(0.0)
    assert connection.ping_due
    assert connection.take() == (PING_FRAME, 0)
    assert connection.take() is None


def test_ping_is_not_requested_when_events_are_queued() -> None:
    connection = make_connection()
    event = make_event(1)
    connection.push(event)
    connection.request_ping(0.0)
    assert not connection.ping_due
    assert connection.take() == (event.frame, 1)
    assert connection.take() is None


def test_events_queued_after_a_ping_request_replace_the_ping() -> None:
    connection = make_connection()
    connection.request_ping(0.0)
    event = make_event(1)
    connection.push(event)
    assert connection.take() == (event.frame, 1)
    assert connection.take() is None


# --- waiting and closing --------------------------------------------------------


async def start_waiting(connection: Connection) -> asyncio.Task[None]:
    waiter = asyncio.create_task(connection.wait())
    await asyncio.sleep(0)
    assert not waiter.done()
    return waiter


async def test_wait_returns_on_push() -> None:
    connection = make_connection()
    waiter = await start_waiting(connection)
    connection.push(make_event(1))
    await asyncio.wait_for(waiter, WAKE_TIMEOUT)


async def test_wait_returns_on_close() -> None:
    connection = make_connection()
    waiter = await start_waiting(connection)
    connection.close(CloseReason.SHUTDOWN)
    await asyncio.wait_for(waiter, WAKE_TIMEOUT)


async def test_wait_returns_on_ping() -> None:
    connection = make_connection()
    waiter = await start_waiting(connection)
    connection.request_ping(0.0)
    await asyncio.wait_for(waiter, WAKE_TIMEOUT)


@pytest.mark.parametrize("ready", ["event", "ping", "closed"])
async def test_wait_returns_at_once_when_something_is_ready(ready: str) -> None:
    connection = make_connection()
    if ready == "event":
        connection.push(make_event(1))
    elif ready == "ping":
        connection.request_ping(0.0)
    else:
        connection.close(CloseReason.IDLE)
    await asyncio.wait_for(connection.wait(), WAKE_TIMEOUT)


async def test_close_keeps_the_first_reason() -> None:
    connection = make_connection()
    connection.close(CloseReason.IDLE)
    connection.close(CloseReason.SHUTDOWN)
    assert connection.close_reason is CloseReason.IDLE


async def test_close_cancels_a_writer_stuck_in_send() -> None:
    connection = make_connection()
    never_sent: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def writer() -> None:
        connection.sending = True
        try:
            await never_sent  # a socket write to a client that stopped reading
        finally:
            connection.sending = False

    task = asyncio.create_task(writer())
    connection.writer = task
    await asyncio.sleep(0)
    connection.close(CloseReason.OVERFLOW)
    await asyncio.wait([task], timeout=WAKE_TIMEOUT)
    assert task.cancelled()


async def test_close_does_not_cancel_a_waiting_writer() -> None:
    connection = make_connection()

    async def writer() -> object:
        await connection.wait()
        return "woke"

    task = asyncio.create_task(writer())
    connection.writer = task
    await asyncio.sleep(0)
    assert not connection.sending
    connection.close(CloseReason.IDLE)
    assert await asyncio.wait_for(task, WAKE_TIMEOUT) == "woke"
    assert not task.cancelled()
