"""The memory guard: sample RSS, track the level, clean up, refuse new work when critical.

Design decisions (read the reason before "fixing" one):

1. One task per worker samples RSS every ``MEMORY_CHECK_SECONDS``, in the event
   loop and synchronously: psutil reads ``/proc/self/statm`` in microseconds,
   and a thread would cost more memory than the read. :meth:`MemoryGuard.check`
   is one sample; tests inject the RSS source and the clock and call it
   directly instead of sleeping.
2. The first sample is taken in :meth:`MemoryGuard.start`, before the server
   accepts requests, so an instance that boots already over its limit refuses
   from its first request and ``/health`` tells the truth at once.
3. Cleanups run on *entering* a level on the way up, not on every sample in it.
   A second pass finds the structures already trimmed, and repeated full
   collections while critical would burn the CPU the process needs to drain.
   Falling from critical to warning runs nothing.
4. Refusal holds while the box is ``critical``: it starts on entering it and
   is lifted when the level falls back to ``warning`` (under the critical line
   by the hysteresis margin). It is not held until ``normal``: a crowd whose
   idle cost alone sits in the warning band must still be let back in, and
   the refused clients return spread over a jittered wait rather than in one
   instant. Between two samples each admitted stream counts
   :data:`ADMISSION_ESTIMATE_BYTES` against the box, so a crowd arriving
   faster than the guard samples is refused at the line, not a second later.
5. Streams are shed, never the well-behaved crowd. From the warning line on,
   every worker cuts the streams that hold the most beyond their idle cost
   (queues, transport and kernel buffers: :mod:`app.memory.shedding`) until
   its share of the excess over the warning line's hysteresis floor is
   covered, on every sample while the box stays past the line. Shedding
   starts below the critical line on purpose: what readers that stall hold is
   the part of the box that can be given back, so it goes first, before new
   streams of the crowd the box exists for are refused. The cut is a reset,
   so the buffers are freed at once, and the client resumes after its
   ``retry:`` with its last id, losing nothing. A stream holding less than
   :data:`~app.memory.shedding.SHED_MIN_HOLDING_BYTES` is never cut: its
   reconnect would cost more than it gives back.
6. A refusal is a ``StreamRefusedError`` from an admission check registered on
   the hub and on the response service. The check only reads a flag, since it
   runs for every new stream. The stream response turns it into what the
   client survives (:mod:`app.sse.stream_response`): an ``EventSource`` gets a 200
   with a jittered ``retry:`` and an end, and comes back by itself; anything
   else gets 503 with ``Retry-After``.
7. A suspected leak is reported (logged once when it starts, and in the admin
   metrics), never acted on: a rising slope can have innocent causes, such as a
   cache filling up to its budget, and only a person can tell. The trend skips
   the first :data:`TREND_WARMUP_SECONDS`, when every healthy process grows.
8. What the levels compare with the limit is the whole box (:mod:`app.memory.box`):
   the container's working set with its socket memory where a cgroup limit
   holds the server, else the RSS of the master and every worker plus the
   kernel's TCP memory. A limit is shared by every process in the box, so each
   worker compares the same figure and all of them reach a level together;
   a worker that compared only its own RSS would see half a full box as fine.
   The trend (leak suspicion) stays on this worker's RSS: socket memory and the
   other workers rise and fall with traffic.
9. Freed memory is handed back when it is worth it, not only on entering
   ``critical``: CPython and malloc keep freed pages for reuse, so after a
   crowd leaves RSS stays at its peak and the next crowd starts from there.
   A worker trims its heap (a young collection, then ``malloc_trim``) when its
   open streams fell by a quarter, and by at least
   :data:`TRIM_CROWD_MIN_STREAMS`, from their peak since the last trim, and
   after every shed. Both are rare events; a trim of a few hundred MB takes
   milliseconds.
10. Growth is seen where it happens. A reader that stops reading shows first
    as its transport pausing (:mod:`app.memory.pressure`); each pause counts
    what such a stream can add (twice the socket's send buffer, the transport's
    buffer and one write). When the last sample plus those estimates reaches
    the warning line, the guard samples at once instead of at the next tick
    (at most every :data:`EARLY_CHECK_MIN_SECONDS`), and sheds on what it
    reads. A crowd of readers stalling together is met within a loop turn or
    two, not a second later.
11. What a trim cannot give back is handed back by a fresh process. Freed
    objects leave the allocator's arenas partly used (a few survivors per
    arena pin it), so after a crowd of thousands a worker can stay tens of MB
    above its start however often it trims. A gunicorn worker whose crowd has
    left (a tenth of its peak streams or fewer) and whose RSS stays
    ``MEMORY_RECYCLE_MB`` above its RSS at start for
    :data:`RECYCLE_HOLD_SECONDS` (plus up to as much again at random, so the
    workers of a box do not restart together) ends gracefully, as for
    max-requests: its few streams end with a jittered ``retry:`` and resume
    exactly on the other workers, and the master starts a fresh worker.
    ``python -m app`` has no master to restart it and only trims.
12. A worker that drains (shutdown, reload, recycle) keeps sampling, so its
    figures stay true, but acts on nothing: its exit hands back everything at
    once, while a cleanup's full collection would only stall the loop that is
    closing its streams, and keep its memory, and the box, up for longer.
13. A shed client is pushed back, not let straight in. A reader that stalled
    comes back after its ``retry:`` (3 s by default), replays, stalls again and
    holds as much as before within a fraction of a second: under a busy
    channel of large events a crowd of them cycles faster than shedding
    gives back. So for :data:`SHED_BACKOFF_SECONDS` a client (its address) that
    was shed is deferred like any refused stream (a browser gets a 200 with a
    jittered ``retry:``) while the box is still past the warning line; below
    it, or after that time, it is welcome. The table is bounded
    (:data:`SHED_BACKOFF_MAX_CLIENTS`, oldest forgotten first).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import math
import random
import time
from collections import Counter, OrderedDict
from collections.abc import Callable

from app.core.config import Settings
from app.memory.box import BoxMemory, detect_box_memory, server_workers, worker_recycle
from app.memory.cleanup import (
    YOUNG_GC_GENERATION,
    CleanupResult,
    aggressive_cleanup,
    light_cleanup,
)
from app.memory.health import health_score
from app.memory.levels import LevelTracker, MemoryLevel
from app.memory.limits import MemoryLimit, detect_memory_limit
from app.memory.pressure import WRITE_PAUSES
from app.memory.process import read_rss, release_free_heap
from app.memory.shedding import plan_shed
from app.memory.trend import DEFAULT_MAX_SAMPLES, RssTrend, TrendReport
from app.memory.units import format_bytes
from app.responses.service import ResponseService
from app.sse.connection import MAX_BATCH_BYTES, CloseReason
from app.sse.hub import Hub, StreamRefusedError

__all__ = [
    "ADMISSION_ESTIMATE_BYTES",
    "MEMORY_RETRY_AFTER_SECONDS",
    "REFUSAL_DETAIL",
    "TREND_MAX_SAMPLES",
    "TREND_WARMUP_SECONDS",
    "MemoryGuard",
    "level_tracker",
]

logger = logging.getLogger("herald.memory")

MEMORY_RETRY_AFTER_SECONDS = 5
"""Retry-After of a refusal: several samples, time for sheds and cleanups to show; a
deferred EventSource comes back after this plus up to as much again."""
REFUSAL_DETAIL = "server is low on memory; retry later"
TREND_MAX_SAMPLES = DEFAULT_MAX_SAMPLES
"""Upper bound of the trend's sample deque (720). The trend window is shortened to
what that many samples span, so a fast ``MEMORY_CHECK_SECONDS`` cannot make the
guard's own bookkeeping grow."""
TREND_WARMUP_SECONDS = 60.0
"""Samples of the first minute are not fed to the trend: imports, first requests
and lazily built caches make RSS climb then on every healthy start."""

