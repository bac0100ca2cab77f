"""Mercure access tokens for tests, signed with the settings the official suite uses."""

from __future__ import annotations

import time
from typing import Any

import jwt

__all__ = ["AUDIENCE", "ISSUER", "MERCURE_ENV", "SECRET", "detail", "token"]

SECRET = "!ChangeThisMercureHubJWTSecretKey!"
AUDIENCE = "https://localhost/.well-known/mercure"
ISSUER = "https://localhost"
MERCURE_ENV = {"JWT_SECRET": SECRET, "JWT_AUDIENCE": AUDIENCE, "JWT_ISSUER": ISSUER}
DETAIL_TYPE = "https://mercure.rocks/authorization-detail"


def detail(
    actions: list[str], *matches: str | dict[str, str], payload: dict[str, object] | None = None
) -> dict[str, object]:
    topics = [m if isinstance(m, dict) else {"match": m} for m in matches]
    found: dict[str, object] = {"type": DETAIL_TYPE, "actions": actions, "topics": topics}
    if payload is not None:
        found["payload"] = payload
    return found


def token(
    *details: dict[str, object],
    typ: str = "at+jwt",
    secret: Any = SECRET,
    algorithm: str = "HS256",
    **claims: object,
) -> str:
    """Only what hubs must enforce (no sub, client_id, iat or jti, like the official
    suite's token); ``claims`` override or add (``exp=None`` removes it). ``secret``
    is the signing key of ``algorithm`` (a private key object for EdDSA, RS*, ES*)."""
    body: dict[str, object] = {
        "aud": AUDIENCE,
        "iss": ISSUER,
        "exp": int(time.time()) + 3600,
        "authorization_details": list(details),
    }
    body.update(claims)
    body = {k: v for k, v in body.items() if v is not None}
    return jwt.encode(body, secret, algorithm=algorithm, headers={"typ": typ})
