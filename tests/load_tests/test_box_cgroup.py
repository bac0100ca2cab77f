"""The box test's cgroup files, parsed from sample text (v1 and v2)."""

from __future__ import annotations

from pathlib import Path

import pytest

from load_tests.box_cgroup import (
    CgroupError,
    find_parent,
    parse_keyed,
    parse_limit,
    reading_v1,
    reading_v2,
)

V1_STAT = """cache 147456
rss 1830912
inactive_file 114688
total_cache 147456
total_rss 1830912
total_inactive_file 4096000
"""
V1_OOM_CONTROL = "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n"
V2_STAT = "anon 100000000\nfile 20000000\nsock 30000000\ninactive_file 15000000\n"
V2_EVENTS = "low 0\nhigh 0\nmax 12\noom 2\noom_kill 2\noom_group_kill 0\n"


def test_keyed_files_read_every_number_and_skip_garbage() -> None:
    assert parse_keyed(V1_OOM_CONTROL) == {"oom_kill_disable": 0, "under_oom": 0, "oom_kill": 3}
    assert parse_keyed("a 1\nbroken\nb x\n c 2 \n") == {"a": 1, "c": 2}


def test_a_limit_of_max_is_no_limit() -> None:
    assert parse_limit("max\n") is None
    assert parse_limit("536870912\n") == 536870912


def test_v1_adds_tcp_memory_to_the_working_set_of_the_hierarchy() -> None:
    reading = reading_v1(
        usage="500000000\n",
        stat=V1_STAT,
        tcp_usage="90000000\n",
        max_usage="520000000\n",
        tcp_max_usage="100000000\n",
        oom_control=V1_OOM_CONTROL,
    )
    # total_inactive_file (the hierarchy's), not this group's own inactive_file.
    assert reading.working_set == 500000000 - 4096000
    assert reading.sockets == 90000000
    assert reading.total == 500000000 - 4096000 + 90000000
    assert reading.kernel_peak == 620000000
    assert reading.oom_kills == 3


def test_v1_without_an_oom_kill_line_counts_none() -> None:
    reading = reading_v1("1\n", "", "0\n", "1\n", "0\n", "oom_kill_disable 0\nunder_oom 0\n")
    assert reading.oom_kills == 0


def test_v2_counts_sockets_once_since_memory_current_holds_them() -> None:
    reading = reading_v2("150000000\n", V2_STAT, V2_EVENTS, "160000000\n")
    assert reading.sockets == 30000000
    assert reading.working_set == 150000000 - 15000000 - 30000000
    assert reading.total == 150000000 - 15000000
    assert reading.kernel_peak == 160000000
    assert reading.oom_kills == 2


def test_v2_without_memory_peak_reports_no_kernel_peak() -> None:
    assert reading_v2("1000\n", "", "", None).kernel_peak == 0


def test_no_memory_controller_is_a_clear_error(tmp_path: Path) -> None:
    proc_self_cgroup = tmp_path / "cgroup"
    proc_self_cgroup.write_text("0::/\n")
    with pytest.raises(CgroupError, match="no writable memory cgroup"):
        find_parent(tmp_path / "sys-fs-cgroup", proc_self_cgroup)


def test_v1_parent_is_our_own_memory_group(tmp_path: Path) -> None:
    own = tmp_path / "memory" / "process_api" / "abc"
    own.mkdir(parents=True)
    (own / "memory.limit_in_bytes").write_text("9223372036854771712\n")
    (tmp_path / "memory" / "memory.limit_in_bytes").write_text("9223372036854771712\n")
    proc_self_cgroup = tmp_path / "cgroup"
    proc_self_cgroup.write_text("4:memory:/process_api/abc\n0::/\n")
    assert find_parent(tmp_path, proc_self_cgroup) == (1, own)
