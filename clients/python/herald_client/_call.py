"""One publish call across its attempts, without I/O: the sync and the async publisher send,
sleep and loop; this decides what each answer or failure means.

Every attempt of a call sends the same body with the same ``Idempotency-Key`` (a fresh
``uuid4`` unless the caller gave one): that is what lets Herald answer a repeated attempt
with the first answer instead of publishing again.
"""

from __future__ import annotations

import json
import random
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Generic

import httpx

from ._exceptions import PublishError, PublishRejected, PublishUnavailable
from ._retry import RetryPolicy, RetrySchedule, parse_retry_after
from ._wire import (
    IDEMPOTENCY_KEY_HEADER,
    PreparedPublish,
    ResultT,
    error_detail,
    was_replayed,
)

__all__ = ["RETRIED_TRANSPORT_ERRORS", "PublishCall", "Wait", "new_idempotency_key"]

RETRIED_TRANSPORT_ERRORS: tuple[type[httpx.HTTPError], ...] = (
    httpx.TimeoutException,  # connect, write, read, or waiting for a pooled connection
    httpx.NetworkError,  # refused, reset, closed while writing or reading
    httpx.RemoteProtocolError,  # the server closed the connection before its whole answer
)


def new_idempotency_key() -> str:
    return str(uuid.uuid4())


@dataclass(frozen=True, slots=True)
class Wait:
    """Sleep this long, then send the call's request again."""

    seconds: float


class PublishCall(Generic[ResultT]):
    def __init__(
        self,
        prepared: PreparedPublish[ResultT],
        headers: Mapping[str, str],
        idempotency_key: str | None,
        policy: RetryPolicy,
        *,
        clock: Callable[[], float] = time.monotonic,
        random: Callable[[], float] = random.random,
    ) -> None:
        if idempotency_key is None:
            idempotency_key = new_idempotency_key()
        elif not isinstance(idempotency_key, str) or not idempotency_key.isascii():
            # A header carries ASCII only; Herald's own rule (visible ASCII, 1-255
            # characters) is Herald's to judge, in a 422.
            raise ValueError("idempotency_key must be a string of ASCII characters")
        elif not idempotency_key:
            raise ValueError("idempotency_key must not be empty")
        self.prepared: PreparedPublish[ResultT] = prepared
        self.idempotency_key = idempotency_key
        self.headers = {**headers, IDEMPOTENCY_KEY_HEADER: idempotency_key}
        self.schedule = RetrySchedule(policy, clock=clock, random=random)

    def start_attempt(self, timeout: float) -> httpx.Timeout:
        """Count an attempt; returns its timeout (``timeout``, cut to the deadline)."""
        return httpx.Timeout(self.schedule.start_attempt(timeout))

    def answered(self, response: httpx.Response) -> ResultT | Wait:
        """The result of a read answer, or a wait before trying again; raises when the
        call failed."""
        status = response.status_code
        if 200 <= status < 300:
            try:
                answer = json.loads(response.content)
                return self.prepared.read(
                    answer, was_replayed(response.headers), self.idempotency_key, self.attempts
                )
            except ValueError as exc:
                raise self._error(PublishError, status, f"unreadable answer: {exc}") from None
        detail = error_detail(response.content)
        if status in self.schedule.policy.retried_statuses:
            retry_after = parse_retry_after(response.headers.get("retry-after"))
            wait = self.schedule.wait_before_retry(retry_after)
            if wait is None:
                raise self._error(PublishUnavailable, status, detail)
            return Wait(wait)
        if 400 <= status < 500:
            raise self._error(PublishRejected, status, detail)
        raise self._error(PublishError, status, detail)

    def failed(self, exc: httpx.HTTPError) -> Wait:
        """The wait before trying again after an attempt that got no answer; raises (from
        ``exc``) when the call failed."""
        detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        if not isinstance(exc, RETRIED_TRANSPORT_ERRORS):
            raise self._error(PublishError, None, detail) from exc
        wait = self.schedule.wait_before_retry()
        if wait is None:
            raise self._error(PublishUnavailable, None, detail) from exc
        return Wait(wait)

    @property
    def attempts(self) -> int:
        return self.schedule.attempts

    def _error(self, kind: type[PublishError], status: int | None, detail: object) -> PublishError:
        return kind(status, detail, idempotency_key=self.idempotency_key, attempts=self.attempts)
