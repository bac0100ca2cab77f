"""Why a publish did not happen, as both fronts answer it.

Exceptions::

    PublishRefusedError     — nothing was published: ``status``, a client-safe ``detail``,
     │                        and ``retry_after`` (seconds) when waiting helps (429, 503)
     └── PublishForbiddenError — 403: the publisher's grants do not cover a channel
    ClientGoneError         — the client left before its body arrived: nobody to answer

Each front answers a refusal in its own form (Herald's API and the Mercure hub both send
``{"detail": ...}``; Mercure adds the RFC 6750 challenge to a 403), so the service names
the status and the fronts never decide it.
"""

from __future__ import annotations

__all__ = ["ClientGoneError", "PublishForbiddenError", "PublishRefusedError"]


class PublishRefusedError(Exception):
    """A refused publish; nothing was published and no id was consumed."""

    def __init__(self, status: int, detail: str, *, retry_after: int | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.retry_after = retry_after


class PublishForbiddenError(PublishRefusedError):
    """403: the publisher may not publish on a channel the request names."""

    def __init__(self, detail: str) -> None:
        super().__init__(403, detail)


class ClientGoneError(Exception):
    """The client disconnected before its body arrived: nothing to publish, nobody to answer."""
