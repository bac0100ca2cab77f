"""The dashboard's operator actions in a real browser: each button asks for confirmation,
sends the admin token in a header (never a cookie), and shows what the server did; a
cancelled action does nothing, a refused one says why, and the page breaks no CSP rule."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest
from playwright.sync_api import ConsoleMessage, Page, Request

from tests.e2e.conftest import artifacts_dir
from tests.e2e.test_dashboard import ADMIN_TOKEN, FAST_FEED, connect, wait_for_text
from tests.support.server import ServerProcess

pytestmark = pytest.mark.integration


def confirm(page: Page, button: str, expected: str) -> None:
    page.click(button)
    page.wait_for_selector("#action-confirm[open]")
    assert expected in (page.text_content("#action-confirm-text") or "")
    page.click("#action-confirm-ok")


def draining(server: ServerProcess) -> bool:
    health = httpx.get(server.base_url + "/health", timeout=5).json()
    return bool(health["drain"]["draining"])


def test_action_buttons_confirm_act_and_show_the_result(
    page: Page, server_factory: Callable[..., ServerProcess]
) -> None:
    server = server_factory(**FAST_FEED)
    admin_requests: list[Request] = []
    page.on("request", lambda r: admin_requests.append(r) if "/api/admin/" in r.url else None)
    violations: list[str] = []

    def on_console(message: ConsoleMessage) -> None:
        if "Content Security Policy" in message.text:
            violations.append(message.text)

    page.on("console", on_console)
    page.goto(server.base_url + "/")

    # Without a token nothing is sent.
    confirm(page, "#action-cleanup-light", "light cleanup")
    wait_for_text(page, "#action-result", "enter the admin token")
    assert admin_requests == []

    connect(page, ADMIN_TOKEN)
    page.wait_for_selector("#feed-state[data-state=live]")

    # Cancelled: nothing happens on the server.
    page.click("#action-drain")
    page.wait_for_selector("#action-confirm[open]")
    page.click("#action-confirm-cancel")
    wait_for_text(page, "#action-result", "cancelled, nothing was done")
    assert not draining(server)

    # A cleanup: the answer's summary and JSON are shown.
    confirm(page, "#action-cleanup-aggressive", "aggressive cleanup")
    page.wait_for_selector("#action-result[data-state=done]")
    assert "cleanup: 1 worker(s) did it" in (page.text_content("#action-result") or "")
    assert '"cache_cleared"' in (page.text_content("#action-output") or "")

    # Close the page's own subscription by its channel: it reconnects and is live again.
    page.fill("#channel", "dash/cut")
    page.click("#subscribe")
    page.wait_for_selector("#subscribe-state[data-state=live]")
    page.fill("#action-channel", "dash/cut")
    page.fill("#action-retry", "300")
    confirm(page, "#action-streams-close", "channel dash/cut")
    page.wait_for_selector("#action-result[data-state=done]")
    assert '{"closed":1}' in (page.text_content("#action-result") or "")
    page.wait_for_selector("#subscribe-state[data-state=live]")

    # Bad input is refused with the server's reason, and changes nothing.
    page.fill("#action-channel", "")
    confirm(page, "#action-streams-close", "nothing named")
    page.wait_for_selector("#action-result[data-state=error]")
    assert "422" in (page.text_content("#action-result") or "")

    # Drain, then end it; /health follows.
    confirm(page, "#action-drain", "Drain every worker")
    page.wait_for_selector("#action-result[data-state=done]")
    assert draining(server)
    page.screenshot(path=str(artifacts_dir() / "dashboard-actions-drained.png"), full_page=True)
    confirm(page, "#action-undrain", "End the drain")
    page.wait_for_selector("#action-result[data-state=done]")
    assert '{"stopped":1}' in (page.text_content("#action-result") or "")
    assert not draining(server)

    # The token went in a header every time, never in a cookie.
    posted = [
        r for r in admin_requests if r.method in ("POST", "DELETE") and "/ticket" not in r.url
    ]
    assert len(posted) == 5  # cleanup, close, the refused close, drain, end drain
    for request in posted:
        headers = request.all_headers()
        assert headers.get("authorization") == f"Bearer {ADMIN_TOKEN}"
        assert "cookie" not in headers
    assert page.context.cookies() == []
    assert violations == []
