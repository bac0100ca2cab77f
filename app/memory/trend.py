"""Suspect a memory leak from the trend of RSS against the connection count.

A level tells you *how full* memory is; this tells you whether it is *filling
up on its own*. :class:`RssTrend` keeps recent ``(t, rss_bytes, connections)``
samples and fits a least-squares line to RSS over time. Growth is only
suspicious when the load is flat: RSS that rises with the number of open SSE
connections is expected, RSS that rises while connections stay put is a leak
(a registry that is never cleaned up, an unbounded queue, ...).

Design decisions:

* Bounded twice: by age (``window_seconds``, relative to the newest sample) so
  the fit reflects current behaviour, and by count (``max_samples``) so a caller
  sampling faster than planned cannot make the guard itself grow without bound.
* Least squares rather than "last minus first": a single GC pause or allocation
  burst at either end would otherwise dominate the slope.
* ``min_samples`` guards against a verdict from a handful of points right after
  start-up, when RSS legitimately climbs while imports and caches warm up.
* Time must not go backwards (use :func:`time.monotonic`); out-of-order samples
  would silently break age-based pruning, so they raise.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import NamedTuple

__all__ = [
    "DEFAULT_MAX_SAMPLES",
    "DEFAULT_MIN_SAMPLES",
    "DEFAULT_SLOPE_THRESHOLD_BYTES_PER_S",
    "DEFAULT_STEADY_CONNECTIONS_TOLERANCE",
    "DEFAULT_TREND_WINDOW_SECONDS",
    "RssTrend",
    "TrendReport",
]

DEFAULT_TREND_WINDOW_SECONDS = 600.0
DEFAULT_MIN_SAMPLES = 12
DEFAULT_SLOPE_THRESHOLD_BYTES_PER_S = 1024.0
DEFAULT_STEADY_CONNECTIONS_TOLERANCE = 0.05
DEFAULT_MAX_SAMPLES = 720

_MIN_STEADY_CONNECTIONS_SLACK = 1
"""Connection counts may always vary by one: with a handful of clients, a
relative tolerance would round down to zero and one reconnect would hide a leak."""


class _Sample(NamedTuple):
    t: float
    rss_bytes: int
    connections: int


@dataclass(frozen=True)
class TrendReport:
    """A snapshot of the RSS trend over the current window."""

    samples: int
    window_seconds: float
    slope_bytes_per_s: float
    connections_steady: bool
    leak_suspected: bool

    def as_dict(self) -> dict[str, int | float | bool]:
        """Plain JSON-serialisable form, for a diagnostics endpoint or a log line."""
        return {
            "samples": self.samples,
            "window_seconds": self.window_seconds,
            "slope_bytes_per_s": self.slope_bytes_per_s,
            "connections_steady": self.connections_steady,
            "leak_suspected": self.leak_suspected,
        }


class RssTrend:
    """Rolling window of RSS samples with a least-squares growth estimate."""

    def __init__(
        self,
        window_seconds: float = DEFAULT_TREND_WINDOW_SECONDS,
        min_samples: int = DEFAULT_MIN_SAMPLES,
        slope_threshold_bytes_per_s: float = DEFAULT_SLOPE_THRESHOLD_BYTES_PER_S,
        steady_connections_tolerance: float = DEFAULT_STEADY_CONNECTIONS_TOLERANCE,
        max_samples: int = DEFAULT_MAX_SAMPLES,
    ) -> None:
        # "not (valid)" so NaN is rejected too.
        if not (window_seconds > 0):
            raise ValueError(f"window_seconds must be > 0, got {window_seconds!r}")
        if min_samples < 2:
            raise ValueError(f"min_samples must be >= 2 to fit a slope, got {min_samples!r}")
        if max_samples < min_samples:
            # Otherwise the deque could never hold enough samples to suspect anything.
            raise ValueError(
                f"max_samples ({max_samples!r}) must be >= min_samples ({min_samples!r})"
            )
        if not (slope_threshold_bytes_per_s >= 0):
            raise ValueError(
                f"slope_threshold_bytes_per_s must be >= 0, got {slope_threshold_bytes_per_s!r}"
            )
        if not (steady_connections_tolerance >= 0):
            raise ValueError(
                f"steady_connections_tolerance must be >= 0, got {steady_connections_tolerance!r}"
            )
        self._window_seconds = float(window_seconds)
        self._min_samples = min_samples
        self._slope_threshold = float(slope_threshold_bytes_per_s)
        self._tolerance = float(steady_connections_tolerance)
        self._samples: deque[_Sample] = deque(maxlen=max_samples)

    def add(self, t: float, rss_bytes: int, connections: int) -> None:
        """Record one sample taken at monotonic time ``t`` (seconds)."""
        if self._samples and t < self._samples[-1].t:
            raise ValueError(f"sample time went backwards: {t!r} < {self._samples[-1].t!r}")
        # deque(maxlen=...) drops the oldest sample itself when full.
        self._samples.append(_Sample(t, rss_bytes, connections))
        oldest_allowed = t - self._window_seconds
        while self._samples[0].t < oldest_allowed:
            self._samples.popleft()

    def report(self) -> TrendReport:
        """Summarise the samples currently in the window."""
        count = len(self._samples)
        slope = self._slope()
        steady = self._connections_steady()
        return TrendReport(
            samples=count,
            window_seconds=self._window_seconds,
            slope_bytes_per_s=slope,
            connections_steady=steady,
            leak_suspected=(
                count >= self._min_samples and steady and slope > self._slope_threshold
            ),
        )

    def _slope(self) -> float:
        """Ordinary least-squares slope of RSS over time, in bytes per second."""
        count = len(self._samples)
        if count < 2:
            return 0.0
        # Centre on the means: monotonic timestamps and RSS in bytes are both large,
        # and the uncentred formula loses precision subtracting big products.
        mean_t = sum(s.t for s in self._samples) / count
        mean_rss = sum(s.rss_bytes for s in self._samples) / count
        covariance = 0.0
        variance = 0.0
        for sample in self._samples:
            dt = sample.t - mean_t
            covariance += dt * (sample.rss_bytes - mean_rss)
            variance += dt * dt
        if variance == 0.0:
            return 0.0
        return covariance / variance

    def _connections_steady(self) -> bool:
        # No samples means no evidence of a steady load; report False rather than
        # a vacuous True that would read as a finding.
        if not self._samples:
            return False
        highest = max(s.connections for s in self._samples)
        lowest = min(s.connections for s in self._samples)
        allowed = max(_MIN_STEADY_CONNECTIONS_SLACK, self._tolerance * highest)
        return highest - lowest <= allowed
