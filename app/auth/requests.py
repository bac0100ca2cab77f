"""Who may subscribe and publish, decided from the request.

Subscribers present a JWT by ``Authorization: Bearer``, by the ``COOKIE_NAME``
cookie, or by ``?access_token=`` (a browser's ``EventSource`` cannot set
headers, so the cookie is preferred there: it stays out of URLs and logs).
Publishers present ``PUBLISH_TOKEN`` (the simple mode) or a JWT with publish
grants, by ``Authorization: Bearer`` only.

A publisher is checked in two steps, so a request naming many channels (a
batch) verifies its token once: ``publisher_grants`` here (who it is: 401, or
403 for a wrong simple token), then the publish service's grant check per
channel (403, :mod:`app.publishing`), which the Mercure hub's publish shares.

Failures map to one status each: 401 for a missing-when-required, malformed,
expired or badly signed token; 403 for a valid token that does not grant the
channel. Token values never reach a log line or an error detail.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Sequence

from fastapi import HTTPException, Request

from app.auth.grants import ANONYMOUS, Grants
from app.auth.tokens import InvalidTokenError, TokenVerifier
from app.core.config import Settings
from app.core.security import secret_matches

__all__ = [
    "ACCESS_TOKEN_QUERY",
    "authorize_subscriber",
    "bearer_from_header",
    "bearer_token",
    "is_loopback",
    "publisher_grants",
    "subscriber_token",
]

ACCESS_TOKEN_QUERY = "access_token"
BEARER_CHALLENGE = {"WWW-Authenticate": "Bearer"}


def bearer_from_header(authorization: str) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header value, or None."""
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def bearer_token(request: Request) -> str | None:
    return bearer_from_header(request.headers.get("authorization", ""))


# Asked on every publish without a token: parsing an address each time is not free, and
# the answer never changes. Bounded, as every table is.
@functools.lru_cache(maxsize=1024)
def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def subscriber_token(request: Request, cookie_name: str) -> str | None:
    """The first token present: header, then cookie, then query parameter."""
    return (
        bearer_token(request)
        or request.cookies.get(cookie_name)
        or request.query_params.get(ACCESS_TOKEN_QUERY)
        or None
    )


def _verify(verifier: TokenVerifier, token: str) -> Grants:
    try:
        return verifier.verify(token)
    except InvalidTokenError as exc:
        raise HTTPException(401, f"invalid token: {exc}", headers=BEARER_CHALLENGE) from None


def authorize_subscriber(
    request: Request, settings: Settings, verifier: TokenVerifier, channels: Sequence[str]
) -> frozenset[str]:
    """Check the subscriber; returns the channels on which it may see private events."""
    token = subscriber_token(request, settings.cookie_name) if verifier.enabled else None
    if token is None:
        if not settings.allow_anonymous:
            raise HTTPException(
                401,
                "a token is required to subscribe (ALLOW_ANONYMOUS=false)",
                headers=BEARER_CHALLENGE,
            )
        return ANONYMOUS.private_channels(channels)
    grants = _verify(verifier, token)
    refused = [channel for channel in channels if not grants.can_subscribe(channel)]
    if refused:
        raise HTTPException(403, f"token does not grant subscribing to {refused[0]!r}")
    return grants.private_channels(channels)


def publisher_grants(
    token: str | None, settings: Settings, verifier: TokenVerifier, client: str
) -> Grants | None:
    """Who is publishing: None when it may publish on every channel (the publish token,
    or loopback while no publish credential is configured), else its JWT's grants for
    the publish service's grant check. Raises 401/403."""
    simple = settings.publish_token
    if token is None:
        if simple is None and not verifier.enabled:
            if is_loopback(client):
                return None
            raise HTTPException(
                403,
                "publishing is allowed from loopback only until PUBLISH_TOKEN or JWT_* is set",
            )
        raise HTTPException(
            401,
            "missing publish token: send Authorization: Bearer <token>",
            headers=BEARER_CHALLENGE,
        )
    if simple is not None and secret_matches(token, simple):
        return None
    if not verifier.enabled:
        raise HTTPException(403, "invalid publish token")
    return _verify(verifier, token)
