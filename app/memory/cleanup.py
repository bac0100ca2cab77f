"""What the memory guard frees when a level is entered.

Two cleanups, each a list of steps that give memory back and say how much:

* **light** (entering ``warning``): expire TTL'd response-cache entries, shrink
  the cache by :data:`WARNING_CACHE_SHRINK_FRACTION`, trim every channel's
  history to :data:`WARNING_HISTORY_FRACTION` of ``SSE_HISTORY_SIZE``, collect
  the young GC generations.
* **aggressive** (entering ``critical``): clear the response cache, trim
  histories to :data:`CRITICAL_HISTORY_KEEP` events per channel, forget
  finished response runs, run a full GC, and hand free heap back to the kernel.

Design decisions:

* Only structures that can be rebuilt are touched. A trimmed history means a
  reconnecting client gets ``reset`` instead of a replay, a cleared cache means
  the next identical question runs the producer again, a forgotten finished
  run answers ``410``: all degrade service, none loses a live stream.
* Every step runs even if an earlier one failed (a bug in one structure must
  not leave the others untrimmed when memory is short); a failure is logged
  and counted as zero bytes freed.
* Bytes freed are the structures' own accounting (payload bytes), not RSS: the
  allocator decides when RSS falls. The guard logs RSS before and after too.
* The young collection is generation 1 (which includes 0): cheap, and it is
  where short-lived garbage such as finished request objects lives. The full
  collection also walks the oldest generation, which is worth its pause only
  when the process is about to be killed.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from app.memory.levels import MemoryLevel
from app.memory.process import release_free_heap
from app.responses.service import ResponseService
from app.sse.hub import Hub

__all__ = [
    "CRITICAL_HISTORY_KEEP",
    "WARNING_CACHE_SHRINK_FRACTION",
    "WARNING_HISTORY_FRACTION",
    "YOUNG_GC_GENERATION",
    "CleanupResult",
    "aggressive_cleanup",
    "light_cleanup",
    "warning_history_keep",
]

logger = logging.getLogger("herald.memory")

WARNING_CACHE_SHRINK_FRACTION = 0.5
"""Share of the response cache (entries and bytes, least recently used first) given back."""
WARNING_HISTORY_FRACTION = 0.5
"""Share of ``SSE_HISTORY_SIZE`` each channel keeps after a light cleanup."""
CRITICAL_HISTORY_KEEP = 10
"""Events each channel keeps after an aggressive cleanup: enough for a client that
blinked (a proxy timeout, a network change) to resume without a reset."""
YOUNG_GC_GENERATION = 1

_MS = 1000


@dataclass(frozen=True, slots=True)
class CleanupResult:
    """What one cleanup freed, by step, in bytes of payload."""

    level: MemoryLevel
    freed: dict[str, int] = field(default_factory=dict)
    gc_collected: int = 0
    heap_released: bool = False
    failed: tuple[str, ...] = ()
    duration_ms: float = 0.0

    @property
    def freed_bytes(self) -> int:
        return sum(self.freed.values())

    def as_dict(self) -> dict[str, object]:
        return {
            "level": str(self.level),
            "freed": dict(self.freed),
            "freed_bytes": self.freed_bytes,
            "gc_collected": self.gc_collected,
            "heap_released": self.heap_released,
            "failed": list(self.failed),
            "duration_ms": self.duration_ms,
        }


class _Steps:
    """Runs cleanup steps, each protected from the others' failures."""

    def __init__(self) -> None:
        self.freed: dict[str, int] = {}
        self.failed: list[str] = []

    def run(self, name: str, step: Callable[[], int]) -> int:
        try:
            amount = step()
        except Exception:
            logger.exception("memory cleanup step %s failed", name)
            self.failed.append(name)
            amount = 0
        return amount

    def free(self, name: str, step: Callable[[], int]) -> None:
        self.freed[name] = self.run(name, step)


def warning_history_keep(history_size: int) -> int:
    """Events per channel a light cleanup keeps."""
    return int(history_size * WARNING_HISTORY_FRACTION)


def light_cleanup(hub: Hub, responses: ResponseService) -> CleanupResult:
    """The cleanup run on entering ``warning``."""
    started = time.perf_counter()
    steps = _Steps()
    cache = responses.cache
    keep = warning_history_keep(hub.settings.sse_history_size)
    steps.free("cache_expired", cache.expire)
    steps.free("cache_shrunk", lambda: cache.shrink(WARNING_CACHE_SHRINK_FRACTION))
    steps.free("history_trimmed", lambda: hub.broker.trim_history(keep))
    collected = steps.run("gc", lambda: gc.collect(YOUNG_GC_GENERATION))
    return CleanupResult(
        level=MemoryLevel.WARNING,
        freed=steps.freed,
        gc_collected=collected,
        failed=tuple(steps.failed),
        duration_ms=round((time.perf_counter() - started) * _MS, 2),
    )


def aggressive_cleanup(
    hub: Hub,
    responses: ResponseService,
    *,
    release_heap: Callable[[], bool] = release_free_heap,
) -> CleanupResult:
    """The cleanup run on entering ``critical``."""
    started = time.perf_counter()
    steps = _Steps()
    # Never keep more than a light cleanup would, even with a tiny SSE_HISTORY_SIZE.
    keep = min(CRITICAL_HISTORY_KEEP, warning_history_keep(hub.settings.sse_history_size))
    steps.free("cache_cleared", responses.cache.clear)
    steps.free("history_trimmed", lambda: hub.broker.trim_history(keep))
    steps.free("runs_trimmed", responses.trim)
    collected = steps.run("gc", gc.collect)
    # After the collection, so the pages it emptied are among those handed back.
    released = bool(steps.run("heap", lambda: int(release_heap())))
    return CleanupResult(
        level=MemoryLevel.CRITICAL,
        freed=steps.freed,
        gc_collected=collected,
        heap_released=released,
        failed=tuple(steps.failed),
        duration_ms=round((time.perf_counter() - started) * _MS, 2),
    )
