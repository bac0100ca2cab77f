"""Why a publish call failed.

Exceptions::

    PublishError            — the call failed: ``status`` (None when no answer came),
     │                        ``detail`` (Herald's ``{"detail": ...}``, or what went wrong),
     │                        the call's ``idempotency_key`` and how many ``attempts`` it made
     ├── PublishRejected    — Herald refused the request (a 4xx it does not ask to retry):
     │                        sending it again cannot succeed; nothing was published
     └── PublishUnavailable — no attempt succeeded before the attempts or the deadline ran
                              out (timeouts, cut connections, 503...): the event may or may
                              not have been published

A ``PublishError`` that is neither is an answer the client cannot use (a 500, a 202 it
cannot read) or a request httpx could not send (a malformed URL); the httpx exception, when
there is one, is its ``__cause__``.

After ``PublishUnavailable``, calling again with ``idempotency_key=exc.idempotency_key``
publishes the event at most once, within Herald's idempotency window from the first attempt
(``PUBLISH_IDEMPOTENCY_SECONDS``, 300 by default).
"""

from __future__ import annotations

__all__ = ["PublishError", "PublishRejected", "PublishUnavailable"]


class PublishError(Exception):
    """A publish call that did not end in a ``202``."""

    def __init__(
        self, status: int | None, detail: object, *, idempotency_key: str, attempts: int
    ) -> None:
        super().__init__(detail if status is None else f"{status}: {detail}")
        self.status = status
        self.detail = detail
        self.idempotency_key = idempotency_key
        self.attempts = attempts


class PublishRejected(PublishError):
    """Herald refused the request itself (401, 403, 413, 415, 422...); nothing was published."""

    status: int


class PublishUnavailable(PublishError):
    """Retries ran out; whether the event was published is unknown (retry with the same key)."""
