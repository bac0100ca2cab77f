"""``GET /``: the operator dashboard page, and its script, stylesheet and icon.

Every answer carries a Content-Security-Policy that allows ``'self'`` and
nothing else: no inline script or style, no other origin, no framing. That is
why the page keeps its JavaScript and CSS in files of their own
(``app/dashboard/static``) and builds its charts from DOM calls, never from
``style=`` attributes or markup strings.

The files are answered from memory with a strong ``ETag`` and
``Cache-Control: no-cache``: browsers revalidate (a cheap ``304``), so a deploy
is picked up at the next load rather than after some cache lifetime.
"""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request, Response

from app.dashboard import INDEX, Asset, load_assets

__all__ = ["CONTENT_SECURITY_POLICY", "SECURITY_HEADERS", "router"]

router = APIRouter(tags=["dashboard"], include_in_schema=False)

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cache-Control": "no-cache",
}

_ASSETS = load_assets()


def _serve(asset: Asset, request: Request) -> Response:
    headers = {**SECURITY_HEADERS, "ETag": asset.etag}
    if asset.etag in request.headers.get("if-none-match", ""):
        return Response(status_code=304, headers=headers)
    return Response(asset.body, media_type=asset.media_type, headers=headers)


@router.get("/")
async def dashboard_page(request: Request) -> Response:
    """The dashboard: live charts from the admin stream, and a panel to try the API."""
    return _serve(_ASSETS[INDEX], request)


@router.get("/dashboard/{name}")
async def dashboard_file(name: str, request: Request) -> Response:
    """One of the dashboard's files (``dashboard.js``, ``dashboard.css``, ``favicon.svg``)."""
    asset = _ASSETS.get(name) if name != INDEX else None
    if asset is None:
        raise HTTPException(404, f"no dashboard file named {name[:64]!r}")
    return _serve(asset, request)
