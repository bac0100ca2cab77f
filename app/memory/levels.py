"""Memory pressure levels with hysteresis.

:class:`LevelTracker` turns a stream of "percent of the memory limit in use"
readings into ``normal`` / ``warning`` / ``critical`` and reports only the
*changes*, which is what the guard acts on (log once, start shedding, stop).

Design decisions:

* Rising is immediate: reaching a threshold is reported on the first reading,
  because late reaction to memory pressure is what gets a process OOM-killed.
* Falling needs the reading to drop ``hysteresis_percent`` below the threshold
  that was crossed. Memory use hovers; without this a reading oscillating
  around 75 % would flip warning/normal on every sample and spam logs and
  clients with shed/unshed decisions.
* A drop may skip a level (critical -> normal) when the reading is already
  below the lower band; reporting a fake intermediate step would make the guard
  do work for a state it was never in.
* A NaN reading (e.g. from a broken probe) changes nothing rather than raising:
  the tracker runs inside a long-lived background task.
"""

from __future__ import annotations

import math
from enum import StrEnum

__all__ = [
    "DEFAULT_CRITICAL_PERCENT",
    "DEFAULT_HYSTERESIS_PERCENT",
    "DEFAULT_WARNING_PERCENT",
    "LevelTracker",
    "MemoryLevel",
]

DEFAULT_WARNING_PERCENT = 75.0
DEFAULT_CRITICAL_PERCENT = 90.0
DEFAULT_HYSTERESIS_PERCENT = 5.0


class MemoryLevel(StrEnum):
    """How close the process is to its memory limit."""

    NORMAL = "normal"
    WARNING = "warning"
    CRITICAL = "critical"


class LevelTracker:
    """Track the current :class:`MemoryLevel` from percentage readings.

    Thresholds are percentages of the memory limit and must satisfy
    ``0 < warning < critical <= 100`` and ``0 <= hysteresis < warning`` (so the
    way back down to ``normal`` is above 0 % and therefore reachable).
    """

    def __init__(
        self,
        warning_percent: float = DEFAULT_WARNING_PERCENT,
        critical_percent: float = DEFAULT_CRITICAL_PERCENT,
        hysteresis_percent: float = DEFAULT_HYSTERESIS_PERCENT,
    ) -> None:
        # Written as "not (valid)" so NaN, which fails every comparison, is rejected.
        if not (0 < warning_percent < critical_percent <= 100):
            raise ValueError(
                "thresholds must satisfy 0 < warning < critical <= 100, got "
                f"warning={warning_percent!r}, critical={critical_percent!r}"
            )
        if not (0 <= hysteresis_percent < warning_percent):
            raise ValueError(
                "hysteresis must satisfy 0 <= hysteresis < warning, got "
                f"hysteresis={hysteresis_percent!r}, warning={warning_percent!r}"
            )
        self._warning = float(warning_percent)
        self._critical = float(critical_percent)
        self._hysteresis = float(hysteresis_percent)
        self._level = MemoryLevel.NORMAL

    @property
    def level(self) -> MemoryLevel:
        """The current level; starts at ``normal``."""
        return self._level

    def update(self, percent: float) -> MemoryLevel | None:
        """Feed one reading; return the new level if it changed, else ``None``."""
        if math.isnan(percent):
            return None
        new_level = self._next_level(percent)
        if new_level is self._level:
            return None
        self._level = new_level
        return new_level

    def _next_level(self, percent: float) -> MemoryLevel:
        # Rising is checked first and from any level: it is never delayed.
        if percent >= self._critical:
            return MemoryLevel.CRITICAL
        if percent >= self._warning and self._level is MemoryLevel.NORMAL:
            return MemoryLevel.WARNING

        if self._level is MemoryLevel.CRITICAL and percent >= self._critical - self._hysteresis:
            return MemoryLevel.CRITICAL
        if self._level is MemoryLevel.NORMAL:
            return MemoryLevel.NORMAL
        # Leaving critical, or already at warning: below the warning band we go
        # (straight) to normal, otherwise we are (or stay) at warning.
        if percent < self._warning - self._hysteresis:
            return MemoryLevel.NORMAL
        return MemoryLevel.WARNING
