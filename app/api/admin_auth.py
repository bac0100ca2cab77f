"""Who may read the operator surface (``/api/admin/*``, ``/api/stats/*``, ``/metrics``).

The token is ``ADMIN_TOKEN``, sent in one of three ways, first match wins:

1. ``Authorization: Bearer <token>`` (what HTTP clients and Prometheus send);
2. ``X-Admin-Token: <token>`` (for tools that reserve ``Authorization``);
3. ``?admin_token=<token>``, kept for compatibility with old dashboards. Query
   strings end up in access logs, proxy logs and browser history: prefer a header.

Statuses: 503 when ``ADMIN_TOKEN`` is unset (the admin API is off and says so,
rather than answering 401 to a token that cannot exist), 401 when no token was
sent, 403 when it is wrong.

Design decisions:

* ``hmac.compare_digest`` on UTF-8 bytes: its time does not depend on how many
  leading characters match, and bytes accept any character a header or a query
  string can carry (the ``str`` form refuses non-ASCII with ``TypeError``).
* The first credential present is the one judged: a wrong bearer token is not
  rescued by a right query token. Otherwise one request could test two guesses
  and a client bug (a stale header) would hide behind a working fallback.
* Failures are logged with the client address and the way the token came, never
  with any part of the token.
"""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import Depends, HTTPException, Request

from app.api.deps import SettingsDep
from app.auth.client_address import client_address
from app.auth.requests import bearer_token
from app.core.security import secret_matches

__all__ = [
    "ADMIN_DISABLED_DETAIL",
    "ADMIN_TOKEN_HEADER",
    "ADMIN_TOKEN_QUERY",
    "AdminDep",
    "presented_token",
    "require_admin",
]

logger = logging.getLogger("herald.admin")

ADMIN_TOKEN_HEADER = "x-admin-token"
ADMIN_TOKEN_QUERY = "admin_token"
ADMIN_DISABLED_DETAIL = "admin API is disabled: set ADMIN_TOKEN"


def presented_token(request: Request) -> tuple[str, str] | None:
    """``(how, token)`` for the first credential the request carries, or ``None``."""
    token = bearer_token(request)
    if token is not None:
        return "bearer", token
    header = request.headers.get(ADMIN_TOKEN_HEADER, "").strip()
    if header:
        return "header", header
    query = request.query_params.get(ADMIN_TOKEN_QUERY, "").strip()
    if query:
        return "query", query
    return None


def require_admin(request: Request, settings: SettingsDep) -> None:
    """Let the request through only with the right admin token."""
    expected = settings.admin_token
    if expected is None:
        raise HTTPException(503, ADMIN_DISABLED_DETAIL)
    presented = presented_token(request)
    if presented is None:
        raise HTTPException(
            401,
            "missing admin token: send Authorization: Bearer <token> or X-Admin-Token",
            headers={"WWW-Authenticate": "Bearer"},
        )
    how, token = presented
    if not secret_matches(token, expected):
        logger.warning(
            "admin: wrong token (%s) from %s for %s", how, client_address(request), request.url.path
        )
        raise HTTPException(403, "invalid admin token")


AdminDep = Annotated[None, Depends(require_admin)]
