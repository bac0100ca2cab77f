"""The dashboard in a real browser: the token refused and accepted, the charts moving
with the traffic, the "try it" round trip, and the states for a lost connection and
for the memory guard refusing new work. Saves screenshots as test artifacts."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from playwright.sync_api import Page

from tests.e2e.conftest import artifacts_dir
from tests.e2e.recorder import publish
from tests.support.server import ServerProcess

pytestmark = pytest.mark.integration

ADMIN_TOKEN = "e2e-dashboard-token"
FAST_FEED = {
    "ADMIN_TOKEN": ADMIN_TOKEN,
    "ADMIN_STREAM_SECONDS": "0.25",
    # Expired long before the test stops the server: the page must buy a new one.
    "ADMIN_TICKET_SECONDS": "1",
    "MEMORY_CHECK_SECONDS": "0.25",
    "SSE_RETRY_MS": "300",
    "ECHO_DELAY_MS": "10",
}


def connect(page: Page, token: str) -> None:
    page.fill("#admin-token", token)
    page.click("#connect")


def samples(page: Page, chart: str) -> int:
    return int(page.get_attribute(f"#chart-{chart} svg", "data-samples") or 0)


def publish_from_panel(page: Page, previous_id: str | None = None) -> str:
    """Click Publish; the id the server gave, once the event with that id has arrived."""
    page.click("#publish")
    arrived = page.wait_for_function(
        """previous => {
          const id = document.querySelector("#publish-status").dataset.id;
          if (!id || id === previous) return null;
          return document.querySelector(`#received li[data-id="${id}"]`) ? id : null;
        }""",
        arg=previous_id,
    )
    event_id: str = arrived.json_value()
    return event_id


def wait_for_text(page: Page, selector: str, needle: str) -> None:
    page.wait_for_function(
        "([selector, needle]) => document.querySelector(selector).textContent.includes(needle)",
        arg=[selector, needle],
    )


def test_dashboard_token_charts_and_try_it_round_trip(
    page: Page, server_factory: Callable[..., ServerProcess]
) -> None:
    server = server_factory(**FAST_FEED)
    page.goto(server.base_url + "/")

    # A wrong token: refused, said so, not kept.
    connect(page, "not-the-token")
    page.wait_for_selector("#token-status[data-state=refused]")
    assert "403" in (page.text_content("#token-status") or "")
    assert page.evaluate("() => sessionStorage.getItem('herald.adminToken')") is None
    assert page.is_hidden("#charts")

    # The right one: live, and the charts fill in.
    connect(page, ADMIN_TOKEN)
    page.wait_for_selector("#feed-state[data-state=live]")
    assert page.evaluate("() => sessionStorage.getItem('herald.adminToken')") == ADMIN_TOKEN
    page.wait_for_function("() => +document.querySelector('#chart-memory svg').dataset.samples > 2")
    memory_chart = page.locator("#chart-memory svg")
    # One worker's RSS, and the kernel's socket memory the guard adds to it.
    assert memory_chart.locator("path.series").count() == 2
    assert "socket memory" in (page.text_content("#legend-memory") or "")
    assert "sockets" in (page.text_content("#value-memory") or "")
    assert memory_chart.locator("line.guide-warning").count() == 1
    assert memory_chart.locator("line.guide-critical").count() == 1
    assert "MB" in (page.text_content("#value-memory") or "")
    assert page.get_attribute("#memory-level", "data-level") == "normal"

    # Try it: subscribe, publish from the panel, see it arrive with its id.
    page.fill("#channel", "dash/demo")
    page.click("#subscribe")
    page.wait_for_selector("#subscribe-state[data-state=live]")
    wait_for_text(page, "#value-connections", "1")  # the chart saw the new stream
    text = "two lines\nünïcödé ✓ 🚀"
    page.fill("#event-data", text)
    published_id = publish_from_panel(page)
    mine = page.locator(f'#received li[data-id="{published_id}"]')
    assert mine.locator("pre.data").text_content() == text
    assert "mine" in (mine.get_attribute("class") or "")
    wait_for_text(page, "#publish-status", "arrived ✓")

    document = {"n": 1, "é": [True, None]}
    page.check("#as-json")
    page.fill("#event-data", json.dumps(document))
    page.fill("#event-name", "update")
    json_id = publish_from_panel(page, published_id)
    newest = page.locator("#received li").first
    assert newest.get_attribute("data-id") == json_id
    assert newest.get_attribute("data-event") == "update"
    assert json.loads(newest.locator("pre.data").text_content() or "") == document

    # Traffic shows in events per second; a cache hit in the hit rate.
    for i in range(40):
        publish(server.base_url, "dash/demo", f"burst {i}")
    page.wait_for_function(
        "() => /[1-9]/.test(document.querySelector('#value-events').textContent.split(' ')[0])"
    )
    page.fill("#ask-input", "cache me if you can")
    page.click("#ask")
    page.wait_for_selector("#response-state[data-state=done]")
    assert "from the cache" not in (page.text_content("#response-state") or "")
    page.click("#ask")
    wait_for_text(page, "#response-state", "from the cache")
    assert page.text_content("#response-text") == "cache me if you can"
    wait_for_text(page, "#value-cache", "50 %")
    assert samples(page, "events") > 2 and samples(page, "cache") > 2

    page.screenshot(path=artifacts_dir() / "dashboard.png", full_page=True)

    # The server goes away and comes back: the page says so, and reconnects by itself
    # (the browser retries; its ticket has expired meanwhile, so the page buys another).
    tickets: list[str] = []
    page.on("request", lambda r: tickets.append(r.url) if r.url.endswith("/ticket") else None)
    server.stop()
    page.wait_for_selector("#feed-state[data-state=reconnecting]")
    page.wait_for_selector("#subscribe-state[data-state=reconnecting]")
    assert "reconnecting" in (page.text_content("#feed-state") or "")
    server.start()
    page.wait_for_selector("#feed-state[data-state=live]")
    assert page.text_content("#feed-state") == "live (reconnected)"
    assert len(tickets) == 1
    page.wait_for_selector("#subscribe-state[data-state=live]")
    assert "reconnected" in (page.text_content("#subscribe-state") or "")


def test_dashboard_shows_the_memory_guard_refusing(
    page: Page, server_factory: Callable[..., ServerProcess]
) -> None:
    # An idle server (~55 MB) is far over 90 % of 40 MB: critical at the first sample.
    server = server_factory(**FAST_FEED, MEMORY_LIMIT_MB="40")
    page.goto(server.base_url + "/")
    connect(page, ADMIN_TOKEN)
    page.wait_for_selector("#feed-state[data-state=live]")
    page.wait_for_selector("#refusing-banner", state="visible")
    page.wait_for_selector("#memory-level[data-level=critical]")

    page.click("#subscribe")
    page.wait_for_selector("#subscribe-state[data-state=refused]")
    refusal = page.text_content("#subscribe-state") or ""
    assert "503" in refusal and "low on memory" in refusal and "trying again" in refusal

    page.click("#ask")
    page.wait_for_selector("#response-state[data-state=refused]")
    assert "503" in (page.text_content("#response-state") or "")
    page.wait_for_function("() => +document.querySelector('#chart-memory svg').dataset.samples > 2")
    page.screenshot(path=artifacts_dir() / "dashboard-critical.png", full_page=True)
