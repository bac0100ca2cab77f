"""Writing to a stream from outside its task: step the ASGI ``send`` coroutine by hand.

Why: fan-out is the hot path. Waking each subscriber's task to write one event
costs a future, a callback and a task step per subscriber per event — measured
as the larger part of the CPU a delivery costs. But an ASGI server's ``send``
for a body chunk almost always finishes without suspending (uvicorn writes to
the transport and returns; it only awaits when the socket's buffer is full and
the transport has paused writing). So the hub's flush pass runs the ``send``
coroutine one step itself: if it finishes, the event is on the socket and no
task was woken. If it suspends, the write is handed, half done, to the stream's
own task, which finishes it with :func:`resume` — exactly as if that task had
awaited it from the start (the same future is awaited, cancellation and errors
go into the same coroutine).
"""

from __future__ import annotations

import types
from collections.abc import Awaitable, Generator
from typing import Any

__all__ = ["HeldWrite", "resume", "step"]

HeldWrite = tuple[Generator[Any, Any, None], Any]
"""A write that suspended: its iterator and what it yielded (the future it waits on)."""


def step(write: Awaitable[None]) -> HeldWrite | None:
    """Run ``write`` until it finishes (None) or suspends (returns it to be resumed).
    Exceptions from the write propagate; the write is over then."""
    iterator = write.__await__()
    try:
        pending = iterator.send(None)
    except StopIteration:
        return None
    return iterator, pending


@types.coroutine
def resume(held: HeldWrite) -> Generator[Any, Any, None]:
    """Finish a held write in the awaiting task: ``await resume(held)``."""
    write, pending = held
    while True:
        try:
            value = yield pending
        except BaseException as exc:  # cancellation or an error thrown in by the task
            try:
                pending = write.throw(exc)
            except StopIteration:
                return
        else:
            try:
                pending = write.send(value)
            except StopIteration:
                return
