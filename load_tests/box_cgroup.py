"""The box test's memory cgroup: a child group with the box's limit, read as a container is.

Design decisions (read before changing):

1. **A child of our own group.** The group is made under this process's own
   memory cgroup (found as ``app/memory/cgroup.py`` finds it: the v2 line or the
   v1 ``memory`` line of ``/proc/self/cgroup``), so creating it needs no more
   rights than the tool already has and it disappears with the tool's own.
2. **v1 charges sockets apart; v2 charges them in the limit.** A cgroup-v2
   container (what a platform's 512 MB box is) pays for socket buffers inside
   ``memory.max``; v1 keeps TCP memory in its own counter, outside
   ``memory.usage_in_bytes``, and accounts it only when
   ``memory.kmem.tcp.limit_in_bytes`` is written before a task joins. So the
   figure compared with the limit is the same on both: the working set without
   sockets plus socket memory (:class:`Reading`). On v1 the TCP limit is set
   well above the box's, so the kernel refuses no socket memory the real
   container would have counted (and OOM-killed for) instead.
3. **Working set, not usage.** Usage includes page cache the kernel drops before
   it OOM-kills anyone; the working set (usage minus ``inactive_file``) is what
   container platforms compare with the limit.
4. **Parsing is apart from I/O**, so the file formats are tested on sample text.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
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
    "CgroupError",
    "MemoryGroup",
    "Reading",
    "find_parent",
    "parse_keyed",
    "parse_limit",
    "reading_v1",
    "reading_v2",
]

V1_TCP_LIMIT_FACTOR = 4
"""v1: TCP memory may reach this many times the box's limit before the kernel refuses it."""
EMPTY_TIMEOUT_SECONDS = 10.0
EMPTY_POLL_SECONDS = 0.05
UNLIMITED = "max"


class CgroupError(RuntimeError):
    """No writable memory cgroup here (not root, no memory controller, read-only mount)."""


def parse_keyed(text: str) -> dict[str, int]:
    """``memory.stat``, ``memory.events`` and v1 ``memory.oom_control``: ``name value`` lines."""
    found: dict[str, int] = {}
    for line in text.splitlines():
        name, _, value = line.strip().partition(" ")
        with contextlib.suppress(ValueError):
            found[name] = int(value.strip())
    return found


def parse_limit(text: str) -> int | None:
    """A one-number file (``memory.max``, ``memory.limit_in_bytes``); ``None`` for ``max``."""
    value = text.strip()
    if value == UNLIMITED:
        return None
    return int(value)


@dataclass(frozen=True, slots=True)
class Reading:
    """One sample of the group, in bytes."""

    working_set: int
    """Charged memory without page cache the kernel can drop, and without sockets."""
    sockets: int
    kernel_peak: int
    """The kernel's own high-water mark (v1 ``max_usage_in_bytes`` + TCP's; v2 ``memory.peak``,
    0 when the kernel has none)."""
    oom_kills: int

    @property
    def total(self) -> int:
        """What a cgroup-v2 container is charged: working set plus socket memory."""
        return self.working_set + self.sockets


def reading_v1(
    usage: str, stat: str, tcp_usage: str, max_usage: str, tcp_max_usage: str, oom_control: str
) -> Reading:
    stats = parse_keyed(stat)
    inactive = stats.get("total_inactive_file", stats.get("inactive_file", 0))
    return Reading(
        working_set=max(0, int(usage) - inactive),
        sockets=int(tcp_usage),
        kernel_peak=int(max_usage) + int(tcp_max_usage),
        oom_kills=parse_keyed(oom_control).get("oom_kill", 0),
    )


def reading_v2(current: str, stat: str, events: str, peak: str | None) -> Reading:
    stats = parse_keyed(stat)
    sockets = stats.get("sock", 0)
    # memory.current already holds the sockets: take them out so total() counts them once.
    working_set = int(current) - stats.get("inactive_file", 0) - sockets
    return Reading(
        working_set=max(0, working_set),
        sockets=sockets,
        kernel_peak=int(peak) if peak is not None else 0,
        oom_kills=parse_keyed(events).get("oom_kill", 0),
    )


