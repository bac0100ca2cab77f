"""The publish-rate tool measures real servers in one run: a short smoke run of it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from load_tests import publish_rate
from tests.support.redis_server import REDIS_SERVER

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed"),
]


def test_every_target_is_measured_in_alternating_rounds_and_compared() -> None:
    names = ("bare", "herald-memory", "herald-redis", "batch-memory")
    results = publish_rate.compare(names, rounds=2, seconds=0.3, batch=100, pin=False)
    print(publish_rate.render(results))
    for name in names:
        rate = results[name]
        assert len(rate.rounds) == 2
        assert rate.refused == 0, name  # every publish answered 202: real publishes counted
        assert rate.per_second > 0
        assert len(rate.per_cpu_rounds) == 2 and rate.per_cpu_second > 0
    assert results["batch-memory"].events_per_request == 100
    ratios = publish_rate.ratios(results)
    assert set(ratios) == {"herald-memory / bare", "herald-redis / herald-memory"}
    assert all(value > 0 for value in ratios.values())


def test_keyed_requests_each_carry_a_key_of_their_own() -> None:
    target = publish_rate.make_target(
        "herald-memory-keyed", repo=Path("."), redis_url=None, batch=1
    )
    requests = publish_rate._Requests(target, "tag")
    sent = requests.take(3) + requests.take(2)
    keys = [line for line in sent.split(b"\r\n") if line.startswith(b"Idempotency-Key:")]
    assert keys == [b"Idempotency-Key: tag-%d" % n for n in range(5)]
    assert sent.count(target.body) == 5


def test_a_ratio_is_the_median_of_same_round_ratios() -> None:
    # Round 3 ran on a slow machine for both servers; the medians of the two columns come
    # from different rounds (20 / 20 = 1.0), the pairs do not.
    herald = publish_rate.PublishRate("herald-memory", 1, rounds=[10.0, 20.0, 30.0])
    bare = publish_rate.PublishRate("bare", 1, rounds=[20.0, 20.0, 100.0])
    results = {"bare": bare, "herald-memory": herald}
    assert publish_rate.round_ratios(herald, bare) == [0.5, 1.0, 0.3]
    assert publish_rate.ratios(results) == {"herald-memory / bare": 0.5}
    assert "herald-memory / bare: 0.50 (median of the rounds' 0.50, 1.00, 0.30)" in (
        publish_rate.render(results)
    )


def test_before_serves_an_earlier_commit_beside_this_checkout(tmp_path: Path) -> None:
    report_path = tmp_path / "rates.json"
    argv = ["--only", "bare,herald-memory", "--before", "HEAD", "--rounds", "2"]
    argv += ["--seconds", "0.3", "--no-pin", "--json", str(report_path)]
    assert publish_rate.main(argv) == 0
    report = json.loads(report_path.read_text())
    rates = {result["target"]: result for result in report["results"]}
    assert list(rates) == ["bare", "herald-memory", publish_rate.BEFORE]
    before = rates[publish_rate.BEFORE]
    assert before["refused"] == 0 and before["events_per_second"] > 0  # a real Herald answered
    assert set(report["ratios"]) == {
        "herald-memory / bare",
        f"{publish_rate.BEFORE} / bare",
        f"herald-memory / {publish_rate.BEFORE}",
    }
