"""Kernel memory held by sockets: the part of a box's memory that RSS does not show.

Send and receive buffers live in the kernel, so a process holding a few
thousand stalled sockets can have a modest RSS while the machine (or the
container, which cgroup v2 charges for them) runs out of memory. The memory
guard adds this reading to RSS before comparing with the limit.

Sources, in order of preference (chosen once, by :func:`detect_socket_memory`):

1. ``cgroup-v2`` -- the ``sock`` line of ``memory.stat`` in this process's
   cgroup (bytes): every socket of every process in the cgroup, which is
   exactly what the container's ``memory.max`` is charged with.
2. ``sockstat`` -- the TCP ``mem`` field of ``/proc/net/sockstat`` (pages): every
   TCP socket of this network namespace (the whole host without a private
   one). Used on cgroup v1 hosts and where ``memory.stat`` has no ``sock``.
3. ``none`` -- neither is readable; the reading is 0 and says so.

Design decisions:

* The source is chosen once at start-up, then each sample is one read of one
  small file (``memory.stat`` is ~1 KB of text, ``sockstat`` ~200 B), done in the
  event loop like the RSS read.
* Both sources are wider than this process: all workers of one container (or
  everything in the network namespace). Each worker adds the whole figure to
  its own RSS. That is conservative where it errs -- two workers in one
  container both count every socket -- and right where it matters: the
  container is charged for every byte, whichever worker wrote it.
* TCP only from sockstat: Herald holds no UDP sockets, and another process's
  UDP traffic is not Herald's pressure.
* A read that fails after start-up reads as 0 rather than raising: the guard
  must go on judging RSS even if ``/proc`` misbehaves.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from app.memory.cgroup import (
    DEFAULT_CGROUP_ROOT,
    DEFAULT_PROC_SELF_CGROUP,
    cgroup_dirs,
    own_cgroup_paths,
    read_text,
)

__all__ = [
    "DEFAULT_SOCKSTAT",
    "SocketMemorySource",
    "detect_socket_memory",
    "parse_memory_stat_sock",
    "parse_sockstat_tcp_bytes",
]

DEFAULT_SOCKSTAT = Path("/proc/net/sockstat")
_MEMORY_STAT = "memory.stat"


@dataclass(frozen=True)
class SocketMemorySource:
    """Where socket memory is read (``cgroup-v2``, ``sockstat`` or ``none``) and the reader."""

    name: str
    read: Callable[[], int]


def parse_memory_stat_sock(text: str) -> int | None:
    """Bytes on the ``sock`` line of a cgroup v2 ``memory.stat``; ``None`` if there is none."""
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key == "sock":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def parse_sockstat_tcp_bytes(text: str, page_size: int) -> int | None:
    """TCP ``mem`` of ``/proc/net/sockstat`` (pages) in bytes; ``None`` if absent.

    The line reads ``TCP: inuse 3 orphan 0 tw 0 alloc 5 mem 102``: name/value pairs.
    """
    for line in text.splitlines():
        if not line.startswith("TCP:"):
            continue
        fields = line.split()[1:]
        pairs = dict(zip(fields[::2], fields[1::2], strict=False))
        try:
            return int(pairs["mem"]) * page_size
        except (KeyError, ValueError):
            return None
    return None


class _FileReading:
    """One file parsed into bytes on each call; 0 when it cannot be read or parsed."""

    def __init__(self, path: Path, parse: Callable[[str], int | None]) -> None:
        self.path = path
        self.parse = parse

    def __call__(self) -> int:
        text = read_text(self.path)
        value = None if text is None else self.parse(text)
        return 0 if value is None else value


def detect_socket_memory(
    *,
    cgroup_root: Path = DEFAULT_CGROUP_ROOT,
    proc_self_cgroup: Path = DEFAULT_PROC_SELF_CGROUP,
    sockstat: Path = DEFAULT_SOCKSTAT,
    page_size: int | None = None,
) -> SocketMemorySource:
    """The best socket memory source on this host (see the module docstring)."""
    v2_path, _ = own_cgroup_paths(proc_self_cgroup)
    for directory in cgroup_dirs(cgroup_root, v2_path):
        stat = directory / _MEMORY_STAT
        text = read_text(stat)
        if text is not None and parse_memory_stat_sock(text) is not None:
            return SocketMemorySource("cgroup-v2", _FileReading(stat, parse_memory_stat_sock))
    size = page_size or os.sysconf("SC_PAGE_SIZE")
    parse_tcp = functools.partial(parse_sockstat_tcp_bytes, page_size=size)
    text = read_text(sockstat)
    if text is not None and parse_tcp(text) is not None:
        return SocketMemorySource("sockstat", _FileReading(sockstat, parse_tcp))
    return SocketMemorySource("none", lambda: 0)