def find_parent(
    root: Path = DEFAULT_CGROUP_ROOT, proc_self_cgroup: Path = DEFAULT_PROC_SELF_CGROUP
) -> tuple[int, Path]:
    """``(version, directory)`` of our own memory cgroup, v2 preferred; ``CgroupError`` if none
    is writable."""
    v2_path, v1_path = own_cgroup_paths(proc_self_cgroup)
    if (root / "cgroup.controllers").exists():
        for directory in cgroup_dirs(root, v2_path):
            if (directory / "cgroup.procs").exists() and os.access(directory, os.W_OK):
                controllers = read_text(directory / "cgroup.subtree_control") or ""
                if "memory" in controllers.split() or _enable_memory(directory):
                    return 2, directory
    v1_root = root / V1_MEMORY_CONTROLLER
    if (v1_root / "memory.limit_in_bytes").exists():
        for directory in cgroup_dirs(v1_root, v1_path):
            if (directory / "memory.limit_in_bytes").exists() and os.access(directory, os.W_OK):
                return 1, directory
    raise CgroupError(
        "no writable memory cgroup (needs root and a memory controller at "
        f"{root}/memory or cgroup v2 at {root})"
    )


def _enable_memory(directory: Path) -> bool:
    """v2: a child gets memory files only if its parent delegates the controller."""
    try:
        (directory / "cgroup.subtree_control").write_text("+memory")
    except OSError:
        return False
    return True


class MemoryGroup:
    """A child memory cgroup with a limit; ``remove()`` kills what is left in it and deletes it."""

    def __init__(self, name: str, limit_bytes: int, parent: tuple[int, Path] | None = None) -> None:
        self.version, base = parent or find_parent()
        self.path = base / name
        self.limit_bytes = limit_bytes
        try:
            self.path.mkdir()
        except OSError as exc:
            raise CgroupError(f"cannot create {self.path}: {exc}") from None
        try:
            if self.version == 1:
                # Before any task joins: only then is TCP memory accounted (and readable).
                self._write("memory.kmem.tcp.limit_in_bytes", limit_bytes * V1_TCP_LIMIT_FACTOR)
                self._write("memory.limit_in_bytes", limit_bytes)
                # No swap on the box: without this a machine with swap would page instead.
                with contextlib.suppress(OSError):
                    self._write("memory.swappiness", 0)
            else:
                self._write("memory.max", limit_bytes)
                with contextlib.suppress(OSError):
                    self._write("memory.swap.max", 0)
        except OSError as exc:
            self.remove()
            raise CgroupError(f"cannot set the limit of {self.path}: {exc}") from None
        self._baseline_oom_kills = self.read().oom_kills

    @property
    def procs_file(self) -> Path:
        return self.path / "cgroup.procs"

    def _write(self, name: str, value: int | str) -> None:
        (self.path / name).write_text(str(value))

    def _read(self, name: str) -> str:
        return (self.path / name).read_text()

    def join_self(self) -> None:
        """Move the calling process into the group (a ``preexec_fn``: runs after fork, before
        exec, so whatever it execs and forks is born inside)."""
        self.procs_file.write_text(str(os.getpid()))

    def pids(self) -> set[int]:
        text = read_text(self.procs_file) or ""
        return {int(line) for line in text.split()}

    def read(self) -> Reading:
        if self.version == 1:
            return reading_v1(
                self._read("memory.usage_in_bytes"),
                self._read("memory.stat"),
                self._read("memory.kmem.tcp.usage_in_bytes"),
                self._read("memory.max_usage_in_bytes"),
                self._read("memory.kmem.tcp.max_usage_in_bytes"),
                self._read("memory.oom_control"),
            )
        return reading_v2(
            self._read("memory.current"),
            self._read("memory.stat"),
            self._read("memory.events"),
            read_text(self.path / "memory.peak"),
        )

    def oom_kills(self, reading: Reading) -> int:
        """OOM kills since the group was made."""
        return reading.oom_kills - self._baseline_oom_kills

    def remove(self) -> None:
        """SIGKILL every task left, wait for the group to empty, delete it (bounded in time)."""
        if not self.path.exists():
            return
        deadline = time.monotonic() + EMPTY_TIMEOUT_SECONDS
        while (pids := self.pids()) and time.monotonic() < deadline:
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(EMPTY_POLL_SECONDS)
        while time.monotonic() < deadline:
            try:
                self.path.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError:
                # Killed tasks leave the group a moment after they die.
                time.sleep(EMPTY_POLL_SECONDS)
        raise CgroupError(f"could not remove {self.path}")
