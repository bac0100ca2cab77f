"""Who is asking: the token of a Mercure request, and RFC 6750 refusals.

* The token comes from ``Authorization: Bearer`` or, when that header is absent,
  from the ``MERCURE_COOKIE_NAME`` cookie (a header always wins and the cookie is
  then ignored, as the spec says). Never from the query string.
* Every 401/403 carries ``WWW-Authenticate: Bearer`` with ``resource_metadata``
  (RFC 9728) and, when a token was presented, the ``error`` code; the JSON body
  carries Herald's usual ``{"detail": ...}``.
* A publish authorized by cookie must come from the hub's own origin (``Origin``,
  else ``Referer``): the cookie is ambient, so this is the CSRF check.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import urlsplit

from starlette.requests import Request

from app.auth.tokens import InvalidTokenError, TokenVerifier
from app.core.config import Settings
from app.mercure.grants import ANONYMOUS, MercureGrants, verify_access_token
from app.mercure.topics import HUB_PATH

__all__ = [
    "METADATA_PATH",
    "MercureRefusal",
    "Presented",
    "authenticate",
    "hub_url",
    "same_origin",
]

METADATA_PATH = "/.well-known/oauth-protected-resource" + HUB_PATH
DEFAULT_HUB_URL = "https://localhost" + HUB_PATH


class MercureRefusal(Exception):
    """An error answer: status, ``{"detail": ...}`` and, for token errors, the challenge."""

    def __init__(self, status: int, detail: str, error: str | None = None, *, challenge: bool):
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.error = error
        self.challenge = challenge

    def headers(self, request: Request) -> dict[str, str]:
        if not self.challenge:
            return {}
        metadata = str(request.base_url).rstrip("/") + METADATA_PATH
        value = f'Bearer resource_metadata="{metadata}"'
        if self.error is not None:
            value += f', error="{self.error}"'
        return {"WWW-Authenticate": value}


@dataclass(frozen=True, slots=True)
class Presented:
    grants: MercureGrants
    by_cookie: bool
    expires_at: float | None  # the token's exp (seconds since the epoch)
    # The token itself, for the publisher's rate bucket (hashed there); never shown.
    token: str | None = field(default=None, repr=False)

    @property
    def anonymous(self) -> bool:
        return self.grants is ANONYMOUS and self.expires_at is None


def hub_url(settings: Settings) -> str:
    """The URL relative topics and patterns resolve against: the resource identifier
    when it is a URL, else the default hub URL (only the path matters for the rules)."""
    audience = settings.jwt_audience
    if audience and urlsplit(audience).scheme in ("http", "https"):
        return audience
    return DEFAULT_HUB_URL


def _token(request: Request, cookie_name: str) -> tuple[str | None, bool]:
    header = request.headers.get("authorization")
    if header is not None:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise MercureRefusal(
                400,
                "the Authorization header must be 'Bearer <token>'",
                "invalid_request",
                challenge=True,
            )
        return token.strip(), False
    cookie = request.cookies.get(cookie_name)
    return (cookie, True) if cookie else (None, False)


def authenticate(request: Request, settings: Settings, verifier: TokenVerifier) -> Presented:
    """The request's grants (``ANONYMOUS`` without a token); raises ``MercureRefusal``
    401 ``invalid_token`` for a token that fails any check."""
    token, by_cookie = _token(request, settings.mercure_cookie_name)
    if token is None:
        return Presented(ANONYMOUS, False, None)
    if not verifier.enabled:
        raise MercureRefusal(401, "this hub has no token key", "invalid_token", challenge=True)
    try:
        grants, expires = verify_access_token(
            verifier,
            token,
            audience=settings.jwt_audience,
            issuers=settings.jwt_issuer,
            hub_url=hub_url(settings),
            max_matcher_length=settings.mercure_max_matcher_length,
        )
    except InvalidTokenError as exc:
        raise MercureRefusal(
            401, f"invalid token: {exc}", "invalid_token", challenge=True
        ) from None
    return Presented(grants, by_cookie, float(expires), token)


def same_origin(request: Request) -> bool:
    """Whether ``Origin`` (else ``Referer``) names this host; False when neither is sent."""
    source = request.headers.get("origin") or request.headers.get("referer")
    if not source:
        return False
    parts = urlsplit(source)
    return bool(parts.netloc) and parts.netloc.lower() == request.headers.get("host", "").lower()
