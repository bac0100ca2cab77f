"""``GET /`` and the dashboard's files, from a real server: security headers, caching,
and nothing served but the allow-listed files."""

from __future__ import annotations

import httpx
import pytest

from app.api.routes.dashboard import CONTENT_SECURITY_POLICY
from tests.support.server import ServerProcess

pytestmark = pytest.mark.integration

FILES = {
    "/": "text/html; charset=utf-8",
    "/dashboard/dashboard.js": "text/javascript; charset=utf-8",
    "/dashboard/dashboard.css": "text/css; charset=utf-8",
    "/dashboard/favicon.svg": "image/svg+xml",
}


def get(server: ServerProcess, path: str, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.get(server.base_url + path, headers=headers, timeout=5)


@pytest.mark.parametrize("path", FILES)
def test_files_are_served_with_security_headers(herald: ServerProcess, path: str) -> None:
    response = get(herald, path)
    assert response.status_code == 200
    assert response.headers["content-type"] == FILES[path]
    assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["x-frame-options"] == "DENY"
    assert response.headers["referrer-policy"] == "no-referrer"
    assert response.headers["cache-control"] == "no-cache"
    assert response.content


def test_the_policy_allows_this_origin_only() -> None:
    directives = dict(d.strip().split(" ", 1) for d in CONTENT_SECURITY_POLICY.split(";"))
    assert directives["default-src"] == "'none'"
    for name in ("script-src", "style-src", "img-src", "connect-src"):
        assert directives[name] == "'self'"
    assert directives["frame-ancestors"] == "'none'"
    assert "unsafe" not in CONTENT_SECURITY_POLICY


def test_the_page_loads_its_script_and_stylesheet(herald: ServerProcess) -> None:
    page = get(herald, "/").text
    assert '<script src="/dashboard/dashboard.js" defer></script>' in page
    assert '<link rel="stylesheet" href="/dashboard/dashboard.css">' in page


@pytest.mark.parametrize("path", FILES)
def test_a_matching_etag_answers_304_without_a_body(herald: ServerProcess, path: str) -> None:
    etag = get(herald, path).headers["etag"]
    again = get(herald, path, headers={"If-None-Match": etag})
    assert again.status_code == 304
    assert again.content == b""
    assert again.headers["etag"] == etag
    stale = get(herald, path, headers={"If-None-Match": '"something-else"'})
    assert stale.status_code == 200


@pytest.mark.parametrize(
    "path",
    [
        "/dashboard/missing.js",
        "/dashboard/index.html",
        "/dashboard/..%2F__init__.py",
        "/dashboard/..%2F..%2Fcore%2Fconfig.py",
        "/dashboard/",
    ],
)
def test_nothing_else_is_served(herald: ServerProcess, path: str) -> None:
    response = get(herald, path)
    assert response.status_code == 404
    assert "detail" in response.json()
