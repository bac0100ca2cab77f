"""Work out how much memory this process may use.

The memory guard turns resident set size into a percentage, so it needs a
denominator. In order of preference:

1. ``setting``   -- an explicit operator setting (``configured_mb``). An operator
   who bothered to configure a limit knows something we cannot detect.
2. ``cgroup-v2`` -- ``memory.max`` of this process's cgroup (containers on any
   modern distribution / Kubernetes node).
3. ``cgroup-v1`` -- ``memory/memory.limit_in_bytes`` (older hosts).
4. ``default``   -- :data:`DEFAULT_MEMORY_LIMIT_BYTES`, a conservative guess so
   the guard still has something to compare against on a laptop.

Design decisions:

* Detection never raises. A missing, unreadable or garbled cgroup file means
  "no limit found there" and we fall through to the next source; a memory guard
  that crashes start-up on an odd host would do more harm than good.
* We try the process's own cgroup directory first and the mount root second
  (:mod:`app.memory.cgroup` says why).
* "Unlimited" is reported as ``max`` by v2 and as a huge page-rounded number
  (e.g. ``9223372036854771712``) by v1; both mean "keep looking".
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from app.memory.cgroup import (
    DEFAULT_CGROUP_ROOT,
    DEFAULT_PROC_SELF_CGROUP,
    V1_MEMORY_CONTROLLER,
    cgroup_dirs,
    own_cgroup_paths,
    read_text,
)

__all__ = [
    "CGROUP_UNLIMITED_THRESHOLD",
    "DEFAULT_CGROUP_ROOT",
    "DEFAULT_MEMORY_LIMIT_BYTES",
    "DEFAULT_PROC_SELF_CGROUP",
    "MemoryLimit",
    "detect_memory_limit",
    "parse_cgroup_value",
]

DEFAULT_MEMORY_LIMIT_BYTES = 512 * 1024 * 1024
"""Fallback limit when neither a setting nor a cgroup limit is available."""


CGROUP_UNLIMITED_THRESHOLD = 2**60
"""cgroup v1 reports "no limit" as ``PAGE_COUNTER_MAX`` rounded to a page size
(``9223372036854771712`` on x86-64); the exact number varies by page size and
kernel, so anything this large (1 EiB) is treated as unlimited."""

_BYTES_PER_MB = 1024 * 1024
_V2_LIMIT_FILE = "memory.max"
_V1_LIMIT_FILE = "memory.limit_in_bytes"


@dataclass(frozen=True)
class MemoryLimit:
    """A memory limit in bytes and where it came from.

    ``source`` is one of ``"setting"``, ``"cgroup-v2"``, ``"cgroup-v1"`` or
    ``"default"``; it is reported so operators can tell a detected limit from a
    guessed one.
    """

    bytes: int
    source: str


def parse_cgroup_value(text: str) -> int | None:
    """Parse the content of a cgroup memory limit file.

    Returns the limit in bytes, or ``None`` when the text means "unlimited"
    (``max``, or a value at or above :data:`CGROUP_UNLIMITED_THRESHOLD`) or is not
    a positive integer at all. ``None`` always means "look elsewhere".
    """
    value = text.strip()
    if value == "max":
        return None
    # str.isdigit() also accepts e.g. superscript digits that int() rejects, so
    # let int() decide and keep only plain positive numbers.
    try:
        limit = int(value, 10)
    except ValueError:
        return None
    if limit <= 0 or limit >= CGROUP_UNLIMITED_THRESHOLD:
        return None
    return limit


def detect_memory_limit(
    configured_mb: float | None,
    *,
    cgroup_root: Path = DEFAULT_CGROUP_ROOT,
    proc_self_cgroup: Path = DEFAULT_PROC_SELF_CGROUP,
) -> MemoryLimit:
    """Return the memory limit this process should be measured against.

    ``configured_mb`` (mebibytes) wins when given. A non-positive or non-finite
    setting raises :class:`ValueError`: that is an operator mistake worth failing
    start-up for, unlike an odd cgroup file, which is silently skipped.
    """
    if configured_mb is not None:
        if not math.isfinite(configured_mb) or configured_mb <= 0:
            raise ValueError(f"configured memory limit must be > 0 MB, got {configured_mb!r}")
        return MemoryLimit(bytes=int(configured_mb * _BYTES_PER_MB), source="setting")

    v2_path, v1_path = own_cgroup_paths(proc_self_cgroup)

    v2_limit = _first_limit(cgroup_root, v2_path, _V2_LIMIT_FILE)
    if v2_limit is not None:
        return MemoryLimit(bytes=v2_limit, source="cgroup-v2")

    v1_limit = _first_limit(cgroup_root / V1_MEMORY_CONTROLLER, v1_path, _V1_LIMIT_FILE)
    if v1_limit is not None:
        return MemoryLimit(bytes=v1_limit, source="cgroup-v1")

    return MemoryLimit(bytes=DEFAULT_MEMORY_LIMIT_BYTES, source="default")


def _first_limit(base: Path, own_path: str | None, filename: str) -> int | None:
    """Read ``filename`` in our own cgroup directory under ``base``, then in ``base``."""
    for directory in cgroup_dirs(base, own_path):
        text = read_text(directory / filename)
        if text is None:
            continue
        limit = parse_cgroup_value(text)
        if limit is not None:
            return limit
    return None
