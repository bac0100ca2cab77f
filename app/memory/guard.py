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
4. Refusal is latched: it starts on entering ``critical`` and is lifted only
   when the level is back to ``normal`` (under the warning line by the
   hysteresis margin), not merely under the critical line. Readmitting at 89 %
   would let the crowd that was just turned away push it straight back over.
5. Open streams are never cut for memory. A cut ``EventSource`` reconnects at
   once, that reconnect is refused with 503, and browsers treat a non-200 answer
   as fatal (no further retry): cutting would turn pressure into an outage for
   the very clients being served. What open streams can hold is already bounded
   by the queue budgets.
6. A refusal is a ``StreamRefusedError`` from an admission check registered on
   the hub and on the response service (503 with ``Retry-After``). The check
   only reads a flag, since it runs for every new stream.
7. A suspected leak is reported (logged once when it starts, and in the admin
   metrics), never acted on: a rising slope can have innocent causes, such as a
   cache filling up to its budget, and only a person can tell. The trend skips
   the first :data:`TREND_WARMUP_SECONDS`, when every healthy process grows.
8. What the levels compare with the limit is RSS *plus socket memory*
   (:mod:`app.memory.sockets`: the cgroup's ``sock`` under cgroup v2, else the
   TCP pages of ``/proc/net/sockstat``): kernel send buffers of stalled clients
   are charged to the container but invisible in RSS. The trend (leak
   suspicion) stays on RSS alone: socket memory rises and falls with traffic.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable

from app.core.config import Settings
from app.memory.cleanup import CleanupResult, aggressive_cleanup, light_cleanup
from app.memory.health import health_score
from app.memory.levels import LevelTracker, MemoryLevel
from app.memory.limits import MemoryLimit, detect_memory_limit
from app.memory.process import read_rss, release_free_heap
from app.memory.sockets import SocketMemorySource, detect_socket_memory
from app.memory.trend import DEFAULT_MAX_SAMPLES, RssTrend, TrendReport
from app.memory.units import format_bytes
from app.responses.service import ResponseService
from app.sse.hub import Hub, StreamRefusedError

__all__ = [
    "MEMORY_RETRY_AFTER_SECONDS",
    "REFUSAL_DETAIL",
    "TREND_MAX_SAMPLES",
    "TREND_WARMUP_SECONDS",
    "MemoryGuard",
    "level_tracker",
]

logger = logging.getLogger("herald.memory")

MEMORY_RETRY_AFTER_SECONDS = 10
"""Retry-After of a refusal: two default samples, time for a cleanup to show in RSS."""
REFUSAL_DETAIL = "server is low on memory; retry later"
TREND_MAX_SAMPLES = DEFAULT_MAX_SAMPLES
"""Upper bound of the trend's sample deque (720). The trend window is shortened to
what that many samples span, so a fast ``MEMORY_CHECK_SECONDS`` cannot make the
guard's own bookkeeping grow."""
TREND_WARMUP_SECONDS = 60.0
"""Samples of the first minute are not fed to the trend: imports, first requests
and lazily built caches make RSS climb then on every healthy start."""

_PERCENT = 100.0


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
        sockets: SocketMemorySource | None = None,
    ) -> None:
        self.settings = settings
        self.hub = hub
        self.responses = responses
        self.limit = limit or detect_memory_limit(settings.memory_limit_mb)
        self._rss_source = rss_source
        self.sockets = sockets or detect_socket_memory()
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
        self._task: asyncio.Task[None] | None = None
        self._refusing = False
        self._leak_reported = False
        self.rss_bytes = 0
        self.socket_bytes = 0
        self.percent = 0.0
        self.sampled_at: float | None = None
        self.checks = 0
        self.refused = 0
        self.freed_bytes = 0
        self.transitions: Counter[str] = Counter()
        self.cleanups: Counter[str] = Counter()
        self.last_cleanup: dict[str, object] | None = None

    # --- lifecycle -------------------------------------------------------

    async def start(self) -> None:
        self.hub.admission_checks.append(self._check_refusal)
        self.responses.admission_checks.append(self._check_refusal)
        logger.info(
            "memory guard: limit %s (%s), socket memory from %s, warning at %g%%,"
            " critical at %g%%, every %gs",
            format_bytes(self.limit.bytes),
            self.limit.source,
            self.sockets.name,
            self.settings.memory_warning_percent,
            self.settings.memory_critical_percent,
            self.settings.memory_check_seconds,
        )
        self._safe_check()
        self._task = asyncio.create_task(self._sample_forever(), name="memory guard")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for checks in (self.hub.admission_checks, self.responses.admission_checks):
            with contextlib.suppress(ValueError):
                checks.remove(self._check_refusal)

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
        self.socket_bytes = self.sockets.read()
        self.percent = self.used_bytes / self.limit.bytes * _PERCENT
        self.sampled_at = now
        self.checks += 1
        if now - self._created_at >= TREND_WARMUP_SECONDS:
            self._trend.add(now, rss, self.hub.connection_count)
            self._report_leak()
        previous = self._tracker.level
        level = self._tracker.update(self.percent)
        if level is not None:
            self._enter(previous, level)
        return level

    def _enter(self, previous: MemoryLevel, level: MemoryLevel) -> None:
        self.transitions[level] += 1
        log = logger.info if level is MemoryLevel.NORMAL else logger.warning
        log(
            "memory level %s -> %s: rss %s + sockets %s of %s (%.1f%%)",
            previous,
            level,
            format_bytes(self.rss_bytes),
            format_bytes(self.socket_bytes),
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
        elif level is MemoryLevel.NORMAL and self._refusing:
            self._refusing = False
            logger.info("memory back to normal: accepting new streams and responses")

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
        """What the levels compare with the limit: RSS plus socket memory."""
        return self.rss_bytes + self.socket_bytes

    @property
    def level(self) -> MemoryLevel:
        return self._tracker.level

    @property
    def refusing(self) -> bool:
        return self._refusing

    def refusal(self) -> StreamRefusedError | None:
        """Admission check: a 503 with Retry-After while refusing, else ``None``."""
        if not self._refusing:
            return None
        self.refused += 1
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
            "socket_source": self.sockets.name,
            "used_bytes": self.used_bytes,
            "limit_bytes": limit,
            "limit_source": self.limit.source,
            "percent": round(self.percent, 2),
            "level": str(self.level),
            "refusing": self._refusing,
            "refused": self.refused,
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