_PERCENT = 100.0
AUTOTUNED_SEND_BUFFER_BYTES = 4 * 1024 * 1024
"""tcp_wmem's usual maximum: what a socket without SO_SNDBUF may buffer."""
EARLY_CHECK_MIN_SECONDS = 0.1
"""Early samples (design note 10) come at most this often: a crowd stalling together pauses
thousands of transports within one loop turn."""
ADMISSION_ESTIMATE_BYTES = 32 * 1024
"""What one admitted stream is counted as until the next sample shows its real cost (an
idle stream in the worker and its socket in the kernel, rounded up)."""
FULL_GC_GENERATION = 2
SHED_BACKOFF_SECONDS = 10.0
"""How long a shed client is deferred if it returns while the box is still past the warning
line (design note 13)."""
SHED_BACKOFF_MAX_CLIENTS = 10_000
"""Shed clients remembered at once (about 100 B each); the oldest are forgotten first."""
RECYCLE_CROWD_LEFT_SHARE = 0.1
"""Open streams at or under this share of the worker's peak: its crowd has left."""
RECYCLE_HOLD_SECONDS = 5.0
"""How long the excess must last before a recycle, plus up to as much again at random, so
the workers of one box, which see their crowds leave together, do not restart together."""
TRIM_CROWD_LEFT_SHARE = 0.75
"""Open streams at or under this share of their peak since the last trim: a crowd left."""
TRIM_CROWD_MIN_STREAMS = 100
"""Fewer streams than this leaving is churn, not a crowd: not worth a trim's pause."""


