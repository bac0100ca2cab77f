"""Process readers (RSS, threads, fds, gc) and byte formatting."""

from __future__ import annotations

import os
import platform
import threading
from pathlib import Path

import psutil
import pytest

from app.memory.process import process_stats, read_rss, release_free_heap
from app.memory.units import format_bytes

MB = 1024 * 1024


def test_read_rss_is_this_process_rss() -> None:
    expected = psutil.Process(os.getpid()).memory_info().rss
    assert abs(read_rss() - expected) < 8 * MB


def test_read_rss_grows_with_allocation() -> None:
    before = read_rss()
    ballast = bytearray(64 * MB)  # zero-filled by calloc, so touch every page
    for index in range(0, len(ballast), 4096):
        ballast[index] = 1
    assert read_rss() - before > 48 * MB
    del ballast


def test_process_stats(tmp_path: Path) -> None:
    before = process_stats()
    assert before["pid"] == os.getpid()
    assert before["python"] == platform.python_version()
    gc_stats = before["gc"]
    assert isinstance(gc_stats, dict)
    assert all(len(gc_stats[key]) == 3 for key in ("counts", "collections", "collected"))
    files = [open(tmp_path / f"f{index}", "w") for index in range(3)]  # noqa: SIM115
    started = threading.Event()
    stop = threading.Event()

    def idle() -> None:
        started.set()
        stop.wait()

    thread = threading.Thread(target=idle)
    thread.start()
    started.wait()
    try:
        during = process_stats()
    finally:
        stop.set()
        thread.join()
        for handle in files:
            handle.close()
    assert isinstance(during["open_fds"], int) and isinstance(before["open_fds"], int)
    assert during["open_fds"] >= before["open_fds"] + 3
    assert isinstance(during["threads"], int) and isinstance(before["threads"], int)
    assert during["threads"] >= before["threads"] + 1


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is a glibc call")
def test_release_free_heap_on_glibc() -> None:
    assert release_free_heap() is True


@pytest.mark.parametrize(
    ("count", "text"),
    [
        (0, "0 B"),
        (1023, "1023 B"),
        (1536, "1.5 KB"),
        (10 * MB, "10.0 MB"),
        (512 * MB, "512.0 MB"),
        (3 * 1024 * MB, "3.0 GB"),
        (2 * 1024**4, "2.0 TB"),
        (-2048, "-2.0 KB"),
    ],
)
def test_format_bytes(count: int, text: str) -> None:
    assert format_bytes(count) == text
