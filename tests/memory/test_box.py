"""The whole box's memory: hand-made cgroup v1 and v2 trees, and this machine's process tree."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil  # type: ignore[import-untyped, unused-ignore]
import pytest

from app.memory import box as box_module
from app.memory.box import detect_box_memory, parse_stat_value, register_server_root
from app.memory.sockets import SocketMemorySource

MB = 1024 * 1024
V1 = "4:memory:/herald\n"
V2 = "0::/herald\n"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture(autouse=True)
def own_root() -> Iterator[None]:
    yield
    box_module._server_root, box_module._server_workers = None, 1


def detect(tmp_path: Path, cgroup_line: str, sockets: int = 7 * MB) -> tuple[str, int, int]:
    write(tmp_path / "proc_self_cgroup", cgroup_line)
    source = detect_box_memory(
        cgroup_root=tmp_path / "cgroup",
        proc_self_cgroup=tmp_path / "proc_self_cgroup",
        sockets=SocketMemorySource("sockstat", lambda: sockets),
    )
    reading = source.read()
    return source.source, reading.used_bytes, reading.socket_bytes


def test_stat_values_are_read_by_name() -> None:
    stat = "cache 10\ninactive_file 300\ntotal_inactive_file 400\nsock 5\n"
    assert parse_stat_value(stat, "inactive_file") == 300
    assert parse_stat_value(stat, "total_inactive_file") == 400
    assert parse_stat_value(stat, "missing") is None
    assert parse_stat_value("sock x\n", "sock") is None


def test_cgroup_v2_working_set_holds_the_sockets(tmp_path: Path) -> None:
    group = tmp_path / "cgroup" / "herald"
    write(group / "memory.max", f"{512 * MB}\n")
    write(group / "memory.current", f"{300 * MB}\n")
    write(group / "memory.stat", f"anon {200 * MB}\ninactive_file {40 * MB}\nsock {30 * MB}\n")
    # Inactive page cache is reclaimed before an OOM kill; sockets are already in current.
    assert detect(tmp_path, V2) == ("cgroup-v2", 260 * MB, 30 * MB)


def test_cgroup_v1_adds_its_tcp_counter(tmp_path: Path) -> None:
    group = tmp_path / "cgroup" / "memory" / "herald"
    write(group / "memory.limit_in_bytes", f"{512 * MB}\n")
    write(group / "memory.usage_in_bytes", f"{300 * MB}\n")
    write(group / "memory.stat", f"cache 1\ntotal_inactive_file {40 * MB}\n")
    write(group / "memory.kmem.tcp.limit_in_bytes", f"{1024 * MB}\n")
    write(group / "memory.kmem.tcp.usage_in_bytes", f"{50 * MB}\n")
    # v1 keeps TCP buffers apart from usage; a v2 container is charged both in one limit.
    assert detect(tmp_path, V1) == ("cgroup-v1", 310 * MB, 50 * MB)


def test_cgroup_v1_without_tcp_accounting_reads_the_namespace(tmp_path: Path) -> None:
    group = tmp_path / "cgroup" / "memory" / "herald"
    write(group / "memory.limit_in_bytes", f"{512 * MB}\n")
    write(group / "memory.usage_in_bytes", f"{300 * MB}\n")
    write(group / "memory.stat", "total_inactive_file 0\n")
    write(group / "memory.kmem.tcp.limit_in_bytes", "9223372036854771712\n")
    write(group / "memory.kmem.tcp.usage_in_bytes", "0\n")
    assert detect(tmp_path, V1, sockets=9 * MB) == ("cgroup-v1", 309 * MB, 9 * MB)


def test_a_cgroup_without_a_limit_is_not_the_box(tmp_path: Path) -> None:
    # An unlimited group is shared with whatever else runs there: the server's own tree is read.
    group = tmp_path / "cgroup" / "memory" / "herald"
    write(group / "memory.limit_in_bytes", "9223372036854771712\n")
    write(group / "memory.usage_in_bytes", f"{9000 * MB}\n")
    write(tmp_path / "cgroup" / "herald" / "memory.max", "max\n")
    source, used, sockets = detect(tmp_path, V2 + V1)
    assert source == "processes"
    assert sockets == 7 * MB
    assert used >= psutil.Process().memory_info().rss * 0.9 + sockets


def test_the_process_tree_counts_every_worker(tmp_path: Path) -> None:
    # This test process stands for the master: a child it starts is a worker of the box.
    write(tmp_path / "proc_self_cgroup", "0::/\n")
    source = detect_box_memory(
        cgroup_root=tmp_path / "cgroup",
        proc_self_cgroup=tmp_path / "proc_self_cgroup",
        sockets=SocketMemorySource("none", lambda: 0),
    )
    alone = source.read().used_bytes
    ballast = 64 * MB
    with subprocess.Popen(
        [sys.executable, "-c", f"b = bytearray({ballast}); print(1, flush=True); input()"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    ) as worker:
        try:
            assert worker.stdout is not None and worker.stdout.readline() == b"1\n"
            with_worker = source.read().used_bytes
            assert with_worker - alone >= ballast
            # Read from inside a worker, the box is its master's tree: the same figure.
            register_server_root(os.getpid(), workers=2)
            assert source.read().used_bytes >= ballast
        finally:
            worker.kill()
