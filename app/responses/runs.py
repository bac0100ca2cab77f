"""A response run: one producer execution, owned by its id, followed by any number of readers.

Design decisions (read before changing):

1. The run, not the HTTP connection, owns the producer task. A browser that
   disconnects does not cancel it; the run ends when the producer finishes,
   fails, or exceeds ``RESPONSE_TIMEOUT_SECONDS``.
2. Every frame the run emits is encoded once and appended to the run's log,
   with ids ``0, 1, 2, …``. A follower is just an index into that log, so a
   second tab, a reconnect with ``Last-Event-ID`` and a late joiner all read
   the same bytes with no per-follower queue. The log is bounded by
   ``RESPONSE_MAX_KB`` of produced text (a producer exceeding it fails the run).
3. Followers wait on one shared future per run, replaced at each append, so
   waking N followers costs one ``set_result``.
4. Ids embed their creation time, so an id that is no longer retained can be
   told apart: recent and unknown → 404, older than the retention → 410.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from enum import StrEnum

__all__ = ["Run", "RunRegistry", "RunState", "RunsFullError"]

FRAME_OVERHEAD_BYTES = 96  # the frame list slot, bytes object header, id/event lines


class RunState(StrEnum):
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


class RunsFullError(Exception):
    pass


def _frame(index: int, event: str, payload: dict[str, object]) -> bytes:
    data = json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
    return f"id: {index}\nevent: {event}\ndata: {data}\n\n".encode()


class Run:
    def __init__(self, run_id: str, key: str | None, max_bytes: int, now: float) -> None:
        self.id = run_id
        self.key = key
        self.state = RunState.RUNNING
        self.created_at = now
        self.finished_at: float | None = None
        self.frames: list[bytes] = []
        self.text_parts: list[str] = []
        self.text_bytes = 0
        self.max_bytes = max_bytes
        self.cached = False
        self.followers = 0
        self.task: asyncio.Task[None] | None = None
        self._changed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    @property
    def finished(self) -> bool:
        return self.state is not RunState.RUNNING

    @property
    def size_bytes(self) -> int:
        return sum(len(frame) for frame in self.frames) + FRAME_OVERHEAD_BYTES * len(self.frames)

    @property
    def text(self) -> str:
        return "".join(self.text_parts)

    def _append(self, frame: bytes) -> None:
        self.frames.append(frame)
        changed, self._changed = self._changed, asyncio.get_running_loop().create_future()
        changed.set_result(None)

    def add_delta(self, text: str) -> bool:
        """Append a chunk; False (and nothing appended) if it would exceed the size cap."""
        size = len(text.encode("utf-8", "surrogatepass"))
        if self.text_bytes + size > self.max_bytes:
            return False
        self.text_bytes += size
        self.text_parts.append(text)
        self._append(_frame(len(self.frames), "delta", {"text": text}))
        return True

    def finish(self, now: float, *, cached: bool = False) -> None:
        self.cached = cached
        self.state = RunState.DONE
        self.finished_at = now
        self._append(_frame(len(self.frames), "done", {"text": self.text, "cached": cached}))

    def fail(self, detail: str, now: float) -> None:
        self.state = RunState.FAILED
        self.finished_at = now
        self._append(_frame(len(self.frames), "error", {"detail": detail}))

    async def follow(self, start: int) -> AsyncIterator[bytes]:
        """Frames from index ``start`` on, as they come, until the run has finished."""
        position = max(0, start)
        self.followers += 1
        try:
            while True:
                if position < len(self.frames):
                    batch = self.frames[position:]
                    position += len(batch)
                    yield batch[0] if len(batch) == 1 else b"".join(batch)
                    continue
                if self.finished:
                    return
                # Shielded: a follower that disconnects is cancelled here, and must
                # not cancel the future every other follower is waiting on.
                await asyncio.shield(self._changed)
        finally:
            self.followers -= 1


class RunRegistry:
    """Bounded set of runs: at most ``max_runs``, finished ones kept ``retention_seconds``."""

    def __init__(
        self,
        *,
        max_runs: int,
        retention_seconds: float,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.max_runs = max_runs
        self.retention_seconds = retention_seconds
        self.clock = clock
        self.wall_clock = wall_clock
        self._runs: OrderedDict[str, Run] = OrderedDict()
        self._in_flight: dict[str, Run] = {}
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._runs)

    def new_id(self) -> str:
        return f"r{int(self.wall_clock() * 1000):x}{secrets.token_hex(8)}"

    def id_is_expired(self, run_id: str) -> bool:
        """Could this unknown id be one we issued and have since dropped?"""
        stamp = run_id[1:-16] if run_id.startswith("r") and len(run_id) > 17 else ""
        try:
            created_ms = int(stamp, 16)
        except ValueError:
            return False
        age = self.wall_clock() - created_ms / 1000
        return self.retention_seconds <= age < 10 * 365 * 86400

    def get(self, run_id: str) -> Run | None:
        return self._runs.get(run_id)

    def in_flight(self, key: str) -> Run | None:
        run = self._in_flight.get(key)
        return run if run is not None and not run.finished else None

    def add(self, key: str | None, max_bytes: int) -> Run:
        self.expire()
        if len(self._runs) >= self.max_runs and not self._evict_one_finished():
            raise RunsFullError(f"too many responses in progress (limit {self.max_runs})")
        run = Run(self.new_id(), key, max_bytes, self.clock())
        self._runs[run.id] = run
        if key is not None:
            self._in_flight[key] = run
        return run

    def finished(self, run: Run) -> None:
        if run.key is not None and self._in_flight.get(run.key) is run:
            del self._in_flight[run.key]

    def _evict_one_finished(self) -> bool:
        for run_id, run in self._runs.items():
            if run.finished:
                del self._runs[run_id]
                self.evicted += 1
                return True
        return False

    def expire(self) -> int:
        deadline = self.clock() - self.retention_seconds
        stale = [
            run_id
            for run_id, run in self._runs.items()
            if run.finished_at is not None and run.finished_at < deadline
        ]
        for run_id in stale:
            del self._runs[run_id]
        return len(stale)

    def drop_finished(self) -> int:
        """Memory pressure: forget every finished run now; returns bytes freed."""
        freed = 0
        for run_id in [run_id for run_id, run in self._runs.items() if run.finished]:
            freed += self._runs.pop(run_id).size_bytes
        return freed

    def runs(self) -> list[Run]:
        return list(self._runs.values())
