"""Replays in pages: how many run at once in a worker, and what their pages hold.

Design decisions (read before changing):

1. A resume reads history a page at a time (``SSE_REPLAY_PAGE_EVENTS`` events and
   ``SSE_REPLAY_PAGE_KB`` of frames, at least one event: contract item 6 of
   ``app.broker.base``) and writes each page through the stream's own ``send``
   before it reads the next (``app.sse.stream_response``). A client that does not read
   blocks its own replay, paced by the transport's and the socket's caps like
   any other write, and one replay holds one page, not its channels' history.
2. At most ``SSE_REPLAY_CONCURRENCY`` replays run at once per worker, so the pages
   in flight stay under that many pages (each plus one event, the page's floor)
   whatever crowd resumes at once: a deploy, a network blip, a Redis restart
   closing every stream. A stream past the cap waits its turn already
   registered (live events queue under the usual bounds, as while the broker is
   unreachable) but holds no page, and gets ``retry:`` and heartbeats meanwhile.
3. A new stream (no ``Last-Event-ID``) takes no turn: its replay is the head
   alone, one small read, and making it wait behind resumes would delay every
   new subscriber during a reconnect storm for nothing.
4. Turns go in arrival order: a replay that ends hands its turn to the first
   stream waiting, so newcomers cannot starve a stream that waits. A stream that
   leaves while waiting gives up its place (and a turn handed to it just then).
5. Counted for the hub's stats (admin metrics, Prometheus): replays running and
   waiting, the bytes of pages read and not yet written, replays started and how
   many of them had to wait.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque

__all__ = ["ReplayGate"]


class ReplayGate:
    """The turns of replays in one worker (design notes 2 and 4) and their counts."""

    __slots__ = ("_waiting", "limit", "page_bytes", "running", "started", "waited")

    def __init__(self, limit: int) -> None:
        self.limit = max(1, limit)
        self.running = 0
        self.page_bytes = 0
        self.started = 0
        self.waited = 0
        self._waiting: deque[asyncio.Future[None]] = deque()

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def turn(self) -> asyncio.Future[None]:
        """A place in the queue: done once this replay may run. Give it back with
        ``leave`` whatever happens, whether it came or not."""
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.started += 1
        if self.running < self.limit and not self._waiting:
            self.running += 1
            turn.set_result(None)
        else:
            self.waited += 1
            self._waiting.append(turn)
        return turn

    def leave(self, turn: asyncio.Future[None]) -> None:
        """The replay ended (or the stream left while waiting): pass its turn on."""
        if not turn.done() or turn.cancelled():
            turn.cancel()
            with contextlib.suppress(ValueError):
                self._waiting.remove(turn)
            return
        while self._waiting:
            following = self._waiting.popleft()
            if not following.done():
                following.set_result(None)  # the turn moves on: ``running`` is unchanged
                return
        self.running -= 1

    def hold(self, size: int) -> None:
        """A page of ``size`` bytes was read and waits to be written."""
        self.page_bytes += size

    def release(self, size: int) -> None:
        self.page_bytes -= size

    def stats(self) -> dict[str, int]:
        return {
            "running": self.running,
            "waiting": len(self._waiting),
            "limit": self.limit,
            "page_bytes": self.page_bytes,
            "started": self.started,
            "waited": self.waited,
        }
