"""``python -m load_tests.density``'s pure parts: the kernel readings it parses, the per-stream
arithmetic (the server's end is half of what both ends of a loopback stream hold) and who a
traced allocation is charged to."""

from __future__ import annotations

from typing import Any

import pytest

from load_tests.density import (
    KINDS,
    PATHS,
    kernel_per_end,
    owner_of,
    parse_slabinfo,
    parse_sockstat_tcp_pages,
    per_stream,
    render,
)

SLABINFO = """\
slabinfo - version: 2.1
# name            <active_objs> <num_objs> <objsize> <objperslab> <pagesperslab> : tunables
TCP                 1200   1260   2432   13    8 : tunables    0    0    0 : slabdata  97  97  0
sock_inode_cache    2400   2450    832   39    8 : tunables    0    0    0 : slabdata  63  63  0
kmalloc-cg-64       5000   5120     64   64    1 : tunables    0    0    0 : slabdata  80  80  0
ext4_inode_cache    9000   9000   1200   27    8 : tunables    0    0    0 : slabdata 334 334  0
"""

SOCKSTAT = """\
sockets: used 4242
TCP: inuse 2001 orphan 0 tw 3 alloc 2010 mem 17
UDP: inuse 4 mem 2
"""


def test_slabinfo_gives_active_objects_times_their_size_for_the_sockets_slabs() -> None:
    assert parse_slabinfo(SLABINFO) == {
        "TCP": 1200 * 2432,
        "sock_inode_cache": 2400 * 832,
        "kmalloc-cg-64": 5000 * 64,
    }


def test_slabinfo_without_rows_gives_nothing() -> None:
    assert parse_slabinfo("slabinfo - version: 2.1\n# name\n\n") == {}


def test_sockstat_gives_tcp_pages_not_udp() -> None:
    assert parse_sockstat_tcp_pages(SOCKSTAT) == 17
    assert parse_sockstat_tcp_pages("sockets: used 1\n") == 0


def test_per_stream_figures_charge_the_server_half_of_the_kernel() -> None:
    figures = per_stream(
        1000,
        (70 * 1024 * 1024, 70 * 1024 * 1024 + 1000 * 2048),
        ({"TCP": 100_000, "filp": 0}, {"TCP": 100_000 + 2 * 1000 * 2432, "filp": 2 * 1000 * 192}),
        (4096, 4096 + 2 * 1000 * 8),
    )
    assert figures["per_stream_bytes"] == 2048
    assert figures["rss_idle_bytes"] == 70 * 1024 * 1024
    assert figures["kernel_slab_per_end_bytes"] == {"TCP": 2432, "filp": 192}
    assert figures["kernel_tcp_buffers_per_end_bytes"] == 8
    assert kernel_per_end(figures) == 2432 + 192 + 8


def test_a_slab_missing_before_counts_from_zero() -> None:
    figures = per_stream(10, (0, 0), ({}, {"dentry": 20 * 192}), (0, 0))
    assert figures["kernel_slab_per_end_bytes"] == {"dentry": 192}


def _result(kind: str, code: str, per_stream_bytes: float, kernel: float) -> dict[str, Any]:
    return {
        "kind": kind,
        "code": code,
        "server": "app",
        "streams": 10_000,
        "pinged": 10_000,
        "per_stream_bytes": per_stream_bytes,
        "kernel_slab_per_end_bytes": {"TCP": kernel},
        "kernel_tcp_buffers_per_end_bytes": 0.0,
    }


def test_render_has_a_row_per_kind_and_code_in_kib() -> None:
    text = render(
        [
            _result("mercure", "this", 3.5 * 1024, 3.6 * 1024),
            _result("mercure", "before", 4.25 * 1024, 3.6 * 1024),
        ]
    )
    header, this, before = text.splitlines()
    assert header.split() == [
        *("kind", "code", "server", "streams", "pinged", "RSS/stream", "kernel/end")
    ]
    assert this.split() == [
        *("mercure", "this", "app", "10,000", "10,000", "3.50", "KiB", "3.60", "KiB")
    ]
    assert "4.25 KiB" in before


def test_every_kind_has_a_path_and_mercure_subscribes_with_a_match() -> None:
    assert set(KINDS) == {"floor", "one", "three", "mercure"}
    assert PATHS["mercure"].startswith("/.well-known/mercure?match=")
    assert PATHS["three"].count("channel=") == 3


@pytest.mark.parametrize(
    ("frames", "owner"),
    [
        (["site-packages/uvicorn/_compat.py:30", "uvicorn/server.py:86"], "transport and socket"),
        (["/w/app/broker/history.py:85", "/w/app/broker/memory.py:122"], "broker and channel"),
        (["/w/app/mercure/subscriptions.py:57", "/w/app/mercure/stream.py:93"], "Mercure subscr"),
        (["/w/app/sse/hub.py:548", "lib/python3.11/contextlib.py:210"], "Connection"),
        (["/w/app/sse/hub.py:704"], "hub registries"),
        (["uvicorn/protocols/utils.py:16", "httptools_impl.py:108"], "addresses"),
        (["/w/app/serving/protocols.py:244", "/w/app/sse/stream_response.py:476"], "detached"),
        (["/w/app/wire/event_id.py:50", "/w/app/sse/hub.py:641"], "cursor"),
        (["/w/somewhere/else.py:1"], "other"),
    ],
)
def test_an_allocation_is_charged_to_its_most_recent_known_frame(
    frames: list[str], owner: str
) -> None:
    assert owner in owner_of(frames)