def level_tracker(settings: Settings) -> LevelTracker:
    """The level tracker for these settings; ``ValueError`` if the thresholds cannot work."""
    return LevelTracker(
        warning_percent=settings.memory_warning_percent,
        critical_percent=settings.memory_critical_percent,
        hysteresis_percent=settings.memory_hysteresis_percent,
    )


class MemoryGuard:
    """Watches this worker's RSS against its limit and defends it (one per worker)."""

    def __init__(
        self,
        settings: Settings,
        hub: Hub,
        responses: ResponseService,
        *,
        rss_source: Callable[[], int] = read_rss,
        clock: Callable[[], float] = time.monotonic,
        limit: MemoryLimit | None = None,
        release_heap: Callable[[], bool] = release_free_heap,
        box: BoxMemory | None = None,
    ) -> None:
        self.settings = settings
        self.hub = hub
        self.responses = responses
        self.limit = limit or detect_memory_limit(settings.memory_limit_mb)
        self._rss_source = rss_source
        self.box = box or detect_box_memory()
        self._clock = clock
        self._created_at = clock()
        self._release_heap = release_heap
        self._tracker = level_tracker(settings)
        self._trend = RssTrend(
            window_seconds=min(
                settings.memory_trend_window_seconds,
                settings.memory_check_seconds * (TREND_MAX_SAMPLES - 1),
            ),
            slope_threshold_bytes_per_s=settings.memory_leak_slope_bytes_per_s,
            max_samples=TREND_MAX_SAMPLES,
        )
        self._check_refusal = self.refusal  # one bound method, so stop() can remove it
        self._check_backoff = self.backoff
        # Clients shed a moment ago, oldest first, with when they may come back.
        self._shed_clients: OrderedDict[str, float] = OrderedDict()
        self.backed_off = 0
        self._task: asyncio.Task[None] | None = None
        self._refusing = False
        self._leak_reported = False
        self.rss_bytes = 0
        self.socket_bytes = 0
        self.box_bytes = 0
        self.percent = 0.0
        self.sampled_at: float | None = None
        self.checks = 0
        self.refused = 0
        self.freed_bytes = 0
        self.shed_streams = 0
        self.shed_bytes = 0
        self.trims = 0
        self.early_checks = 0
        # What one stream that stops reading adds (design note 10): the kernel charges about
        # twice SO_SNDBUF (4 MiB with autotuning), plus the transport's buffer and one write.
        send_buffer = settings.sse_socket_send_buffer_kb * 1024 or AUTOTUNED_SEND_BUFFER_BYTES
        self._stall_estimate = (
            2 * send_buffer + settings.sse_transport_buffer_kb * 1024 + MAX_BATCH_BYTES
        )
        self._peak_streams = 0
        self._admitted = 0  # streams and responses let in since the last sample
        self._paused = 0  # transports that paused since the last sample
        self._recycle = worker_recycle()
        self._start_rss: int | None = None
        self._crowd_peak = 0
        self._bloated_since: float | None = None
        self._recycle_hold = RECYCLE_HOLD_SECONDS * (1 + random.random())
        self.recycled = False
        self._early_check: asyncio.Handle | None = None
        self._last_check_at = -math.inf
        self._critical_bytes = self.limit.bytes * settings.memory_critical_percent / _PERCENT
        self.transitions: Counter[str] = Counter()
        self.cleanups: Counter[str] = Counter()
        self.last_cleanup: dict[str, object] | None = None

    # --- lifecycle -------------------------------------------------------

    async def start(self) -> None:
        self.hub.admission_checks.append(self._check_refusal)
        self.hub.client_checks.append(self._check_backoff)
        self.responses.admission_checks.append(self._check_refusal)
        logger.info(
            "memory guard: limit %s (%s), the box read from %s, warning at %g%%,"
            " critical at %g%%, every %gs",
            format_bytes(self.limit.bytes),
            self.limit.source,
            self.box.source,
            self.settings.memory_warning_percent,
            self.settings.memory_critical_percent,
            self.settings.memory_check_seconds,
        )
        self._safe_check()
        WRITE_PAUSES.take()
        WRITE_PAUSES.listener = self._on_write_paused
        self._task = asyncio.create_task(self._sample_forever(), name="memory guard")

    async def stop(self) -> None:
        if WRITE_PAUSES.listener == self._on_write_paused:
            WRITE_PAUSES.listener = None
        if self._early_check is not None:
            self._early_check.cancel()
            self._early_check = None
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for checks in (self.hub.admission_checks, self.responses.admission_checks):
            with contextlib.suppress(ValueError):
                checks.remove(self._check_refusal)
        with contextlib.suppress(ValueError):
            self.hub.client_checks.remove(self._check_backoff)

    async def _sample_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.memory_check_seconds)
            self._safe_check()

    def _safe_check(self) -> None:
        try:
            self.check()
        except Exception:  # a broken probe must not stop the guard for good
            logger.exception("memory check failed")

    # --- one sample --------------------------------------------------------

    def check(self) -> MemoryLevel | None:
        """Take one sample and act on it; returns the new level if it changed."""
        rss = self._rss_source()
        now = self._clock()
        self.rss_bytes = rss
        reading = self.box.read()
        self.box_bytes = reading.used_bytes
        self.socket_bytes = reading.socket_bytes
        self._admitted = 0
        self._paused = 0
        self._last_check_at = now
        self.percent = self.used_bytes / self.limit.bytes * _PERCENT
        self.sampled_at = now
        self.checks += 1
        if now - self._created_at >= TREND_WARMUP_SECONDS:
            self._trend.add(now, rss, self.hub.connection_count)
            self._report_leak()
        previous = self._tracker.level
        level = self._tracker.update(self.percent)
        if self.hub.draining:
            # Exiting hands everything back; a collection now only delays the exit.
            return level
        if level is not None:
            self._enter(previous, level)
        shed = self._shed()
        self._trim_if_worth_it(rss, shed)
        self._recycle_if_bloated(now)
        return level

    def _on_write_paused(self) -> None:
        """A transport paused (design note 10): schedule a weighing, never work inside a write."""
        if self._early_check is None:
            self._early_check = asyncio.get_running_loop().call_soon(self._weigh_pauses)

    def _weigh_pauses(self) -> None:
        self._early_check = None
        self._paused += WRITE_PAUSES.take()
        grown = self._paused * self._stall_estimate
        shed_line = self.limit.bytes * self.settings.memory_warning_percent / _PERCENT
        recent = self._clock() - self._last_check_at < EARLY_CHECK_MIN_SECONDS
        if self.box_bytes + grown >= shed_line and not recent:
            self.early_checks += 1
            self._safe_check()

    def _shed(self) -> int:
        """Past the warning line: cut this worker's share of the excess (design note 5)."""
        settings = self.settings
        if self.percent < settings.memory_warning_percent:
            return 0
        floor_percent = settings.memory_warning_percent - settings.memory_hysteresis_percent
        floor = self.limit.bytes * floor_percent / _PERCENT
        need = int((self.box_bytes - floor) / server_workers())
        plan = plan_shed(self.hub.connections, need)
        if not plan.streams:
            return 0
        chosen = set(plan.streams)
        cut = self.hub.close_where(chosen.__contains__, CloseReason.MEMORY)
        until = self._clock() + SHED_BACKOFF_SECONDS
        shed_clients = self._shed_clients
        for connection in plan.streams:
            if connection.client:
                shed_clients[connection.client] = until
                shed_clients.move_to_end(connection.client)
        while len(shed_clients) > SHED_BACKOFF_MAX_CLIENTS:
            shed_clients.popitem(last=False)
        self.shed_streams += cut
        self.shed_bytes += plan.held_bytes
        logger.warning(
            "memory: box %s past the warning line; shed %d streams holding %s (need %s)",
            format_bytes(self.box_bytes),
            cut,
            format_bytes(plan.held_bytes),
            format_bytes(need),
        )
        return cut

    def _trim_if_worth_it(self, rss: int, shed: int) -> None:
        """Hand freed heap back after a crowd left or a shed (design note 9)."""
        streams = self.hub.connection_count
        self._peak_streams = max(self._peak_streams, streams)
        peak = self._peak_streams
        crowd_left = peak - streams >= TRIM_CROWD_MIN_STREAMS and (
            streams <= peak * TRIM_CROWD_LEFT_SHARE
        )
        if not (shed or crowd_left):
            return
        # A crowd that left leaves its cycles (tasks, frames, exceptions) in the oldest
        # generation: only a full collection frees them, and the box is quiet now. Under a
        # shed the box is busy: the young generations, where the cut streams' garbage is.
        gc.collect(YOUNG_GC_GENERATION if shed else FULL_GC_GENERATION)
        self._release_heap()
        self.trims += 1
        self._peak_streams = streams
        logger.info(
            "memory: heap trimmed (%s); rss %s -> %s",
            "after a shed" if shed else "a crowd left",
            format_bytes(rss),
            format_bytes(self._rss_source()),
        )

    def _recycle_if_bloated(self, now: float) -> None:
        """Replace this worker once its crowd left and a trim could not give RSS back
        (design note 11)."""
        if self._start_rss is None:
            self._start_rss = self.rss_bytes
        streams = self.hub.connection_count
        self._crowd_peak = max(self._crowd_peak, streams)
        excess = self.settings.memory_recycle_mb * 1024 * 1024
        bloated = (
            self._recycle is not None
            and excess > 0
            and not self.recycled
            and self._crowd_peak >= TRIM_CROWD_MIN_STREAMS
            and streams <= self._crowd_peak * RECYCLE_CROWD_LEFT_SHARE
            and self.rss_bytes - self._start_rss >= excess
        )
        if not bloated:
            self._bloated_since = None
            return
        if self._bloated_since is None:
            self._bloated_since = now
        if now - self._bloated_since < self._recycle_hold:
            return
        assert self._recycle is not None
        self.recycled = True
        logger.warning(
            "memory: rss %s, %s above its start, with %d of %d streams left: recycling this worker",
            format_bytes(self.rss_bytes),
            format_bytes(self.rss_bytes - self._start_rss),
            streams,
            self._crowd_peak,
        )
        self._recycle()

    def _enter(self, previous: MemoryLevel, level: MemoryLevel) -> None:
        self.transitions[level] += 1
        log = logger.info if level is MemoryLevel.NORMAL else logger.warning
        log(
            "memory level %s -> %s: box %s (sockets %s; this worker's rss %s) of %s (%.1f%%)",
            previous,
            level,
            format_bytes(self.box_bytes),
            format_bytes(self.socket_bytes),
            format_bytes(self.rss_bytes),
            format_bytes(self.limit.bytes),
            self.percent,
        )
        if level is MemoryLevel.CRITICAL:
            if not self._refusing:
                logger.warning("memory critical: refusing new streams and responses")
            self._refusing = True
            self._record(
                aggressive_cleanup(self.hub, self.responses, release_heap=self._release_heap)
            )
        elif level is MemoryLevel.WARNING and previous is MemoryLevel.NORMAL:
            self._record(light_cleanup(self.hub, self.responses))
        elif self._refusing:
            self._refusing = False
            logger.info("memory under the critical line: accepting new streams and responses")

    def _record(self, result: CleanupResult) -> None:
        rss_after = self._rss_source()
        self.cleanups[result.level] += 1
        self.freed_bytes += result.freed_bytes
        self.last_cleanup = {
            **result.as_dict(),
            "rss_before": self.rss_bytes,
            "rss_after": rss_after,
            "uptime_s": round(self._clock() - self._created_at, 1),
        }
        logger.warning(
            "memory cleanup (%s): freed %s [%s]; gc collected %d objects; rss %s -> %s; %.1f ms",
            result.level,
            format_bytes(result.freed_bytes),
            ", ".join(f"{step} {format_bytes(size)}" for step, size in result.freed.items()),
            result.gc_collected,
            format_bytes(self.rss_bytes),
            format_bytes(rss_after),
            result.duration_ms,
        )

    def _report_leak(self) -> None:
        report = self._trend.report()
        if report.leak_suspected and not self._leak_reported:
            logger.warning(
                "memory leak suspected: rss rising %s/s over %d samples with steady connections",
                format_bytes(report.slope_bytes_per_s),
                report.samples,
            )
        self._leak_reported = report.leak_suspected

    # --- what others ask ---------------------------------------------------

    @property
    def used_bytes(self) -> int:
        """What the levels compare with the limit: the whole box, sockets included."""
        return self.box_bytes

    @property
    def level(self) -> MemoryLevel:
        return self._tracker.level

    @property
    def refusing(self) -> bool:
        return self._refusing

    def refusal(self) -> StreamRefusedError | None:
        """Admission check: a 503 with Retry-After while refusing, else ``None``."""
        if not self._refusing:
            self._admitted += 1
            if self.box_bytes + self._admitted * ADMISSION_ESTIMATE_BYTES < self._critical_bytes:
                return None
        self.refused += 1
        return StreamRefusedError(REFUSAL_DETAIL, retry_after=MEMORY_RETRY_AFTER_SECONDS)

    def backoff(self, client: str) -> StreamRefusedError | None:
        """Client admission check: a client shed a moment ago waits before it comes back
        (design note 13)."""
        until = self._shed_clients.get(client)
        if until is None:
            return None
        if self._clock() >= until or self.percent < self.settings.memory_warning_percent:
            del self._shed_clients[client]
            return None
        self.backed_off += 1
        return StreamRefusedError(REFUSAL_DETAIL, retry_after=MEMORY_RETRY_AFTER_SECONDS)

    def trend_report(self) -> TrendReport:
        return self._trend.report()

    def health_score(self) -> int:
        settings = self.settings
        return health_score(
            self.level,
            self.percent,
            settings.memory_warning_percent,
            settings.memory_critical_percent,
        )

    def snapshot(self) -> dict[str, object]:
        """The ``memory`` section of the admin metrics (docs/http-api.md, "Admin API")."""
        settings = self.settings
        limit = self.limit.bytes
        return {
            "rss_bytes": self.rss_bytes,
            "socket_bytes": self.socket_bytes,
            "box_source": self.box.source,
            "used_bytes": self.used_bytes,
            "limit_bytes": limit,
            "limit_source": self.limit.source,
            "percent": round(self.percent, 2),
            "level": str(self.level),
            "refusing": self._refusing,
            "refused": self.refused,
            "shed": {"streams": self.shed_streams, "bytes": self.shed_bytes},
            "trims": self.trims,
            "recycled": self.recycled,
            "backed_off": self.backed_off,
            "early_checks": self.early_checks,
            "health_score": self.health_score(),
            "thresholds": {
                "warning_percent": settings.memory_warning_percent,
                "critical_percent": settings.memory_critical_percent,
                "hysteresis_percent": settings.memory_hysteresis_percent,
                "warning_bytes": int(limit * settings.memory_warning_percent / _PERCENT),
                "critical_bytes": int(limit * settings.memory_critical_percent / _PERCENT),
            },
            "check_seconds": settings.memory_check_seconds,
            "checks": self.checks,
            "sampled_ago_s": (
                None if self.sampled_at is None else round(self._clock() - self.sampled_at, 2)
            ),
            "transitions": {str(level): self.transitions[level] for level in MemoryLevel},
            "cleanups": {
                "warning": self.cleanups[MemoryLevel.WARNING],
                "critical": self.cleanups[MemoryLevel.CRITICAL],
                "freed_bytes": self.freed_bytes,
                "last": self.last_cleanup,
            },
            "trend": self.trend_report().as_dict(),
        }
