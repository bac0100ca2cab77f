"""Socket memory sources against hand-made cgroup and /proc trees, and on this host."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from app.memory.sockets import (
    detect_socket_memory,
    parse_memory_stat_sock,
    parse_sockstat_tcp_bytes,
)

PAGE = 4096
SOCKSTAT = (
    "sockets: used 12\n"
    "TCP: inuse 3 orphan 0 tw 257 alloc 5 mem 102\n"
    "UDP: inuse 1 mem 7\n"
    "UDPLITE: inuse 0\n"
)
MEMORY_STAT = "anon 123456\nfile 789\nkernel 4096\nsock 20480\nshmem 0\n"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def detect(tmp_path: Path, cgroup_line: str = "0::/\n") -> tuple[str, int]:
    write(tmp_path / "proc_self_cgroup", cgroup_line)
    source = detect_socket_memory(
        cgroup_root=tmp_path / "cgroup",
        proc_self_cgroup=tmp_path / "proc_self_cgroup",
        sockstat=tmp_path / "sockstat",
        page_size=PAGE,
    )
    return source.name, source.read()


def test_parse_memory_stat_sock() -> None:
    assert parse_memory_stat_sock(MEMORY_STAT) == 20480
    assert parse_memory_stat_sock("anon 1\nsock_other 5\n") is None
    assert parse_memory_stat_sock("sock lots\n") is None


def test_parse_sockstat_counts_tcp_pages_only() -> None:
    assert parse_sockstat_tcp_bytes(SOCKSTAT, PAGE) == 102 * PAGE  # not UDP's 7
    assert parse_sockstat_tcp_bytes("TCP: inuse 3 orphan 0\n", PAGE) is None
    assert parse_sockstat_tcp_bytes("UDP: inuse 1 mem 7\n", PAGE) is None


def test_cgroup_v2_sock_is_preferred(tmp_path: Path) -> None:
    write(tmp_path / "cgroup" / "memory.stat", MEMORY_STAT)
    write(tmp_path / "sockstat", SOCKSTAT)
    assert detect(tmp_path) == ("cgroup-v2", 20480)


def test_our_own_cgroup_before_the_root(tmp_path: Path) -> None:
    write(tmp_path / "cgroup" / "memory.stat", "sock 1\n")
    write(tmp_path / "cgroup" / "system.slice" / "herald" / "memory.stat", "sock 777\n")
    assert detect(tmp_path, "0::/system.slice/herald\n") == ("cgroup-v2", 777)


def test_each_read_is_fresh(tmp_path: Path) -> None:
    stat = write(tmp_path / "cgroup" / "memory.stat", MEMORY_STAT)
    write(tmp_path / "proc_self_cgroup", "0::/\n")
    source = detect_socket_memory(
        cgroup_root=tmp_path / "cgroup", proc_self_cgroup=tmp_path / "proc_self_cgroup"
    )
    assert source.read() == 20480
    stat.write_text("sock 999424\n")
    assert source.read() == 999424
    stat.unlink()  # a read failing later reads as 0 instead of breaking the guard
    assert source.read() == 0


def test_cgroup_v1_host_falls_back_to_sockstat(tmp_path: Path) -> None:
    # v1's memory.stat has no sock line, and it lives under memory/, not the root.
    write(tmp_path / "cgroup" / "memory" / "memory.stat", "cache 1\nrss 2\n")
    write(tmp_path / "sockstat", SOCKSTAT)
    assert detect(tmp_path, "4:memory:/herald\n") == ("sockstat", 102 * PAGE)


def test_v2_without_sock_accounting_falls_back_to_sockstat(tmp_path: Path) -> None:
    write(tmp_path / "cgroup" / "memory.stat", "anon 1\nfile 2\n")
    write(tmp_path / "sockstat", SOCKSTAT)
    assert detect(tmp_path) == ("sockstat", 102 * PAGE)


def test_nothing_readable_is_said_plainly(tmp_path: Path) -> None:
    assert detect(tmp_path) == ("none", 0)


def test_this_host_sees_a_socket_that_holds_data() -> None:
    source = detect_socket_memory()
    if source.name == "none":
        pytest.skip("no socket memory source on this host")
    before = source.read()
    server = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(server.getsockname())
    peer, _ = server.accept()
    try:
        client.setblocking(False)
        sent = 0
        # Unread bytes sit in the peer's receive queue and our send queue: kernel memory.
        try:
            while sent < 4 * 1024 * 1024:
                sent += client.send(b"x" * 65536)
        except BlockingIOError:
            pass
        with_data = source.read()
    finally:
        for sock in (client, peer, server):
            sock.close()
    assert with_data - before >= sent // 2, (before, with_data, sent)
