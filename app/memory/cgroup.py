"""Where this process's cgroup files are, read without ever raising.

Shared by the memory limit (:mod:`app.memory.limits`) and the socket memory
reading (:mod:`app.memory.sockets`).

Design decisions:

* We try the process's own cgroup directory (from ``/proc/self/cgroup``) first and
  the mount root second. With a private cgroup namespace the root *is* our cgroup
  and ``/proc/self/cgroup`` says ``/``; without one, ``/proc/self/cgroup`` names a
  path such as ``/docker/<id>`` that may or may not exist under the mount, so the
  root is the fallback.
* A missing, unreadable or garbled file reads as ``None`` ("not found there"):
  callers fall through to their next source.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

__all__ = [
    "DEFAULT_CGROUP_ROOT",
    "DEFAULT_PROC_SELF_CGROUP",
    "V1_MEMORY_CONTROLLER",
    "cgroup_dirs",
    "own_cgroup_paths",
    "read_text",
]

DEFAULT_CGROUP_ROOT = Path("/sys/fs/cgroup")
DEFAULT_PROC_SELF_CGROUP = Path("/proc/self/cgroup")
V1_MEMORY_CONTROLLER = "memory"


def own_cgroup_paths(proc_self_cgroup: Path) -> tuple[str | None, str | None]:
    """Return ``(v2_path, v1_memory_path)`` from ``/proc/self/cgroup``.

    Lines are ``hierarchy-id:controllers:path``; the v2 line is ``0::/path`` and the
    v1 memory line lists ``memory`` among comma-separated controllers
    (``4:memory:/path`` or ``7:cpu,memory:/path``). Hybrid hosts have both.
    """
    text = read_text(proc_self_cgroup)
    if text is None:
        return None, None
    v2_path: str | None = None
    v1_path: str | None = None
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hierarchy_id, controllers, path = parts
        if hierarchy_id == "0" and controllers == "":
            v2_path = path
        elif V1_MEMORY_CONTROLLER in controllers.split(","):
            v1_path = path
    return v2_path, v1_path


def cgroup_dirs(base: Path, own_path: str | None) -> list[Path]:
    """Our own cgroup directory under ``base`` (when it stays inside), then ``base``."""
    candidates: list[Path] = []
    if own_path:
        relative = PurePosixPath(own_path.strip())
        # A path outside our cgroup namespace shows up as "/../.."; never let it
        # walk out of the mount. The leading "/" is stripped so joining stays
        # under ``base`` rather than replacing it.
        if ".." not in relative.parts:
            parts = [part for part in relative.parts if part != "/"]
            if parts:
                candidates.append(base.joinpath(*parts))
    candidates.append(base)
    return candidates


def read_text(path: Path) -> str | None:
    # ValueError covers e.g. embedded NUL bytes in a path built from bad input.
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError, ValueError):
        return None
