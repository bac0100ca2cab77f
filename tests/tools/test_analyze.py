"""``--analyze``: the advice as exact text for documents that call for each kind of it."""

from __future__ import annotations

from typing import Any

from app.tools.analyze import analyze, bounds

MB = 1024 * 1024


def document(*, rss: int, cache_bytes: int, history_bytes: int, runs: int = 3) -> dict[str, Any]:
    return {
        "memory": {
            "rss_bytes": rss,
            "level": "normal",
            "thresholds": {"warning_bytes": 300 * MB, "critical_bytes": 360 * MB},
            "trend": {"leak_suspected": False},
        },
        "cache": {"bytes": cache_bytes, "max_bytes": 10 * MB, "items": 2, "max_items": 50},
        "sse": {
            "connections": 10,
            "queued_bytes": 0,
            "queued_bytes_limit": 64 * MB,
            "dropped": 0,
            "overflow_disconnects": 0,
            "broker": {"history": {"bytes": history_bytes, "max_bytes": 32 * MB, "channels": 2}},
        },
        "responses": {"runs": runs, "max_runs": 200, "conversations": {"conversations": 1}},
        "limits": {
            "sse_max_connections": 100,
            "sse_history_max_channels": 10_000,
            "max_conversations": 1000,
        },
    }


def test_bounds_come_closest_first() -> None:
    found = bounds(document(rss=100 * MB, cache_bytes=5 * MB, history_bytes=8 * MB))
    assert [(b.name, round(b.fraction, 3)) for b in found[:3]] == [
        ("response cache bytes", 0.5),
        ("history bytes", 0.25),
        ("open streams", 0.1),
    ]


def test_a_full_cache_with_headroom_is_raised_by_what_the_headroom_pays() -> None:
    text = analyze(document(rss=100 * MB, cache_bytes=int(9.5 * MB), history_bytes=MB))
    assert text.splitlines()[0] == (
        "Memory: RSS 100.0 MB is 33.3 % of the warning line 300.0 MB"
        " (MEMORY_LIMIT_MB, MEMORY_WARNING_PERCENT), level normal"
    )
    assert (
        text.splitlines()[2]
        == "   95.0 %  response cache bytes   9.5 MB of 10.0 MB  (CACHE_MAX_MB)"
    )
    assert text.endswith(
        "Recommendations:\n"
        "  response cache bytes is 95 % full: set CACHE_MAX_MB=15 (now 10);"
        " 200.0 MB of headroom under the warning line."
    )


def test_over_the_warning_line_the_largest_structure_is_shrunk() -> None:
    metrics = document(rss=320 * MB, cache_bytes=9 * MB, history_bytes=30 * MB)
    metrics["memory"]["level"] = "warning"
    text = analyze(metrics)
    # 320 MB against a target of 270 MB (10 % under the line): 50 MB to give back; the
    # history holds 30 MB, so it keeps a quarter of it.
    assert text.endswith(
        "Recommendations:\n"
        "  RSS 320.0 MB is over the warning line 300.0 MB (level warning): 50.0 MB to give back.\n"
        "  The largest structure is the history bytes, 30.0 MB: set SSE_HISTORY_MAX_MB=7.5"
        " (now 32).\n"
        "  Or raise MEMORY_LIMIT_MB, if the container has room."
    )

    calm = analyze(document(rss=100 * MB, cache_bytes=MB, history_bytes=MB))
    assert calm.endswith(
        "Recommendations:\n"
        "  Nothing to change: no bound is near its limit;"
        " the closest is the response cache bytes at 10 %."
    )
