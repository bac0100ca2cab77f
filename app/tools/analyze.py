"""``memory_report --analyze``: which bound is closest to its limit, and what to change.

A pure function of one ``/api/admin/metrics`` document (the answering worker's
figures; every worker runs with the same settings), so tests check the exact
advice without a server.

Design decisions:

* Every bound is measured as used / limit, and the list is printed closest
  first, so the first line answers "what runs out next".
* Advice follows from the memory level, not from one bound alone. Over the
  warning line, the structure holding the most bytes is the one to shrink, to
  a size that would bring RSS back under the line with
  :data:`HEADROOM_FRACTION` to spare; a count bound is never raised then.
  Under the line, a bound at :data:`FULL_FRACTION` or more of its limit is
  worth raising by :data:`GROWTH_FACTOR`, but only by what the headroom under
  the warning line can pay for (byte bounds; count bounds are raised only
  while RSS is below half the warning line, since their cost per item is not
  known here).
* Values are suggested in the unit the setting takes (MB for ``*_MB``), rounded
  to something a person would type.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from app.memory.units import format_bytes

__all__ = ["FULL_FRACTION", "GROWTH_FACTOR", "HEADROOM_FRACTION", "Bound", "analyze", "bounds"]

FULL_FRACTION = 0.9
GROWTH_FACTOR = 1.5
HEADROOM_FRACTION = 0.1
"""Shrinking aims this share of the warning line below it, so one cleanup is not undone
by the next minute of traffic."""

_MB = 1024 * 1024
_PERCENT = 100.0


@dataclass(frozen=True, slots=True)
class Bound:
    name: str
    setting: str
    used: int
    limit: int
    in_bytes: bool

    @property
    def fraction(self) -> float:
        return self.used / self.limit if self.limit else 0.0

    def shown(self, value: int) -> str:
        return format_bytes(value) if self.in_bytes else str(value)


def bounds(metrics: Mapping[str, Any]) -> list[Bound]:
    """Every bound the document lets us measure, closest to its limit first."""
    sse, cache, responses = metrics["sse"], metrics["cache"], metrics["responses"]
    limits = metrics.get("limits", {})
    found = [
        Bound("response cache bytes", "CACHE_MAX_MB", cache["bytes"], cache["max_bytes"], True),
        Bound("response cache items", "CACHE_MAX_ITEMS", cache["items"], cache["max_items"], False),
        Bound(
            "stream queue bytes",
            "SSE_QUEUE_MAX_MB",
            sse["queued_bytes"],
            sse["queued_bytes_limit"],
            True,
        ),
        Bound(
            "response runs", "RESPONSE_MAX_RUNS", responses["runs"], responses["max_runs"], False
        ),
    ]
    history = sse.get("broker", {}).get("history")
    if history:
        found.append(
            Bound(
                "history bytes", "SSE_HISTORY_MAX_MB", history["bytes"], history["max_bytes"], True
            )
        )
        if "sse_history_max_channels" in limits:
            found.append(
                Bound(
                    "history channels",
                    "SSE_HISTORY_MAX_CHANNELS",
                    history["channels"],
                    limits["sse_history_max_channels"],
                    False,
                )
            )
    if "sse_max_connections" in limits:
        found.append(
            Bound(
                "open streams",
                "SSE_MAX_CONNECTIONS",
                sse["connections"],
                limits["sse_max_connections"],
                False,
            )
        )
    conversations = responses.get("conversations")
    if conversations and "max_conversations" in limits:
        found.append(
            Bound(
                "conversations",
                "MAX_CONVERSATIONS",
                conversations["conversations"],
                limits["max_conversations"],
                False,
            )
        )
    return sorted(found, key=lambda bound: bound.fraction, reverse=True)


def _setting_value(bound: Bound, value: int) -> str:
    if bound.in_bytes:
        megabytes = value / _MB
        return f"{megabytes:.0f}" if megabytes >= 10 else f"{max(0.1, megabytes):.1f}"
    return str(value)


def _shrink(memory: Mapping[str, Any], candidates: Sequence[Bound]) -> list[str]:
    warning = memory["thresholds"]["warning_bytes"]
    over = memory["rss_bytes"] - int(warning * (1 - HEADROOM_FRACTION))
    biggest = max((b for b in candidates if b.in_bytes), key=lambda b: b.used, default=None)
    lines = [
        f"RSS {format_bytes(memory['rss_bytes'])} is over the warning line"
        f" {format_bytes(warning)} (level {memory['level']}):"
        f" {format_bytes(max(0, over))} to give back."
    ]
    if biggest is None or biggest.used == 0:
        lines.append(
            "  None of Herald's bounded structures holds much: the memory is elsewhere"
            " (open streams, the interpreter). Raise MEMORY_LIMIT_MB if the container"
            " allows it, or run more instances."
        )
        return lines
    target = max(biggest.used - over, biggest.used // 4, 1)
    lines.append(
        f"  The largest structure is the {biggest.name}, {format_bytes(biggest.used)}:"
        f" set {biggest.setting}={_setting_value(biggest, target)}"
        f" (now {_setting_value(biggest, biggest.limit)})."
    )
    lines.append("  Or raise MEMORY_LIMIT_MB, if the container has room.")
    return lines


def _grow(memory: Mapping[str, Any], full: Sequence[Bound]) -> list[str]:
    warning = memory["thresholds"]["warning_bytes"]
    headroom = max(0, warning - memory["rss_bytes"])
    lines = []
    for bound in full:
        if bound.in_bytes:
            extra = min(int(bound.limit * (GROWTH_FACTOR - 1)), headroom // 2)
            if extra <= 0:
                lines.append(f"{bound.name} is full, but there is no memory headroom to grow it.")
                continue
            headroom -= extra
            value = _setting_value(bound, bound.limit + extra)
            lines.append(
                f"{bound.name} is {bound.fraction * _PERCENT:.0f} % full:"
                f" set {bound.setting}={value} (now {_setting_value(bound, bound.limit)});"
                f" {format_bytes(warning - memory['rss_bytes'])} of headroom under the warning"
                " line."
            )
        elif memory["rss_bytes"] < warning / 2:
            raised = math.ceil(bound.limit * GROWTH_FACTOR)
            lines.append(
                f"{bound.name} is {bound.fraction * _PERCENT:.0f} % full:"
                f" set {bound.setting}={raised} (now {bound.limit}); RSS is under half the"
                " warning line."
            )
        else:
            lines.append(
                f"{bound.name} is {bound.fraction * _PERCENT:.0f} % full, and RSS is past half"
                f" the warning line: leave {bound.setting} as it is, or add memory first."
            )
    return lines


def analyze(metrics: Mapping[str, Any]) -> str:
    """The ``--analyze`` text: bounds closest first, then what to change."""
    memory = metrics["memory"]
    found = bounds(metrics)
    lines = [
        f"Memory: RSS {format_bytes(memory['rss_bytes'])} is"
        f" {memory['rss_bytes'] / memory['thresholds']['warning_bytes'] * _PERCENT:.1f} % of the"
        f" warning line {format_bytes(memory['thresholds']['warning_bytes'])}"
        f" (MEMORY_LIMIT_MB, MEMORY_WARNING_PERCENT), level {memory['level']}",
        "Bounds, closest to their limit first:",
        *(
            f"  {b.fraction * _PERCENT:5.1f} %  {b.name:<22} {b.shown(b.used)} of"
            f" {b.shown(b.limit)}  ({b.setting})"
            for b in found
        ),
        "",
        "Recommendations:",
    ]
    advice: list[str] = []
    if memory["rss_bytes"] > memory["thresholds"]["warning_bytes"]:
        advice += _shrink(memory, found)
    else:
        advice += _grow(memory, [b for b in found if b.fraction >= FULL_FRACTION])
    sse = metrics["sse"]
    if sse["dropped"] or sse["overflow_disconnects"]:
        advice.append(
            f"Slow consumers: {sse['dropped']} events dropped, {sse['overflow_disconnects']}"
            " streams closed on a full queue. SSE_QUEUE_SIZE (per stream) and SSE_QUEUE_MAX_MB"
            " (all streams) bound what they may hold; raise them only if memory allows."
        )
    if memory["trend"]["leak_suspected"]:
        advice.append(
            "RSS keeps rising with steady connections (leak suspected): compare two"
            " reports a few minutes apart before changing any bound."
        )
    if not advice:
        closest = found[0] if found else None
        where = (
            f" the closest is the {closest.name} at {closest.fraction * _PERCENT:.0f} %"
            if closest
            else ""
        )
        advice.append(f"Nothing to change: no bound is near its limit;{where}.")
    lines += [f"  {line}" if not line.startswith("  ") else line for line in advice]
    return "\n".join(lines)
