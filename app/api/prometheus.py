"""Prometheus metrics: one collector over every live worker's snapshot, built per scrape.

Design decisions:

* A scrape lands on one worker, but must not pass for the whole service. So
  the collector is fed the snapshots of every live worker (the answering one
  taken live, the others as last shared, see ``app.fleet``) and every family
  has one sample per worker, labelled ``worker="<hostname>:<pid>"``, plus
  ``herald_workers``: how many workers reported. Whichever worker answers, the
  same series come back. The service is ``sum by () (...)`` over ``worker``.
* Not Prometheus' multiprocess mode: it needs a shared directory of mmapped
  files that must be wiped at every start, ``live*`` gauge modes for anything
  that should vanish with a dead worker, and cannot span hosts. Herald's
  figures are already counted by the hub, cache and guard, so sharing a small
  snapshot of them costs less and also works across instances through Redis.
* Values are read, not tracked: no ``Counter``/``Gauge`` objects updated on
  the hot path, so ``/metrics`` can never drift from ``/api/admin/metrics``.
* No registry, and never the process-wide default one: the exposition
  functions take any collector, and this one is built for a single scrape from
  the snapshots gathered for it (the default registry's process collectors
  would describe the interpreter answering, not the service).
* No sample timestamps: another worker's snapshot is at most one share
  interval old, and explicit timestamps defeat Prometheus' staleness handling
  when a worker goes away.
* Counters keep Prometheus' conventions: the ``_total`` suffix, and values that
  only go up for the life of one worker. A recycled worker comes back under a
  new ``worker`` label, a new series which ``rate()`` handles.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from app.admin.actions import ACTION_MODELS
from app.fleet.snapshot import WorkerSnapshot
from app.memory.levels import MemoryLevel

__all__ = ["LEVEL_VALUES", "WORKER_LABEL", "HeraldCollector"]

WORKER_LABEL = "worker"
LEVEL_VALUES: Mapping[MemoryLevel, int] = {
    MemoryLevel.NORMAL: 0,
    MemoryLevel.WARNING: 1,
    MemoryLevel.CRITICAL: 2,
}
"""``herald_memory_level`` as a number, so alert rules can say ``>= 1``."""

Reading = Callable[[WorkerSnapshot], float]

# (name, documentation, how to read it from a snapshot), in exposition order.
_GAUGES_SSE: Sequence[tuple[str, str, Reading]] = (
    ("herald_sse_connections", "Open SSE streams.", lambda s: s["connections"]),
    (
        "herald_sse_channels",
        "Channels with at least one local subscriber.",
        lambda s: s["channels"],
    ),
    ("herald_sse_queued_events", "Events waiting in stream queues.", lambda s: s["queued"]),
    (
        "herald_sse_replays_running",
        "Replays reading and writing their pages now (at most SSE_REPLAY_CONCURRENCY).",
        lambda s: s.get("replays_running", 0),
    ),
    (
        "herald_sse_replays_waiting",
        "Resuming streams waiting for a replay turn.",
        lambda s: s.get("replays_waiting", 0),
    ),
    (
        "herald_sse_replay_page_bytes",
        "Bytes of replay pages read and not yet written.",
        lambda s: s.get("replay_page_bytes", 0),
    ),
)
_COUNTERS_SSE: Sequence[tuple[str, str, Reading]] = (
    ("herald_events_published", "Events published through this worker.", lambda s: s["published"]),
    (
        "herald_events_delivered",
        "Events written to SSE streams (replays included).",
        lambda s: s["delivered"],
    ),
    (
        "herald_events_dropped",
        "Events dropped from full queues (SSE_OVERFLOW=drop_oldest).",
        lambda s: s["dropped"],
    ),
    (
        "herald_sse_overflow_disconnects",
        "Streams closed because their queue was full (SSE_OVERFLOW=disconnect).",
        lambda s: s["overflow_disconnects"],
    ),
    ("herald_sse_reaped", "Idle streams closed by the reaper.", lambda s: s["reaped"]),
)
_COUNTERS_CACHE: Sequence[tuple[str, str, Reading]] = (
    ("herald_cache_hits", "Response cache hits.", lambda s: s["cache_hits"]),
    ("herald_cache_misses", "Response cache misses.", lambda s: s["cache_misses"]),
)
_GAUGES_CACHE: Sequence[tuple[str, str, Reading]] = (
    ("herald_cache_items", "Entries in the response cache.", lambda s: s["cache_items"]),
    (
        "herald_cache_bytes",
        "UTF-8 bytes of keys and texts in the response cache.",
        lambda s: s["cache_bytes"],
    ),
)
_GAUGES_MEMORY: Sequence[tuple[str, str, Reading]] = (
    ("herald_memory_rss_bytes", "Resident set size at the last sample.", lambda s: s["rss_bytes"]),
    (
        "herald_socket_memory_bytes",
        "Kernel socket buffer memory at the last sample (the cgroup's or the network"
        " namespace's: workers sharing one report the same value). Added to RSS for the level.",
        lambda s: s["socket_bytes"],
    ),
    (
        "herald_memory_limit_bytes",
        "Memory limit the level is computed against.",
        lambda s: s["limit_bytes"],
    ),
    (
        "herald_memory_level",
        "Memory level: 0 normal, 1 warning, 2 critical.",
        lambda s: LEVEL_VALUES[s["level"]],
    ),
    (
        "herald_memory_refusing",
        "1 while new streams and responses are refused for memory.",
        lambda s: int(s["refusing"]),
    ),
)
_GAUGES_TREND: Sequence[tuple[str, str, Reading]] = (
    (
        "herald_memory_rss_slope_bytes_per_second",
        "Least-squares RSS growth over the trend window.",
        lambda s: s["rss_slope_bytes_per_s"],
    ),
    (
        "herald_memory_leak_suspected",
        "1 when RSS grows while the connection count is steady.",
        lambda s: int(s["leak_suspected"]),
    ),
)


class HeraldCollector:
    """Yields Herald's families with one sample per worker snapshot."""

    def __init__(self, workers: Iterable[WorkerSnapshot]) -> None:
        self.workers = list(workers)

    def describe(self) -> Iterable[Metric]:
        # Asked by a registry to detect name clashes; the families are cheap to
        # build and are exactly what a scrape yields.
        return list(self.collect())

    def collect(self) -> Iterator[Metric]:
        workers = GaugeMetricFamily(
            "herald_workers", "Workers whose figures this scrape reports (alive and sharing)."
        )
        workers.add_metric([], len(self.workers))
        yield workers
        yield from self._families(_GAUGES_SSE, GaugeMetricFamily)
        yield from self._families(_COUNTERS_SSE, CounterMetricFamily)
        yield from self._families(_COUNTERS_CACHE, CounterMetricFamily)
        yield from self._families(_GAUGES_CACHE, GaugeMetricFamily)
        yield from self._families(_GAUGES_MEMORY, GaugeMetricFamily)
        yield self._cleanups()
        yield from self._families(_GAUGES_TREND, GaugeMetricFamily)
        yield self._admin_actions()

    def _families(
        self,
        specs: Sequence[tuple[str, str, Reading]],
        family_type: type[GaugeMetricFamily] | type[CounterMetricFamily],
    ) -> Iterator[Metric]:
        for name, documentation, read in specs:
            family = family_type(name, documentation, labels=[WORKER_LABEL])
            for snapshot in self.workers:
                family.add_metric([snapshot["worker"]], read(snapshot))
            yield family

    def _admin_actions(self) -> Metric:
        # Counted by the worker that coordinated each action, so the sum over
        # workers counts every action once (app.admin.audit). Every action has
        # a sample from 0, so rate() and increase() see the first one.
        family = CounterMetricFamily(
            "herald_admin_actions",
            "Operator actions (app.admin) coordinated by this worker, by action.",
            labels=[WORKER_LABEL, "action"],
        )
        for snapshot in self.workers:
            counts = snapshot.get("admin_actions", {})
            for action in ACTION_MODELS:
                family.add_metric([snapshot["worker"], action], counts.get(action, 0))
        return family

    def _cleanups(self) -> Metric:
        family = CounterMetricFamily(
            "herald_memory_cleanups",
            "Memory cleanups run, by the level that triggered them.",
            labels=[WORKER_LABEL, "level"],
        )
        for snapshot in self.workers:
            family.add_metric(
                [snapshot["worker"], str(MemoryLevel.WARNING)], snapshot["cleanups_warning"]
            )
            family.add_metric(
                [snapshot["worker"], str(MemoryLevel.CRITICAL)], snapshot["cleanups_critical"]
            )
        return family
