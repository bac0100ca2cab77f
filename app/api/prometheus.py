"""Prometheus metrics: one collector that reads Herald's live objects at scrape time.

Design decisions:

* A custom collector, not ``Counter``/``Gauge`` objects updated on the hot
  path. The hub, the cache and the guard already count everything; reading
  those counters when Prometheus scrapes costs nothing between scrapes and can
  never drift from what ``/api/admin/metrics`` reports.
* A private ``CollectorRegistry`` per app (:func:`build_registry`), never the
  process-wide default: two apps in one process (tests, or an app mounted twice)
  would otherwise clash on metric names, and the default registry's process
  and platform collectors would report the interpreter, not the service.
* Every family carries the collector's ``const_labels`` (none today). With
  several gunicorn workers each worker serves its own values, so the way to
  aggregate later is to build each worker's collector with
  ``const_labels={"worker": "<id>"}`` and merge; nothing else has to change.
* Counters keep Prometheus' conventions: the ``_total`` suffix, and values that
  only go up for the life of the process (a restart resets them, which
  ``rate()`` understands).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import CollectorRegistry

from app.memory.guard import MemoryGuard
from app.memory.levels import MemoryLevel
from app.responses.service import ResponseService
from app.sse.hub import Hub

__all__ = ["LEVEL_VALUES", "HeraldCollector", "build_registry"]

LEVEL_VALUES: Mapping[MemoryLevel, int] = {
    MemoryLevel.NORMAL: 0,
    MemoryLevel.WARNING: 1,
    MemoryLevel.CRITICAL: 2,
}
"""``herald_memory_level`` as a number, so alert rules can say ``>= 1``."""


class HeraldCollector:
    """Yields Herald's metrics from the hub, the response service and the memory guard."""

    def __init__(
        self,
        hub: Hub,
        responses: ResponseService,
        guard: MemoryGuard,
        *,
        const_labels: Mapping[str, str] | None = None,
    ) -> None:
        self.hub = hub
        self.responses = responses
        self.guard = guard
        self._label_names = list(const_labels or {})
        self._label_values = list((const_labels or {}).values())

    def describe(self) -> Iterable[Metric]:
        # The registry asks for names to detect clashes; collecting is cheap and
        # yields exactly the families a scrape will.
        return list(self.collect())

    def collect(self) -> Iterator[Metric]:
        yield from self._sse()
        yield from self._cache()
        yield from self._memory()

    def _gauge(self, name: str, documentation: str, value: float) -> GaugeMetricFamily:
        family = GaugeMetricFamily(name, documentation, labels=self._label_names)
        family.add_metric(self._label_values, value)
        return family

    def _counter(self, name: str, documentation: str, value: float) -> CounterMetricFamily:
        family = CounterMetricFamily(name, documentation, labels=self._label_names)
        family.add_metric(self._label_values, value)
        return family

    def _sse(self) -> Iterator[Metric]:
        # One stats() call: its sums over connections include live streams'
        # deliveries, which the hub's counters only receive when a stream ends.
        stats = self.hub.stats()
        yield self._gauge(
            "herald_sse_connections", "Open SSE streams.", _number(stats, "connections")
        )
        yield self._gauge(
            "herald_sse_channels",
            "Channels with at least one local subscriber.",
            _number(stats, "channels"),
        )
        yield self._gauge(
            "herald_sse_queued_events", "Events waiting in stream queues.", _number(stats, "queued")
        )
        yield self._counter(
            "herald_events_published",
            "Events published through this worker.",
            _number(stats, "published"),
        )
        yield self._counter(
            "herald_events_delivered",
            "Events written to SSE streams (replays included).",
            _number(stats, "delivered"),
        )
        yield self._counter(
            "herald_events_dropped",
            "Events dropped from full queues (SSE_OVERFLOW=drop_oldest).",
            _number(stats, "dropped"),
        )
        yield self._counter(
            "herald_sse_overflow_disconnects",
            "Streams closed because their queue was full (SSE_OVERFLOW=disconnect).",
            _number(stats, "overflow_disconnects"),
        )
        yield self._counter(
            "herald_sse_reaped", "Idle streams closed by the reaper.", _number(stats, "reaped")
        )

    def _cache(self) -> Iterator[Metric]:
        stats = self.responses.cache.stats()
        yield self._counter("herald_cache_hits", "Response cache hits.", stats.hits)
        yield self._counter("herald_cache_misses", "Response cache misses.", stats.misses)
        yield self._gauge("herald_cache_items", "Entries in the response cache.", stats.items)
        yield self._gauge(
            "herald_cache_bytes",
            "UTF-8 bytes of keys and texts in the response cache.",
            stats.bytes,
        )

    def _memory(self) -> Iterator[Metric]:
        guard = self.guard
        yield self._gauge(
            "herald_memory_rss_bytes", "Resident set size at the last sample.", guard.rss_bytes
        )
        yield self._gauge(
            "herald_memory_limit_bytes",
            "Memory limit the level is computed against.",
            guard.limit.bytes,
        )
        yield self._gauge(
            "herald_memory_level",
            "Memory level: 0 normal, 1 warning, 2 critical.",
            LEVEL_VALUES[guard.level],
        )
        yield self._gauge(
            "herald_memory_refusing",
            "1 while new streams and responses are refused for memory.",
            int(guard.refusing),
        )
        cleanups = CounterMetricFamily(
            "herald_memory_cleanups",
            "Memory cleanups run, by the level that triggered them.",
            labels=[*self._label_names, "level"],
        )
        for level in (MemoryLevel.WARNING, MemoryLevel.CRITICAL):
            cleanups.add_metric([*self._label_values, str(level)], guard.cleanups[level])
        yield cleanups
        trend = guard.trend_report()
        yield self._gauge(
            "herald_memory_rss_slope_bytes_per_second",
            "Least-squares RSS growth over the trend window.",
            trend.slope_bytes_per_s,
        )
        yield self._gauge(
            "herald_memory_leak_suspected",
            "1 when RSS grows while the connection count is steady.",
            int(trend.leak_suspected),
        )


def _number(stats: Mapping[str, object], key: str) -> float:
    value = stats[key]
    if not isinstance(value, int | float):
        raise TypeError(f"hub stat {key!r} is not a number: {value!r}")
    return value


def build_registry(
    hub: Hub,
    responses: ResponseService,
    guard: MemoryGuard,
    *,
    const_labels: Mapping[str, str] | None = None,
) -> CollectorRegistry:
    """A registry of its own holding one :class:`HeraldCollector`."""
    registry = CollectorRegistry()
    registry.register(HeraldCollector(hub, responses, guard, const_labels=const_labels))
    return registry
