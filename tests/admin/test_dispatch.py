"""Adding up per-worker answers, the reconnect jitter, the drain state and the token
fingerprint: the pure parts of the operator actions."""

from __future__ import annotations

from app.admin.audit import token_fingerprint
from app.admin.dispatch import sum_results
from app.admin.drain import DrainState, jittered_retry_ms
from tests.support.clock import FakeClock


def test_totals_sum_numbers_recursively_and_count_true_flags() -> None:
    one = {"freed": {"cache": 10, "history": 5}, "rss": 100, "ok": True, "level": "warning"}
    two = {"freed": {"cache": 1, "runs": 2}, "rss": 50, "ok": False, "failed": ["gc"]}
    assert sum_results([one, two]) == {
        "freed": {"cache": 11, "history": 5, "runs": 2},
        "rss": 150,
        "ok": 1,
    }
    assert sum_results([]) == {}


def test_reconnects_spread_over_one_window_above_retry_ms() -> None:
    assert jittered_retry_ms(400, lambda: 0.0) == 400
    assert jittered_retry_ms(400, lambda: 0.999) == 799
    assert jittered_retry_ms(400, lambda: 0.5) == 600


def test_drain_refuses_until_stopped_with_the_end_of_the_window_as_retry_after() -> None:
    clock = FakeClock()
    drain = DrainState(clock)
    assert drain.refusal() is None
    assert drain.start(retry_ms=2500) is True
    assert drain.start(retry_ms=2500) is False  # renewing is not starting
    clock.advance(3)
    refusal = drain.refusal()
    assert refusal is not None and refusal.status_code == 503 and refusal.retry_after == 5
    assert drain.as_dict() == {"draining": True, "for_s": 3.0, "retry_after": 5, "refused": 1}
    assert drain.stop() is True and drain.stop() is False
    assert drain.refusal() is None


def test_the_fingerprint_names_the_token_without_containing_it() -> None:
    token = "a-long-admin-token-0123456789"
    fingerprint = token_fingerprint(token)
    assert fingerprint.startswith("token:") and len(fingerprint) == len("token:") + 12
    assert fingerprint == token_fingerprint(token)
    assert fingerprint != token_fingerprint(token + "x")
    assert token[:6] not in fingerprint
