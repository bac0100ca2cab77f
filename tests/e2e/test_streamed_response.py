"""A streamed response in the browser, through the dashboard's "try it" panel: followed
to ``done``, and resumed where it left off when the page is reloaded halfway."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest
from playwright.sync_api import Page, Request

from tests.support.server import ServerProcess

pytestmark = pytest.mark.integration

ADMIN_TOKEN = "e2e-admin-token"
WORDS = 40
ECHO_DELAY_MS = "60"  # 40 words take about 2.4 s: time enough to reload halfway


def sentence(tag: str) -> str:
    # Numbered words: a lost, repeated or reordered chunk shows in the text.
    return " ".join(f"{tag}{i}" for i in range(WORDS)) + " — ünïcödé ✓"


def runs_started(server: ServerProcess) -> int:
    response = httpx.get(
        server.base_url + "/api/admin/metrics", headers={"X-Admin-Token": ADMIN_TOKEN}, timeout=5
    )
    started: int = response.json()["responses"]["started"]
    return started


def ask(page: Page, text: str) -> None:
    page.fill("#ask-input", text)
    page.uncheck("#ask-cache")  # a fresh run every time: nothing served from the cache
    page.click("#ask")


def test_a_streamed_response_is_followed_to_done(
    page: Page, server_factory: Callable[..., ServerProcess]
) -> None:
    server = server_factory(ECHO_DELAY_MS="20")
    page.goto(server.base_url + "/")
    text = sentence("w")
    ask(page, text)
    page.wait_for_selector("#response-state[data-state=done]")
    assert page.text_content("#response-text") == text
    assert f"{len(text)} characters" in (page.text_content("#response-state") or "")


def test_a_reload_halfway_resumes_the_response_without_running_it_again(
    page: Page, server_factory: Callable[..., ServerProcess]
) -> None:
    server = server_factory(ECHO_DELAY_MS=ECHO_DELAY_MS, ADMIN_TOKEN=ADMIN_TOKEN)
    page.goto(server.base_url + "/")
    text = sentence("r")
    ask(page, text)
    page.wait_for_function(
        "() => document.querySelector('#response-text').textContent.split(' ').length >= 8"
    )
    assert page.get_attribute("#response-state", "data-state") == "streaming"
    before_reload = page.text_content("#response-text") or ""
    followed: list[Request] = []
    page.on("request", lambda r: followed.append(r) if "/events" in r.url else None)

    page.reload()
    page.wait_for_selector("#response-state[data-state=done]")

    assert page.text_content("#response-text") == text  # nothing lost, nothing twice
    assert "resumed after a reload" in (page.text_content("#response-state") or "")
    assert len(before_reload) < len(text), "the reload came before the end"
    (resumed,) = followed
    resumed_from = int(resumed.url.partition("last_event_id=")[2])
    assert resumed_from >= 7, resumed.url
    assert runs_started(server) == 1, "the producer ran once; the reload only followed it"
