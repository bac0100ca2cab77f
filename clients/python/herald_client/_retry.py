"""When a publish is sent again, and how long the client waits first.

Pure: no I/O and no clock of its own (the schedule takes ``clock`` and ``random``), so the
policy is tested with a fake clock and the publishers only sleep what it says.

Design decisions (read before changing):

* What is retried. Every call carries an ``Idempotency-Key`` and every attempt the same
  one, so sending a publish again cannot publish it twice on a server that honours the key.
  So every failure after which the request may or may not have reached Herald is retried:
  timeouts, refused and reset connections, a connection closed before the whole answer
  came; and the statuses that mean "not now": 408, 429, 502, 503 and 504. Any other 4xx is
  the request's own fault and fails at once (a 409 too: Herald has no key "in flight", it
  looks a key up in the same atomic step that publishes); so does a 500, a bug that
  retrying would only hide.
* How long. ``Retry-After`` when the answer has one: it is the server's word on when it
  can take the request, honoured up to ``retry_after_max`` and spread by up to
  ``backoff_base`` more, so clients refused at the same moment do not all return at the
  same moment. Otherwise exponential backoff with equal jitter: half of each step fixed,
  so no retry comes back at once, half random, so cut clients come back spread out.
* When to stop. After ``max_attempts`` attempts, or when the next attempt could not start
  before ``deadline`` seconds after the call began; each attempt's timeout is cut to what
  remains of the deadline, so a call ends within about ``deadline`` seconds whatever the
  network does. Waiting past the deadline only to fail is pointless, so a wait that would
  end past it ends the call at once. Herald remembers a key for
  ``PUBLISH_IDEMPOTENCY_SECONDS`` (300 by default): a deadline well inside that window
  (30 s) keeps every retry of a call within it, where a retry cannot publish twice.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime

__all__ = [
    "DEFAULT_RETRY_POLICY",
    "RETRIED_STATUSES",
    "RetryPolicy",
    "RetrySchedule",
    "parse_retry_after",
]

RETRIED_STATUSES = frozenset({408, 429, 502, 503, 504})
DEFAULT_MAX_ATTEMPTS = 5
DEFAULT_DEADLINE_SECONDS = 30.0
DEFAULT_BACKOFF_BASE_SECONDS = 0.2
DEFAULT_BACKOFF_MAX_SECONDS = 5.0
DEFAULT_RETRY_AFTER_MAX_SECONDS = 30.0
_DELAY_SECONDS = re.compile(r"[0-9]+")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How a publish call retries. ``max_attempts`` counts the first attempt too (1: never
    retry); ``deadline`` bounds the whole call in seconds; the n-th retry without
    ``Retry-After`` waits between half and all of ``backoff_base * 2 ** (n - 1)``, capped
    at ``backoff_max``; a ``Retry-After`` is honoured up to ``retry_after_max`` seconds;
    ``retried_statuses`` are the answers worth sending the same request again for."""

    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    deadline: float = DEFAULT_DEADLINE_SECONDS
    backoff_base: float = DEFAULT_BACKOFF_BASE_SECONDS
    backoff_max: float = DEFAULT_BACKOFF_MAX_SECONDS
    retry_after_max: float = DEFAULT_RETRY_AFTER_MAX_SECONDS
    retried_statuses: frozenset[int] = field(default=RETRIED_STATUSES)
    # A deadline past Herald's PUBLISH_IDEMPOTENCY_SECONDS lets a late retry publish again.

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1 (1: no retries)")
        for name in ("deadline", "backoff_base", "backoff_max", "retry_after_max"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number of seconds, not {value!r}")
        if self.deadline == 0:
            raise ValueError("deadline must be more than 0 seconds")

    def backoff(self, retry: int, random: Callable[[], float]) -> float:
        """The wait before retry number ``retry`` (1 for the first) without ``Retry-After``;
        ``random()`` in [0, 1) places it in the upper half of the step."""
        step = min(self.backoff_max, self.backoff_base * 2.0 ** min(retry - 1, 64))
        return step / 2 + random() * step / 2

    def honour_retry_after(self, seconds: float, random: Callable[[], float]) -> float:
        """The wait for an answer that said ``Retry-After: seconds``."""
        return min(seconds, self.retry_after_max) + random() * self.backoff_base


DEFAULT_RETRY_POLICY = RetryPolicy()


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value: delay-seconds or an HTTP date (RFC 9110);
    None when absent or unreadable (then the backoff decides). A date in the past is 0."""
    if value is None:
        return None
    value = value.strip()
    if _DELAY_SECONDS.fullmatch(value):
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # RFC 9110 dates are GMT; a zone-less one is read as such
        when = when.replace(tzinfo=timezone.utc)
    now = now or datetime.now(timezone.utc)
    return max(0.0, (when - now).total_seconds())


class RetrySchedule:
    """One call's attempts under a policy: how long each may take, and the wait before the
    next one, or None when there is none."""

    def __init__(
        self, policy: RetryPolicy, *, clock: Callable[[], float], random: Callable[[], float]
    ) -> None:
        self.policy = policy
        self._clock = clock
        self._random = random
        self._ends_at = clock() + policy.deadline
        self.attempts = 0

    def start_attempt(self, timeout: float) -> float:
        """Count an attempt; returns its timeout: ``timeout``, cut to what remains of the
        deadline."""
        self.attempts += 1
        return max(0.0, min(timeout, self._ends_at - self._clock()))

    def wait_before_retry(self, retry_after: float | None = None) -> float | None:
        """The wait before the next attempt after a failed one, or None to stop."""
        if self.attempts >= self.policy.max_attempts:
            return None
        if retry_after is None:
            wait = self.policy.backoff(self.attempts, self._random)
        else:
            wait = self.policy.honour_retry_after(retry_after, self._random)
        if self._clock() + wait >= self._ends_at:
            return None
        return wait
