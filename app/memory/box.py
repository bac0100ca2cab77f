"""What the whole box is charged for: the figure every worker's memory levels compare.

A container's limit is shared by the gunicorn master and all its workers, and the
kernel OOM-kills on what the *container* is charged, not on one worker's RSS. So
each worker reads the same whole-box figure and acts on the same picture.

Sources, chosen once by :func:`detect_box_memory`, in order of preference:

1. ``cgroup-v2`` -- this process's cgroup has a finite ``memory.max``:
   ``memory.current`` less ``inactive_file`` of ``memory.stat`` (the working set,
   as container runtimes count it: inactive page cache is reclaimed before any
   OOM kill). Socket memory (``sock``) is already inside ``memory.current``.
2. ``cgroup-v1`` -- a finite ``memory.limit_in_bytes``: ``memory.usage_in_bytes``
   less ``total_inactive_file``, plus ``memory.kmem.tcp.usage_in_bytes``: v1
   keeps TCP buffers in a counter of their own, where v2 charges them to the one
   limit a container has, and the box is judged as v2 would judge it.
3. ``processes`` -- no finite cgroup limit (a bare machine, a test run): the RSS
   of the server's process tree (the gunicorn master and every worker, or
   ``python -m app`` alone) plus the kernel's TCP memory
   (:mod:`app.memory.sockets`).

Design decisions:

* A cgroup without a limit is not a box: its usage counts whatever else shares
  it (a developer's whole session, page cache of unrelated files), so only a
  finite limit makes the cgroup the source.
* The server's root process is the gunicorn master when this process is one
  of its workers (:func:`register_server_root`, called by the worker before the
  app starts), else this process. Its tree is read fresh on each sample, so a
  respawned worker is counted as soon as it exists.
* Every reading is one or two small files (or a few ``/proc/<pid>/statm``), done
  in the event loop like the old per-process reading; a failed read is 0, and
  the guard logs a broken probe without stopping.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil  # type: ignore[import-untyped, unused-ignore]

from app.memory.cgroup import (
    DEFAULT_CGROUP_ROOT,
    DEFAULT_PROC_SELF_CGROUP,
    V1_MEMORY_CONTROLLER,
    cgroup_dirs,
    own_cgroup_paths,
    read_text,
)
from app.memory.limits import parse_cgroup_value
from app.memory.sockets import SocketMemorySource, detect_socket_memory

__all__ = [
    "BoxMemory",
    "BoxReading",
    "detect_box_memory",
    "parse_stat_value",
    "register_server_root",
    "server_root_pid",
    "server_workers",
    "worker_recycle",
]

_server_root: int | None = None
_server_workers = 1
_recycle: Callable[[], None] | None = None


def register_server_root(pid: int, workers: int, recycle: Callable[[], None] | None = None) -> None:
    """This process is one of ``workers`` serving under ``pid`` (the gunicorn master):
    the box is that master's tree, shared with the other workers. ``recycle`` ends this
    worker gracefully (the master starts a fresh one)."""
    global _server_root, _server_workers, _recycle
    _server_root, _server_workers, _recycle = pid, max(1, workers), recycle


def worker_recycle() -> Callable[[], None] | None:
    """How to replace this worker with a fresh process; None where nothing would restart it
    (``python -m app``)."""
    return _recycle


def server_root_pid() -> int:
    return _server_root if _server_root is not None else os.getpid()


def server_workers() -> int:
    """How many workers share the box (1 for ``python -m app``)."""
    return _server_workers


@dataclass(frozen=True, slots=True)
class BoxReading:
    """One sample of the box: what it is charged for, and the socket part of that."""

    used_bytes: int
    socket_bytes: int


@dataclass(frozen=True)
class BoxMemory:
    """Where the box is read (``cgroup-v2``, ``cgroup-v1`` or ``processes``) and the reader."""

    source: str
    read: Callable[[], BoxReading]


def parse_stat_value(text: str, key: str) -> int | None:
    """The value of ``key`` in a cgroup ``memory.stat`` (``name value`` lines)."""
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name == key:
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _read_int(path: Path) -> int:
    text = read_text(path)
    if text is None:
        return 0
    try:
        return int(text.strip())
    except ValueError:
        return 0


class _CgroupV2:
    def __init__(self, directory: Path) -> None:
        self.current = directory / "memory.current"
        self.stat = directory / "memory.stat"

    def __call__(self) -> BoxReading:
        stat = read_text(self.stat) or ""
        inactive = parse_stat_value(stat, "inactive_file") or 0
        sock = parse_stat_value(stat, "sock") or 0
        return BoxReading(max(0, _read_int(self.current) - inactive), sock)


class _CgroupV1:
    def __init__(self, directory: Path, sockets: SocketMemorySource) -> None:
        self.usage = directory / "memory.usage_in_bytes"
        self.stat = directory / "memory.stat"
        tcp_limit = read_text(directory / "memory.kmem.tcp.limit_in_bytes")
        # v1 counts a group's TCP buffers only once a TCP limit is set on it (any value);
        # without one the counter stays at 0 and the namespace's figure stands in.
        self.read_sockets: Callable[[], int] = (
            functools.partial(_read_int, directory / "memory.kmem.tcp.usage_in_bytes")
            if tcp_limit is not None and parse_cgroup_value(tcp_limit) is not None
            else sockets.read
        )

    def __call__(self) -> BoxReading:
        stat = read_text(self.stat) or ""
        inactive = parse_stat_value(stat, "total_inactive_file") or 0
        sock = self.read_sockets()
        return BoxReading(max(0, _read_int(self.usage) - inactive) + sock, sock)


class _ProcessTree:
    def __init__(self, sockets: SocketMemorySource) -> None:
        self.sockets = sockets
        self._root: psutil.Process | None = None

    def _root_process(self) -> psutil.Process:
        pid = server_root_pid()
        if self._root is None or self._root.pid != pid:
            self._root = psutil.Process(pid)
        return self._root

    def __call__(self) -> BoxReading:
        root = self._root_process()
        rss = 0
        for process in (root, *root.children(recursive=True)):
            try:
                rss += int(process.memory_info().rss)
            except psutil.Error:  # a worker that exited between the listing and the read
                continue
        sock = self.sockets.read()
        return BoxReading(rss + sock, sock)


def _cgroup_source(
    cgroup_root: Path, proc_self_cgroup: Path, sockets: Callable[[], SocketMemorySource]
) -> BoxMemory | None:
    v2_path, v1_path = own_cgroup_paths(proc_self_cgroup)
    for directory in cgroup_dirs(cgroup_root, v2_path):
        limit = read_text(directory / "memory.max")
        limited = limit is not None and parse_cgroup_value(limit) is not None
        if limited and (directory / "memory.current").exists():
            return BoxMemory("cgroup-v2", _CgroupV2(directory))
    for directory in cgroup_dirs(cgroup_root / V1_MEMORY_CONTROLLER, v1_path):
        limit = read_text(directory / "memory.limit_in_bytes")
        if limit is not None and parse_cgroup_value(limit) is not None:
            return BoxMemory("cgroup-v1", _CgroupV1(directory, sockets()))
    return None


def detect_box_memory(
    *,
    cgroup_root: Path = DEFAULT_CGROUP_ROOT,
    proc_self_cgroup: Path = DEFAULT_PROC_SELF_CGROUP,
    sockets: SocketMemorySource | None = None,
) -> BoxMemory:
    """The best source of the whole box's memory on this host (module docstring)."""

    def socket_source() -> SocketMemorySource:
        return sockets or detect_socket_memory(
            cgroup_root=cgroup_root, proc_self_cgroup=proc_self_cgroup
        )

    found = _cgroup_source(cgroup_root, proc_self_cgroup, socket_source)
    if found is not None:
        return found
    return BoxMemory("processes", _ProcessTree(socket_source()))
