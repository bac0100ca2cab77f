"""Lossless shedding: which streams give memory back when the box passes its critical line.

An idle stream costs the same small amount whatever it does; what a crowd of
readers that stall can add on top is what each stream holds *beyond* that: its
queue of events, its transport's write buffer, and the socket's unsent bytes in
the kernel. Those are the bytes that push a box into the OOM killer, and
cutting the streams that hold them is what gives them back.

Design decisions (read before changing):

1. Only streams that hold something (at least :data:`SHED_MIN_HOLDING_BYTES`)
   are candidates, heaviest first, and only until this worker's share of the
   excess is covered. An idle or a keeping-up stream holds nothing and is never
   shed: a box that survives by dropping its well-behaved crowd has not survived.
2. A shed stream is aborted (``CloseReason.MEMORY``, a reset): the transport's
   buffer and the kernel's send queue are freed at once, not after a FIN that
   waits behind bytes the client is not reading. The client resumes after its
   ``retry:`` with the last id it read and gets the rest from history, so the
   cut loses nothing.
3. The kernel's part is read per socket (``SIOCOUTQ``) and doubled: a socket
   buffer is charged about twice its payload (the kernel's own ``SO_SNDBUF``
   doubling accounts for the same overhead). It is one system call, paid only
   for a stream with something queued behind its socket (a stream whose queue
   and transport buffer are empty has at most a few frames in flight) and only
   when a shed is due, never per event.
4. Every worker reads the same box (:mod:`app.memory.box`), so every worker
   sheds at the same moment; each gives back its share (``excess / workers``),
   not the whole excess, or two workers would cut twice what is needed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from app.sse.connection import Connection
from app.sse.stream_socket import kernel_unsent_bytes

__all__ = [
    "KERNEL_CHARGE_FACTOR",
    "SHED_MIN_HOLDING_BYTES",
    "ShedPlan",
    "plan_shed",
    "stream_holding",
]

KERNEL_CHARGE_FACTOR = 2
"""What the kernel is charged per unsent byte of a socket (payload plus buffer overhead)."""
SHED_MIN_HOLDING_BYTES = 32 * 1024
"""A stream holding less is a reader momentarily behind, not one that stalled."""


def stream_holding(connection: Connection) -> int:
    """Bytes this stream holds beyond its idle cost: queue, transport buffer, kernel queue."""
    held = connection.queued_bytes
    transport = connection.transport
    if transport is None or transport.is_closing():
        return held
    buffered = transport.get_write_buffer_size()
    if held or buffered:
        # Something waits behind the socket: its send queue is full, worth a system call.
        held += buffered + KERNEL_CHARGE_FACTOR * kernel_unsent_bytes(transport)
    return held


@dataclass(frozen=True, slots=True)
class ShedPlan:
    """The streams to cut, heaviest first, and the bytes they hold together."""

    streams: list[Connection]
    held_bytes: int


def plan_shed(
    connections: Iterable[Connection],
    need_bytes: int,
    holding: Callable[[Connection], int] = stream_holding,
) -> ShedPlan:
    """The fewest heaviest streams that together hold at least ``need_bytes`` (or all that
    hold anything, when they hold less)."""
    if need_bytes <= 0:
        return ShedPlan([], 0)
    sizes = [(holding(c), c) for c in connections if not c.closed]
    heavy = sorted(
        (item for item in sizes if item[0] >= SHED_MIN_HOLDING_BYTES), key=lambda item: -item[0]
    )
    chosen: list[Connection] = []
    total = 0
    for size, connection in heavy:
        if total >= need_bytes:
            break
        chosen.append(connection)
        total += size
    return ShedPlan(chosen, total)
