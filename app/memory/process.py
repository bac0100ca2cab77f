"""What the operating system and the interpreter say about this process.

Small readers the memory guard, the admin API and the RSS header middleware
share, so each asks psutil in one way.

Design decisions:

* One ``psutil.Process`` object per process, created lazily. psutil caches a
  few facts on it (e.g. the creation time), and building one per request would
  read ``/proc`` more than needed. ``os.getpid()`` is checked so a forked
  worker (gunicorn preloads the app, then forks) never reports its parent.
* psutil ships no type information, so it is imported in this one module and
  every value leaves it converted to a plain ``int``/``float``: the rest of the
  code base stays fully typed.
* ``release_free_heap`` asks glibc to hand freed heap pages back to the kernel.
  Freeing Python objects does not lower RSS by itself: CPython's allocator and
  malloc keep the pages for reuse, so without this an aggressive cleanup could
  free 30 MB and the guard would still read the same RSS and stay critical.
  It is best effort and a no-op where there is no glibc (musl, macOS).
"""

from __future__ import annotations

import ctypes
import gc
import os
import platform
import threading
import time
from collections.abc import Callable
from functools import cache

import psutil  # type: ignore[import-untyped, unused-ignore]

__all__ = ["ProcessStats", "process_stats", "read_rss", "release_free_heap"]

_proc: psutil.Process | None = None
_proc_pid = -1


def _process() -> psutil.Process:
    global _proc, _proc_pid
    pid = os.getpid()
    if _proc is None or _proc_pid != pid:
        _proc, _proc_pid = psutil.Process(pid), pid
    return _proc


def read_rss() -> int:
    """Resident set size of this process, in bytes (one read of ``/proc/self/statm``)."""
    return int(_process().memory_info().rss)


ProcessStats = dict[str, object]


def process_stats() -> ProcessStats:
    """pid, uptime, threads, open file descriptors and garbage-collector counters."""
    proc = _process()
    gc_stats = gc.get_stats()
    try:
        open_fds: int | None = int(proc.num_fds())
    except AttributeError:  # not a POSIX system
        open_fds = None
    return {
        "pid": proc.pid,
        "uptime_s": round(time.time() - float(proc.create_time()), 1),
        "threads": int(proc.num_threads()),
        "python_threads": threading.active_count(),
        "open_fds": open_fds,
        "python": platform.python_version(),
        "gc": {
            # Objects allocated minus freed since each generation was last collected.
            "counts": list(gc.get_count()),
            "thresholds": list(gc.get_threshold()),
            "collections": [generation["collections"] for generation in gc_stats],
            "collected": [generation["collected"] for generation in gc_stats],
            "uncollectable": [generation["uncollectable"] for generation in gc_stats],
        },
    }


@cache
def _malloc_trim() -> Callable[[int], int] | None:
    # CDLL(None) is the symbols already loaded into this process, libc included;
    # ctypes.util.find_library would spawn ldconfig, at the worst possible moment.
    try:
        trim: Callable[[int], int] | None = getattr(ctypes.CDLL(None), "malloc_trim", None)
    except OSError:
        return None
    return trim


def release_free_heap() -> bool:
    """Return free heap memory to the kernel (glibc ``malloc_trim(0)``); False if unavailable."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
