"""The operator dashboard: one static page, its script and its stylesheet.

Served by the app itself (``app.api.routes.dashboard``): plain HTML, CSS and
JavaScript with no build step and nothing fetched from the internet, so the
page works on an air-gapped box and its Content-Security-Policy can allow
``'self'`` alone. The page reads the admin metrics from ``/api/admin/stream``
(``app.api.routes.admin_stream``) after trading the admin token for a ticket
(``app.dashboard.tickets``).

The route module reads the files once, at import (:func:`load_assets`): a few
tens of kilobytes, fixed by what ships in ``static/``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

__all__ = ["INDEX", "STATIC_DIR", "Asset", "load_assets"]

STATIC_DIR = Path(__file__).resolve().parent / "static"
INDEX = "index.html"

# The only files served, with their media types: an allow-list, not a directory,
# so no request path can reach anything else on disk.
_MEDIA_TYPES = {
    INDEX: "text/html; charset=utf-8",
    "dashboard.js": "text/javascript; charset=utf-8",
    "actions.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}


@dataclass(frozen=True, slots=True)
class Asset:
    body: bytes
    media_type: str
    etag: str


def load_assets(directory: Path = STATIC_DIR) -> dict[str, Asset]:
    """Every dashboard file by name, with a strong ETag from its content."""
    assets = {}
    for name, media_type in _MEDIA_TYPES.items():
        body = (directory / name).read_bytes()
        etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
        assets[name] = Asset(body=body, media_type=media_type, etag=etag)
    return assets
