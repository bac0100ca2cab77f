"""The health score: bands by level, position by percentage, never against the level."""

from __future__ import annotations

import math

import pytest

from app.memory.health import CRITICAL_SCORE, MAX_SCORE, WARNING_SCORE, health_score
from app.memory.levels import MemoryLevel

NORMAL, WARNING, CRITICAL = MemoryLevel.NORMAL, MemoryLevel.WARNING, MemoryLevel.CRITICAL


@pytest.mark.parametrize(
    ("level", "percent", "expected"),
    [
        (NORMAL, 0.0, MAX_SCORE),
        (NORMAL, 37.5, 75),
        (NORMAL, 74.9, 50),
        (WARNING, 75.0, WARNING_SCORE),
        (WARNING, 82.5, 30),
        (WARNING, 89.9, 10),
        (CRITICAL, 90.0, CRITICAL_SCORE),
        (CRITICAL, 150.0, CRITICAL_SCORE),
        # Inside the hysteresis bands the level decides, not the reading:
        (WARNING, 72.0, WARNING_SCORE),
        (CRITICAL, 86.0, CRITICAL_SCORE),
        (NORMAL, math.nan, MAX_SCORE),
    ],
)
def test_score(level: MemoryLevel, percent: float, expected: int) -> None:
    assert health_score(level, percent, 75.0, 90.0) == expected


def test_score_never_rises_with_memory() -> None:
    readings = [(NORMAL, p / 10) for p in range(0, 750)]
    readings += [(WARNING, p / 10) for p in range(750, 900)]
    readings += [(CRITICAL, p / 10) for p in range(900, 1000)]
    scores = [health_score(level, percent, 75.0, 90.0) for level, percent in readings]
    assert scores == sorted(scores, reverse=True)
    assert scores[0] == MAX_SCORE and scores[-1] == CRITICAL_SCORE
