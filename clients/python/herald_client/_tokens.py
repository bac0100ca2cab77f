"""Minting the JWTs Herald verifies with ``JWT_SECRET``: HS256, with the grants in the claim
shape Mercure hubs use, so one token works for both::

    {"mercure": {"subscribe": ["users/42/inbox", "news"], "publish": [...]}, "exp": 1767225600}

Each entry is a *selector*: ``*`` (every channel), a channel name, or a pattern whose
``{placeholder}`` segments match one path segment (``users/{id}/inbox``). A subscriber
presents the token by ``Authorization: Bearer``, Herald's cookie (``COOKIE_NAME``), or
``?access_token=`` (a browser's ``EventSource`` cannot set headers).

Signed with the standard library (HMAC-SHA256 over base64url JSON, RFC 7519), so the client
needs no JWT library. Design decisions (read before changing):

* Only HS256: it is what a shared ``JWT_SECRET`` verifies. A deployment on ``JWT_PUBLIC_KEY``
  signs with its private key and a JWT library of its choice.
* ``exp`` is always set: a subscriber token leaks with URLs and browser storage, and
  Herald closes nothing by itself when a grant should end. ``iat`` and ``nbf`` are left
  out: a backend whose clock runs ahead of Herald's would mint tokens not valid yet.
* What Herald would ignore or refuse fails here instead, with the reason: a secret shorter
  than Herald accepts as ``JWT_SECRET``, a selector Herald would drop (it matches nothing),
  more selectors than it reads, a token longer than it reads.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
import re
import time
from collections.abc import Iterable

__all__ = [
    "DEFAULT_TOKEN_TTL_SECONDS",
    "MAX_SELECTORS",
    "MAX_SELECTOR_LENGTH",
    "MAX_TOKEN_LENGTH",
    "MIN_SECRET_BYTES",
    "mint_subscriber_token",
    "mint_token",
]

DEFAULT_TOKEN_TTL_SECONDS = 3600.0
# Herald's own limits (JWT_SECRET's minimum; what its grants and token verifier read).
MIN_SECRET_BYTES = 32
MAX_SELECTORS = 256
MAX_SELECTOR_LENGTH = 256
MAX_TOKEN_LENGTH = 8192
_PLACEHOLDER = re.compile(r"\{[A-Za-z_][A-Za-z0-9_]*\}")
_HEADER = {"alg": "HS256", "typ": "JWT"}


def _base64url(raw: bytes) -> bytes:
    return base64.urlsafe_b64encode(raw).rstrip(b"=")


def _json(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=True).encode()


def _selectors(selectors: str | Iterable[str], role: str) -> list[str]:
    names = [selectors] if isinstance(selectors, str) else list(selectors)
    if len(names) > MAX_SELECTORS:
        raise ValueError(f"{len(names)} {role} selectors: Herald reads at most {MAX_SELECTORS}")
    for name in names:
        if not isinstance(name, str) or not name or len(name) > MAX_SELECTOR_LENGTH:
            raise ValueError(
                f"{role} selector {name!r}: give a string of 1-{MAX_SELECTOR_LENGTH} characters"
            )
        if name != "*" and any("{" in part or "}" in part for part in _PLACEHOLDER.split(name)):
            raise ValueError(
                f"{role} selector {name!r}: braces only around a placeholder name, "
                "as in users/{id}/inbox"
            )
    return names


def mint_token(
    secret: str | bytes,
    *,
    subscribe: str | Iterable[str] = (),
    publish: str | Iterable[str] = (),
    ttl_seconds: float = DEFAULT_TOKEN_TTL_SECONDS,
    now: float | None = None,
) -> str:
    """An HS256 JWT under ``secret`` (Herald's ``JWT_SECRET``) granting subscribing to the
    ``subscribe`` selectors and publishing to the ``publish`` ones, valid ``ttl_seconds``
    from ``now`` (Unix time; the current time by default)."""
    key = secret.encode() if isinstance(secret, str) else bytes(secret)
    if len(key) < MIN_SECRET_BYTES:
        raise ValueError(f"the secret must be at least {MIN_SECRET_BYTES} bytes, as JWT_SECRET")
    if not math.isfinite(ttl_seconds) or ttl_seconds <= 0:
        raise ValueError("ttl_seconds must be a positive number of seconds")
    grants = {"subscribe": _selectors(subscribe, "subscribe")}
    granted_publish = _selectors(publish, "publish")
    if granted_publish:
        grants["publish"] = granted_publish
    issued = time.time() if now is None else now
    claims = {"mercure": grants, "exp": math.ceil(issued + ttl_seconds)}
    signing_input = _base64url(_json(_HEADER)) + b"." + _base64url(_json(claims))
    signature = hmac.new(key, signing_input, hashlib.sha256).digest()
    token = (signing_input + b"." + _base64url(signature)).decode("ascii")
    if len(token) > MAX_TOKEN_LENGTH:
        raise ValueError(f"a token of {len(token)} characters: Herald reads {MAX_TOKEN_LENGTH}")
    return token


def mint_subscriber_token(
    secret: str | bytes,
    channels: str | Iterable[str],
    *,
    ttl_seconds: float = DEFAULT_TOKEN_TTL_SECONDS,
    now: float | None = None,
) -> str:
    """A token that lets its holder open streams on ``channels`` (selectors: names,
    ``{placeholder}`` patterns or ``*``) and see their private events, for ``ttl_seconds``."""
    return mint_token(secret, subscribe=channels, ttl_seconds=ttl_seconds, now=now)
