"""A health score from 0 to 100 for ``/health``: how comfortably this worker can take load.

The score is a pure function of the memory level and the percentage of the
limit in use, so a load balancer or dashboard can weight workers without
knowing the thresholds:

* ``normal``: from 100 (no memory in use) down to 50 at the warning line;
* ``warning``: from 50 at the warning line down to 10 at the critical line;
* ``critical``: 10. The worker still serves its open streams, so it is alive,
  but it refuses new ones.

Design decisions:

* The level decides the band and the percentage the position inside it, so the
  score never contradicts the level: inside the hysteresis band (level still
  ``critical`` while the reading is already a little below the line) the score
  stays at the level's value instead of jumping back up with every sample.
* Integers: a score is for ranking and alert rules, and decimals would only make
  it flicker in a dashboard.
"""

from __future__ import annotations

from app.memory.levels import MemoryLevel

__all__ = ["CRITICAL_SCORE", "MAX_SCORE", "WARNING_SCORE", "health_score"]

MAX_SCORE = 100
WARNING_SCORE = 50
"""The score at the warning line, the boundary between the first two bands."""
CRITICAL_SCORE = 10


def _between(high: int, low: int, fraction: float) -> int:
    # "not >" so a NaN fraction lands on a bound instead of raising in round().
    if not fraction > 0:
        return high
    if fraction >= 1:
        return low
    return round(high - (high - low) * fraction)


def health_score(
    level: MemoryLevel, percent: float, warning_percent: float, critical_percent: float
) -> int:
    """Score for ``level`` at ``percent`` of the limit, given the two thresholds."""
    if level is MemoryLevel.CRITICAL:
        return CRITICAL_SCORE
    if level is MemoryLevel.WARNING:
        span = critical_percent - warning_percent
        return _between(WARNING_SCORE, CRITICAL_SCORE, (percent - warning_percent) / span)
    return _between(MAX_SCORE, WARNING_SCORE, percent / warning_percent)
