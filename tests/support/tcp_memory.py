"""Kernel memory of TCP sockets: the machine's total, and one server port's connections.

Two views, because this machine is shared: ``/proc/net/sockstat`` counts every
TCP socket of the network namespace (what a container would be charged, and
what other people's tests move too), while ``ss -tm`` reports each socket's own
buffers, so the connections of one server port (both ends, on loopback) can be
summed exactly whatever else runs.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess

from app.memory.sockets import DEFAULT_SOCKSTAT, parse_sockstat_tcp_bytes

__all__ = ["SS", "port_tcp_memory", "sockstat_tcp_memory"]

SS = shutil.which("ss")
_SKMEM = re.compile(r"skmem:\(([^)]*)\)")
_FIELD = re.compile(r"([a-z]+)(\d+)")
# rmem_alloc, wmem_queued (the send queue, overhead included) and forward_alloc (the
# reserve charged ahead): what the kernel's TCP memory counts for one socket.
_CHARGED = ("r", "w", "f")


def sockstat_tcp_memory() -> int:
    """Bytes of TCP buffers in this network namespace (every socket of every process)."""
    value = parse_sockstat_tcp_bytes(DEFAULT_SOCKSTAT.read_text(), os.sysconf("SC_PAGE_SIZE"))
    assert value is not None, "no TCP line in /proc/net/sockstat"
    return value


def port_tcp_memory(port: int) -> int:
    """Bytes of buffers held by every TCP socket from or to ``port`` (needs ``ss``)."""
    assert SS is not None, "ss (iproute2) is not installed"
    listing = subprocess.run(
        [SS, "-tmnH", "state", "all", f"( sport = :{port} or dport = :{port} )"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    total = 0
    for skmem in _SKMEM.findall(listing):
        fields = dict(_FIELD.findall(skmem))
        total += sum(int(fields.get(name, "0")) for name in _CHARGED)
    return total
