"""Leak suspicion from the RSS trend against the connection count."""

from __future__ import annotations

import pytest

from app.memory.trend import RssTrend, TrendReport

MIB = 1024 * 1024
BASE_RSS = 200 * MIB
# Large, realistic monotonic-clock start so precision problems would show up.
T0 = 123_456.0


def _feed(
    trend: RssTrend,
    count: int,
    *,
    interval: float = 10.0,
    rss_growth_per_s: float = 0.0,
    connections: int = 100,
    connections_growth_per_sample: int = 0,
) -> None:
    for i in range(count):
        t = T0 + i * interval
        rss = BASE_RSS + int(rss_growth_per_s * i * interval)
        trend.add(t, rss, connections + i * connections_growth_per_sample)


def test_steady_growth_with_steady_connections_is_suspected() -> None:
    trend = RssTrend()
    _feed(trend, 30, rss_growth_per_s=5000.0)

    report = trend.report()

    assert report.samples == 30
    assert report.slope_bytes_per_s == pytest.approx(5000.0, rel=0.01)
    assert report.connections_steady is True
    assert report.leak_suspected is True


def test_slope_is_least_squares_not_endpoints() -> None:
    trend = RssTrend(min_samples=2)
    # Endpoints alone would give (100 - 0) / 3 = 33.3. Least squares:
    # mean t = 1.5, mean rss = 47.5, sum(dt * drss) = 135, sum(dt**2) = 5 -> 27.
    for t, rss in [(0.0, 0), (1.0, 60), (2.0, 30), (3.0, 100)]:
        trend.add(t, rss, 1)

    assert trend.report().slope_bytes_per_s == pytest.approx(27.0, rel=0.01)


def test_flat_rss_is_not_suspected() -> None:
    trend = RssTrend()
    _feed(trend, 30)

    report = trend.report()

    assert report.slope_bytes_per_s == pytest.approx(0.0, abs=1e-6)
    assert report.connections_steady is True
    assert report.leak_suspected is False


def test_growth_below_threshold_is_not_suspected() -> None:
    trend = RssTrend(slope_threshold_bytes_per_s=1024)
    _feed(trend, 30, rss_growth_per_s=1000.0)

    report = trend.report()

    assert report.slope_bytes_per_s == pytest.approx(1000.0, rel=0.01)
    assert report.leak_suspected is False


def test_growth_while_connections_grow_is_not_suspected() -> None:
    trend = RssTrend()
    _feed(trend, 30, rss_growth_per_s=5000.0, connections=100, connections_growth_per_sample=5)

    report = trend.report()

    assert report.slope_bytes_per_s == pytest.approx(5000.0, rel=0.01)
    assert report.connections_steady is False
    assert report.leak_suspected is False


def test_connection_jitter_within_tolerance_counts_as_steady() -> None:
    trend = RssTrend(steady_connections_tolerance=0.05)
    for i in range(20):
        # 100..105 varies by 5, exactly 5 % of the maximum of 105 is 5.25.
        trend.add(T0 + i, BASE_RSS + i * 10_000, 100 + i % 6)

    assert trend.report().connections_steady is True
    assert trend.report().leak_suspected is True


def test_small_connection_counts_may_vary_by_one() -> None:
    trend = RssTrend()
    for i in range(20):
        trend.add(T0 + i, BASE_RSS, 2 + i % 2)
    assert trend.report().connections_steady is True

    trend.add(T0 + 20, BASE_RSS, 4)
    assert trend.report().connections_steady is False


def test_too_few_samples_is_not_suspected() -> None:
    trend = RssTrend(min_samples=12)
    _feed(trend, 11, rss_growth_per_s=50_000.0)

    report = trend.report()
    assert report.samples == 11
    assert report.slope_bytes_per_s == pytest.approx(50_000.0, rel=0.01)
    assert report.leak_suspected is False

    trend.add(T0 + 11 * 10.0, BASE_RSS + int(50_000.0 * 110), 100)
    assert trend.report().leak_suspected is True


def test_empty_and_single_sample_report_zero_slope() -> None:
    trend = RssTrend()
    assert trend.report() == TrendReport(
        samples=0,
        window_seconds=600.0,
        slope_bytes_per_s=0.0,
        connections_steady=False,
        leak_suspected=False,
    )

    trend.add(T0, BASE_RSS, 10)
    report = trend.report()
    assert report.samples == 1
    assert report.slope_bytes_per_s == 0.0


def test_zero_time_spread_reports_zero_slope() -> None:
    trend = RssTrend(min_samples=2)
    trend.add(T0, BASE_RSS, 10)
    trend.add(T0, BASE_RSS + MIB, 10)

    report = trend.report()
    assert report.samples == 2
    assert report.slope_bytes_per_s == 0.0
    assert report.leak_suspected is False


def test_window_drops_samples_older_than_window() -> None:
    trend = RssTrend(window_seconds=100, min_samples=2)
    # A steep rise first, then flat: once the rise ages out the slope must be 0.
    for i in range(10):
        trend.add(T0 + i * 10, BASE_RSS + i * MIB, 10)
    for i in range(10, 30):
        trend.add(T0 + i * 10, BASE_RSS + 10 * MIB, 10)

    report = trend.report()

    # Samples at t in [newest - 100, newest]: 11 of them at a 10 s interval.
    assert report.samples == 11
    assert report.slope_bytes_per_s == pytest.approx(0.0, abs=1e-6)
    assert report.leak_suspected is False


def test_sample_exactly_window_old_is_kept() -> None:
    trend = RssTrend(window_seconds=10, min_samples=2)
    trend.add(0.0, BASE_RSS, 1)
    trend.add(10.0, BASE_RSS, 1)
    assert trend.report().samples == 2

    trend.add(10.5, BASE_RSS, 1)
    assert trend.report().samples == 2


def test_max_samples_bounds_the_buffer_and_drops_oldest() -> None:
    trend = RssTrend(window_seconds=1e9, min_samples=2, max_samples=5)
    # The first sample is an outlier; if it were kept the slope would be negative.
    trend.add(0.0, BASE_RSS + 100 * MIB, 1)
    for i in range(1, 100):
        trend.add(float(i), BASE_RSS, 1)

    report = trend.report()

    assert report.samples == 5
    assert report.slope_bytes_per_s == pytest.approx(0.0, abs=1e-6)


def test_time_going_backwards_raises() -> None:
    trend = RssTrend()
    trend.add(T0, BASE_RSS, 1)

    with pytest.raises(ValueError, match="backwards"):
        trend.add(T0 - 1, BASE_RSS, 1)


def test_report_as_dict() -> None:
    trend = RssTrend(window_seconds=60)
    _feed(trend, 3, interval=1.0, rss_growth_per_s=2048.0)

    assert trend.report().as_dict() == {
        "samples": 3,
        "window_seconds": 60.0,
        "slope_bytes_per_s": pytest.approx(2048.0, rel=0.01),
        "connections_steady": True,
        "leak_suspected": False,
    }


@pytest.mark.parametrize(
    "kwargs",
    [
        {"window_seconds": 0},
        {"window_seconds": float("nan")},
        {"min_samples": 1},
        {"min_samples": 12, "max_samples": 11},
        {"slope_threshold_bytes_per_s": -1},
        {"steady_connections_tolerance": -0.1},
    ],
)
def test_invalid_parameters_raise(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        RssTrend(**kwargs)  # type: ignore[arg-type]
