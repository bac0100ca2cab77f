"""Runs and their registry: bounds, followers, expiry."""

from __future__ import annotations

import asyncio
import json

import pytest

from app.responses.runs import Run, RunRegistry, RunsFullError, RunState
from tests.support.clock import FakeClock


async def collect(run: Run, start: int = 0) -> list[bytes]:
    return [chunk async for chunk in run.follow(start)]


async def test_frames_are_numbered_and_done_carries_the_full_text() -> None:
    run = Run("r1", None, max_bytes=1000, now=0)
    assert run.add_delta("Hello")
    assert run.add_delta(", world")
    run.finish(1.0)
    body = b"".join(await collect(run))
    assert body == (
        b'id: 0\nevent: delta\ndata: {"text":"Hello"}\n\n'
        b'id: 1\nevent: delta\ndata: {"text":", world"}\n\n'
        b'id: 2\nevent: done\ndata: {"text":"Hello, world","cached":false}\n\n'
    )
    assert run.state is RunState.DONE


async def test_follow_from_an_index_sends_exactly_the_rest() -> None:
    run = Run("r1", None, max_bytes=1000, now=0)
    for word in ("a", "b", "c"):
        run.add_delta(word)
    run.finish(1.0)
    rest = b"".join(await collect(run, start=2))
    assert rest.startswith(b"id: 2\n")
    assert b"id: 1\n" not in rest
    assert rest.count(b"\n\n") == 2


async def test_size_cap_refuses_a_chunk_that_would_exceed_it() -> None:
    run = Run("r1", None, max_bytes=10, now=0)
    assert run.add_delta("12345")
    assert run.add_delta("ü" * 2)  # 4 bytes: 9 in all
    assert not run.add_delta("xy")
    assert run.text == "12345üü"


async def test_live_followers_wake_on_each_chunk() -> None:
    run = Run("r1", None, max_bytes=1000, now=0)
    followers = [asyncio.create_task(collect(run)) for _ in range(3)]
    await asyncio.sleep(0)
    run.add_delta("x")
    await asyncio.sleep(0)
    run.fail("boom", 1.0)
    results = await asyncio.gather(*followers)
    assert all(b"".join(r).endswith(b'event: error\ndata: {"detail":"boom"}\n\n') for r in results)
    assert run.followers == 0


async def test_a_cancelled_follower_does_not_break_the_run_for_others() -> None:
    """Regression: a disconnecting follower used to cancel the shared wake-up future."""
    run = Run("r1", None, max_bytes=1000, now=0)
    leaver = asyncio.create_task(collect(run))
    stayer = asyncio.create_task(collect(run))
    await asyncio.sleep(0)
    leaver.cancel()
    await asyncio.sleep(0)
    run.add_delta("still here")
    run.finish(1.0)
    frames = b"".join(await stayer)
    assert json.loads(frames.split(b"data: ")[-1])["text"] == "still here"


async def test_registry_bounds_runs_and_evicts_finished_first() -> None:
    clock = FakeClock()
    registry = RunRegistry(max_runs=2, retention_seconds=60, clock=clock)
    first = registry.add("k1", 100)
    second = registry.add("k2", 100)
    with pytest.raises(RunsFullError):
        registry.add("k3", 100)  # both still running
    first.finish(clock())
    registry.finished(first)
    third = registry.add("k3", 100)
    assert registry.get(first.id) is None
    assert registry.get(second.id) is second
    assert registry.get(third.id) is third
    assert registry.evicted == 1


async def test_single_flight_lookup_only_while_running() -> None:
    registry = RunRegistry(max_runs=5, retention_seconds=60, clock=FakeClock())
    run = registry.add("key", 100)
    assert registry.in_flight("key") is run
    run.finish(1.0)
    registry.finished(run)
    assert registry.in_flight("key") is None


async def test_finished_runs_expire_after_retention_and_ids_read_as_expired() -> None:
    clock = FakeClock()
    wall = [1_700_000_000.0]
    registry = RunRegistry(
        max_runs=5, retention_seconds=60, clock=clock, wall_clock=lambda: wall[0]
    )
    run = registry.add(None, 100)
    run.finish(clock())
    clock.now += 61
    wall[0] += 61
    assert registry.expire() == 1
    assert registry.get(run.id) is None
    assert registry.id_is_expired(run.id)
    assert not registry.id_is_expired(registry.new_id())  # recent: unknown, not expired
    assert not registry.id_is_expired("garbage")


async def test_drop_finished_frees_bytes_and_keeps_running_runs() -> None:
    clock = FakeClock()
    registry = RunRegistry(max_runs=5, retention_seconds=60, clock=clock)
    done = registry.add(None, 1000)
    done.add_delta("x" * 500)
    done.finish(clock())
    running = registry.add(None, 1000)
    freed = registry.drop_finished()
    assert freed >= 1000  # the deltas and the full text in `done`
    assert registry.get(done.id) is None
    assert registry.get(running.id) is running
