"""Memory limit detection against hand-made cgroup file trees."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.memory.limits import (
    DEFAULT_MEMORY_LIMIT_BYTES,
    MemoryLimit,
    detect_memory_limit,
    parse_cgroup_value,
)

MIB = 1024 * 1024
V1_UNLIMITED = "9223372036854771712\n"


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _detect(tmp_path: Path, configured_mb: float | None = None) -> MemoryLimit:
    return detect_memory_limit(
        configured_mb,
        cgroup_root=tmp_path / "cgroup",
        proc_self_cgroup=tmp_path / "proc_self_cgroup",
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("268435456\n", 268435456),
        ("  1024  ", 1024),
        ("max\n", None),
        (V1_UNLIMITED, None),
        (str(2**60), None),
        (str(2**60 - 1), 2**60 - 1),
        ("", None),
        ("garbage", None),
        ("-1", None),
        ("0", None),
        ("12.5", None),
    ],
)
def test_parse_cgroup_value(text: str, expected: int | None) -> None:
    assert parse_cgroup_value(text) == expected


def test_v2_numeric_root_memory_max(tmp_path: Path) -> None:
    _write(tmp_path / "cgroup" / "memory.max", "268435456\n")

    assert _detect(tmp_path) == MemoryLimit(bytes=256 * MIB, source="cgroup-v2")


def test_v2_max_means_unlimited_and_falls_through_to_default(tmp_path: Path) -> None:
    _write(tmp_path / "cgroup" / "memory.max", "max\n")

    assert _detect(tmp_path) == MemoryLimit(bytes=DEFAULT_MEMORY_LIMIT_BYTES, source="default")


def test_v2_nested_path_from_proc_self_cgroup_wins_over_root(tmp_path: Path) -> None:
    _write(tmp_path / "proc_self_cgroup", "0::/kubepods/burstable/pod1234/abcd\n")
    _write(tmp_path / "cgroup" / "kubepods/burstable/pod1234/abcd/memory.max", "134217728\n")
    # The root value is deliberately different: the process's own cgroup must win.
    _write(tmp_path / "cgroup" / "memory.max", "268435456\n")

    assert _detect(tmp_path) == MemoryLimit(bytes=128 * MIB, source="cgroup-v2")


def test_v2_nested_path_missing_falls_back_to_root(tmp_path: Path) -> None:
    # Without a private cgroup namespace the named path is not under the mount.
    _write(tmp_path / "proc_self_cgroup", "0::/docker/0123abcd\n")
    _write(tmp_path / "cgroup" / "memory.max", "268435456\n")

    assert _detect(tmp_path) == MemoryLimit(bytes=256 * MIB, source="cgroup-v2")


def test_v2_path_escaping_the_mount_is_ignored(tmp_path: Path) -> None:
    _write(tmp_path / "proc_self_cgroup", "0::/../outside\n")
    _write(tmp_path / "outside" / "memory.max", "1024\n")

    assert _detect(tmp_path).source == "default"


def test_v1_numeric(tmp_path: Path) -> None:
    _write(tmp_path / "cgroup" / "memory" / "memory.limit_in_bytes", "536870912\n")

    assert _detect(tmp_path) == MemoryLimit(bytes=512 * MIB, source="cgroup-v1")


@pytest.mark.parametrize(
    "proc_self_cgroup",
    [
        "12:cpu,cpuacct:/docker/abc\n5:memory:/docker/abc\n0::/\n",
        # Controllers co-mounted in one hierarchy are listed comma-separated.
        "7:cpu,memory:/docker/abc\n",
    ],
)
def test_v1_nested_path_from_proc_self_cgroup(tmp_path: Path, proc_self_cgroup: str) -> None:
    _write(tmp_path / "proc_self_cgroup", proc_self_cgroup)
    _write(tmp_path / "cgroup" / "memory" / "docker/abc/memory.limit_in_bytes", "67108864\n")
    _write(tmp_path / "cgroup" / "memory" / "memory.limit_in_bytes", V1_UNLIMITED)

    assert _detect(tmp_path) == MemoryLimit(bytes=64 * MIB, source="cgroup-v1")


def test_v1_huge_value_means_unlimited(tmp_path: Path) -> None:
    _write(tmp_path / "cgroup" / "memory" / "memory.limit_in_bytes", V1_UNLIMITED)

    assert _detect(tmp_path) == MemoryLimit(bytes=DEFAULT_MEMORY_LIMIT_BYTES, source="default")


def test_v2_unlimited_falls_through_to_v1(tmp_path: Path) -> None:
    _write(tmp_path / "cgroup" / "memory.max", "max\n")
    _write(tmp_path / "cgroup" / "memory" / "memory.limit_in_bytes", "536870912\n")

    assert _detect(tmp_path) == MemoryLimit(bytes=512 * MIB, source="cgroup-v1")


def test_garbage_files_never_raise_and_fall_through(tmp_path: Path) -> None:
    _write(tmp_path / "proc_self_cgroup", "not a cgroup file\n\x00::\n")
    _write(tmp_path / "cgroup" / "memory.max", "lots\n")
    (tmp_path / "cgroup" / "memory").mkdir()
    (tmp_path / "cgroup" / "memory" / "memory.limit_in_bytes").write_bytes(b"\xff\xfe\x00")

    assert _detect(tmp_path) == MemoryLimit(bytes=DEFAULT_MEMORY_LIMIT_BYTES, source="default")


def test_limit_file_that_is_a_directory_is_skipped(tmp_path: Path) -> None:
    (tmp_path / "cgroup" / "memory.max").mkdir(parents=True)
    _write(tmp_path / "cgroup" / "memory" / "memory.limit_in_bytes", "1048576\n")

    assert _detect(tmp_path) == MemoryLimit(bytes=1 * MIB, source="cgroup-v1")


def test_setting_wins_over_cgroup(tmp_path: Path) -> None:
    _write(tmp_path / "cgroup" / "memory.max", "268435456\n")

    assert _detect(tmp_path, configured_mb=300) == MemoryLimit(bytes=300 * MIB, source="setting")


def test_fractional_setting_is_converted_to_whole_bytes(tmp_path: Path) -> None:
    assert _detect(tmp_path, configured_mb=0.5) == MemoryLimit(bytes=MIB // 2, source="setting")


@pytest.mark.parametrize("configured_mb", [0, -1, float("nan"), float("inf")])
def test_invalid_setting_raises(tmp_path: Path, configured_mb: float) -> None:
    with pytest.raises(ValueError, match="configured memory limit"):
        _detect(tmp_path, configured_mb=configured_mb)


def test_nothing_present_gives_512_mb_default(tmp_path: Path) -> None:
    limit = _detect(tmp_path)

    assert limit == MemoryLimit(bytes=512 * MIB, source="default")
    assert DEFAULT_MEMORY_LIMIT_BYTES == 512 * MIB
