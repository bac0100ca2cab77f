"""Where a stalled reader first shows: its transport pausing, told to the memory guard.

A transport pauses when its write buffer passes the high-water mark: the client
stopped taking what is sent, and from then on the stream holds a full kernel
send buffer and a transport buffer on top of its idle cost. That is the moment
the box grows, one stream at a time, far faster than a periodic sample sees
when a busy channel's readers stall together.

Design decisions:

* One process-wide :data:`WRITE_PAUSES` counter: Herald's HTTP protocols
  (:mod:`app.serving.protocols`) call :meth:`WritePauses.paused` from
  ``pause_writing``, and the memory guard (:mod:`app.memory.guard`) listens.
  A protocol object per connection must not carry a reference of its own.
* The listener runs inside a ``transport.write`` call, in the middle of
  someone else's write pass: it only counts and schedules. The guard weighs
  and sheds from its own loop callback.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["WRITE_PAUSES", "WritePauses"]


class WritePauses:
    """Transports that paused since the guard last looked, and who to tell."""

    __slots__ = ("count", "listener")

    def __init__(self) -> None:
        self.count = 0
        self.listener: Callable[[], None] | None = None

    def paused(self) -> None:
        self.count += 1
        listener = self.listener
        if listener is not None:
            listener()

    def take(self) -> int:
        """How many paused since the last ``take``."""
        count, self.count = self.count, 0
        return count


WRITE_PAUSES = WritePauses()
