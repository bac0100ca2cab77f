"""Short-lived signed tickets for the admin stream.

A browser's ``EventSource`` cannot send headers, so the dashboard cannot present
``ADMIN_TOKEN`` the way the rest of the admin API wants it. Putting the token
itself in the stream's URL would leave a long-lived secret in access logs,
proxy logs and browser history. Instead the page trades the token (sent in a
header) for a ticket and puts the ticket in the URL:

    ticket = <expires>.<nonce>.<signature>
    signature = base64url(HMAC-SHA256(key, "admin-stream:<expires>:<nonce>"))
    key = HMAC-SHA256(ADMIN_TOKEN, "herald admin stream ticket v1")

Design decisions:

* Stateless. Any worker of any instance that knows ``ADMIN_TOKEN`` can check a
  ticket another one issued, with nothing stored and nothing to bound; the cost
  is that a ticket cannot be revoked before it expires (``ADMIN_TICKET_SECONDS``,
  60 s). Changing ``ADMIN_TOKEN`` changes the key, so every ticket dies with it.
* The key is *derived* from the token, never the token itself: a ticket carries
  an HMAC under a key used for nothing else, and the purpose string binds the
  ticket to the admin stream, so it opens nothing else now or later.
* A ticket is checked when a stream opens. A stream that outlives its ticket
  keeps going; the browser's reconnect after the ticket expired is refused and
  the page asks for a fresh one.
* The signature is compared with ``hmac.compare_digest`` on bytes, so the time
  taken says nothing about how much of a forged signature was right.
* Expiry uses wall-clock time (``time.time``), since a ticket crosses
  processes and hosts; a ticket claiming to live longer than the TTL (from a
  host whose clock runs ahead) is refused too.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import secrets
import time
from collections.abc import Callable

from pydantic import SecretStr

__all__ = ["MAX_TICKET_LENGTH", "TicketError", "issue_ticket", "verify_ticket"]

MAX_TICKET_LENGTH = 128
"""Longer query values are refused before any parsing or hashing."""

_KEY_PURPOSE = b"herald admin stream ticket v1"
_SCOPE = "admin-stream"
_NONCE_BYTES = 9
# A ticket minted by a host whose clock is ahead of ours by up to this much is
# still accepted; more than that and its expiry is too far in the future.
_CLOCK_SKEW_SECONDS = 5.0


class TicketError(ValueError):
    """The ticket is malformed, forged, signed with another key, or expired."""


def _key(admin_token: SecretStr) -> bytes:
    return hmac.new(admin_token.get_secret_value().encode(), _KEY_PURPOSE, hashlib.sha256).digest()


def _signature(key: bytes, expires: int, nonce: str) -> str:
    message = f"{_SCOPE}:{expires}:{nonce}".encode()
    digest = hmac.new(key, message, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def issue_ticket(
    admin_token: SecretStr, ttl_seconds: float, *, now: Callable[[], float] = time.time
) -> str:
    """A ticket for the admin stream, valid for ``ttl_seconds`` from now."""
    expires = math.ceil(now() + ttl_seconds)
    nonce = secrets.token_urlsafe(_NONCE_BYTES)
    return f"{expires}.{nonce}.{_signature(_key(admin_token), expires, nonce)}"


def verify_ticket(
    ticket: str,
    admin_token: SecretStr,
    ttl_seconds: float,
    *,
    now: Callable[[], float] = time.time,
) -> None:
    """Raise :class:`TicketError` unless ``ticket`` was issued with this token and is live."""
    if len(ticket) > MAX_TICKET_LENGTH or not ticket.isascii():
        raise TicketError("malformed ticket")
    parts = ticket.split(".")
    if len(parts) != 3 or not parts[0].isdigit():
        raise TicketError("malformed ticket")
    expires_text, nonce, presented = parts
    expires = int(expires_text)
    expected = _signature(_key(admin_token), expires, nonce)
    # Checked before the expiry, so an unsigned ticket learns nothing about clocks.
    if not hmac.compare_digest(presented.encode(), expected.encode()):
        raise TicketError("ticket signature does not match")
    current = now()
    if expires <= current:
        raise TicketError("ticket expired")
    if expires > current + ttl_seconds + _CLOCK_SKEW_SECONDS:
        raise TicketError("ticket expiry is too far ahead")
