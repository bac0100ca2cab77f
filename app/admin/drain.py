"""Draining: this worker refuses new streams and lets its open ones go, before maintenance.

Design decisions:

* A flag read by an admission check (``Hub.admission_checks`` and the response
  service's), like the memory guard's: a refused stream is a 503 with
  ``Retry-After`` before any byte is sent, and the check costs one attribute
  read per new stream.
* Open streams are closed once, when the drain starts, each with a jittered
  ``retry:`` (:func:`jittered_retry_ms`) so the clients come back spread over a
  window instead of in one instant, and resume from their ``Last-Event-ID``
  (nothing is lost: the events published meanwhile are in the history).
  Streamed responses (``/api/responses``) are not cut: a run ends by itself
  within ``RESPONSE_TIMEOUT_SECONDS``, and new ones are refused.
* ``Retry-After`` of a refusal is the end of that reconnect window (at least one
  second): a client refused now is told to come back when the closed ones do.
* The state belongs to the worker's process and is not persisted: a worker that
  starts during a drain (recycled by ``--max-requests``, a crash) accepts streams
  until the drain is asked for again. ``/health`` shows the state per worker.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable

from app.sse.hub import StreamRefusedError

__all__ = ["DRAIN_DETAIL", "RETRY_JITTER", "DrainState", "jittered_retry_ms"]

DRAIN_DETAIL = "this worker is draining for maintenance; retry later or elsewhere"
RETRY_JITTER = 1.0
"""A closed stream is told to wait ``retry_ms`` plus up to this factor more, as on shutdown."""

_MS = 1000


def jittered_retry_ms(retry_ms: int, draw: Callable[[], float] = random.random) -> int:
    """A reconnect delay spread uniformly over ``[retry_ms, (1 + RETRY_JITTER) * retry_ms)``."""
    return retry_ms + int(draw() * RETRY_JITTER * retry_ms)


class DrainState:
    """Whether this worker is draining; its :meth:`refusal` is an admission check."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._since: float | None = None
        self.retry_after = 1
        self.refused = 0

    @property
    def draining(self) -> bool:
        return self._since is not None

    def start(self, retry_ms: int) -> bool:
        """Begin (or renew) draining; ``True`` if this worker was not draining already."""
        started = self._since is None
        if started:
            self._since = self._clock()
        window_ms = retry_ms * (1 + RETRY_JITTER)
        self.retry_after = max(1, math.ceil(window_ms / _MS))
        return started

    def stop(self) -> bool:
        """Accept streams again; ``True`` if this worker was draining."""
        was, self._since = self._since is not None, None
        return was

    def refusal(self) -> StreamRefusedError | None:
        if self._since is None:
            return None
        self.refused += 1
        return StreamRefusedError(DRAIN_DETAIL, retry_after=self.retry_after)

    def as_dict(self) -> dict[str, object]:
        """The ``drain`` section of ``/health``."""
        since = self._since
        return {
            "draining": since is not None,
            "for_s": None if since is None else round(self._clock() - since, 1),
            "retry_after": self.retry_after if since is not None else None,
            "refused": self.refused,
        }
