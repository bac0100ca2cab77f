"""Memory level transitions, including hysteresis on the way down."""

from __future__ import annotations

import pytest

from app.memory.levels import LevelTracker, MemoryLevel


def test_starts_normal_and_stays_normal_below_warning() -> None:
    tracker = LevelTracker()

    assert tracker.level is MemoryLevel.NORMAL
    assert tracker.update(10) is None
    assert tracker.update(74.9) is None
    assert tracker.level is MemoryLevel.NORMAL


def test_rising_through_levels_reports_each_change_once() -> None:
    tracker = LevelTracker(warning_percent=75, critical_percent=90)

    changes = []
    levels = []
    for percent in [75, 80, 90, 99]:
        changes.append(tracker.update(percent))
        levels.append(tracker.level)

    assert changes == [MemoryLevel.WARNING, None, MemoryLevel.CRITICAL, None]
    assert levels == [
        MemoryLevel.WARNING,
        MemoryLevel.WARNING,
        MemoryLevel.CRITICAL,
        MemoryLevel.CRITICAL,
    ]


def test_rising_can_jump_straight_to_critical() -> None:
    tracker = LevelTracker()

    assert tracker.update(95) is MemoryLevel.CRITICAL


def test_no_flap_when_oscillating_around_warning_threshold() -> None:
    tracker = LevelTracker(warning_percent=75, critical_percent=90, hysteresis_percent=5)
    assert tracker.update(75.1) is MemoryLevel.WARNING

    for _ in range(5):
        assert tracker.update(74.9) is None
        assert tracker.update(75.1) is None
    # Still inside the band: 70 is not below 75 - 5.
    assert tracker.update(70) is None
    assert tracker.level is MemoryLevel.WARNING

    assert tracker.update(69.9) is MemoryLevel.NORMAL


def test_no_flap_when_oscillating_around_critical_threshold() -> None:
    tracker = LevelTracker(warning_percent=75, critical_percent=90, hysteresis_percent=5)
    assert tracker.update(90.1) is MemoryLevel.CRITICAL

    for _ in range(5):
        assert tracker.update(89.9) is None
        assert tracker.update(90.1) is None
    assert tracker.update(85) is None
    assert tracker.level is MemoryLevel.CRITICAL


def test_critical_to_warning_to_normal() -> None:
    tracker = LevelTracker(warning_percent=75, critical_percent=90, hysteresis_percent=5)
    tracker.update(95)

    assert tracker.update(84.9) is MemoryLevel.WARNING
    # Below the warning threshold but inside its band: stays at warning.
    assert tracker.update(72) is None
    assert tracker.level is MemoryLevel.WARNING
    assert tracker.update(60) is MemoryLevel.NORMAL


def test_critical_dropping_into_warning_band_goes_to_warning_not_normal() -> None:
    tracker = LevelTracker(warning_percent=75, critical_percent=90, hysteresis_percent=5)
    tracker.update(95)

    assert tracker.update(72) is MemoryLevel.WARNING


def test_straight_critical_to_normal_drop() -> None:
    tracker = LevelTracker(warning_percent=75, critical_percent=90, hysteresis_percent=5)
    tracker.update(95)

    assert tracker.update(50) is MemoryLevel.NORMAL
    assert tracker.level is MemoryLevel.NORMAL


def test_warning_back_to_critical_is_immediate() -> None:
    tracker = LevelTracker()
    tracker.update(95)
    tracker.update(80)

    assert tracker.update(90) is MemoryLevel.CRITICAL


def test_zero_hysteresis_leaves_as_soon_as_below_threshold() -> None:
    tracker = LevelTracker(warning_percent=75, critical_percent=90, hysteresis_percent=0)
    tracker.update(90)

    assert tracker.update(89.9) is MemoryLevel.WARNING
    assert tracker.update(74.9) is MemoryLevel.NORMAL


def test_nan_reading_changes_nothing() -> None:
    tracker = LevelTracker()
    tracker.update(80)

    assert tracker.update(float("nan")) is None
    assert tracker.level is MemoryLevel.WARNING


def test_level_values_are_strings() -> None:
    assert [level.value for level in MemoryLevel] == ["normal", "warning", "critical"]
    # StrEnum: the level can go straight into a log line or an SSE payload.
    assert str(MemoryLevel.CRITICAL) == "critical"
    assert f"{MemoryLevel.WARNING}" == "warning"


@pytest.mark.parametrize(
    ("warning", "critical", "hysteresis"),
    [
        (0, 90, 0),  # warning must be > 0
        (-5, 90, 0),
        (90, 90, 5),  # warning must be < critical
        (95, 90, 5),
        (75, 100.1, 5),  # critical must be <= 100
        (75, 90, -1),  # hysteresis must be >= 0
        (75, 90, 75),  # hysteresis must be < warning
        (float("nan"), 90, 5),
        (75, 90, float("nan")),
    ],
)
def test_invalid_thresholds_raise(warning: float, critical: float, hysteresis: float) -> None:
    with pytest.raises(ValueError):
        LevelTracker(
            warning_percent=warning, critical_percent=critical, hysteresis_percent=hysteresis
        )


def test_critical_of_exactly_100_is_allowed() -> None:
    tracker = LevelTracker(warning_percent=80, critical_percent=100, hysteresis_percent=10)

    assert tracker.update(100) is MemoryLevel.CRITICAL
