"""A real browser's ``EventSource`` against a real Herald: exact data, reconnects, overflow.

Each test runs its own server process(es) and publishes over HTTP; the page is
the dashboard (any page of Herald's origin would do: it is only where the
``EventSource`` lives, and the dashboard stays idle without a token).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable

import httpx
import pytest
from playwright.sync_api import Page

from app.wire.event_id import parse_event_id
from tests.e2e.recorder import StreamRecorder, publish
from tests.support.redis_server import RedisServer
from tests.support.server import ServerProcess

pytestmark = pytest.mark.integration

ADMIN_TOKEN = "e2e-admin-token"
# The browser retries quickly, so a test need not wait out the default 3 s.
QUICK_RETRY = {"SSE_RETRY_MS": "300"}


def test_event_data_is_exactly_what_was_published(
    page: Page, server_factory: Callable[..., ServerProcess]
) -> None:
    server = server_factory()
    page.goto(server.base_url + "/")
    recorder = StreamRecorder(page, "/events/exact", names=("note",))
    recorder.wait_open()
    text = "\nfirst line\nsecond: ünïcödé ✓ 🚀 e\u0301 日本語\n\n   indented\ttab\n"
    document = {"list": [1, 2.5, None, True], "text": "two\nlines ✓", "nested": {"é": "🚀"}}
    sent = [
        (publish(server.base_url, "exact", text, event="note"), "note", text),
        (
            publish(server.base_url, "exact", document),
            "message",
            json.dumps(document, separators=(",", ":"), ensure_ascii=False),
        ),
        (publish(server.base_url, "exact", ""), "message", ""),
    ]
    received = recorder.wait_events(len(sent))
    assert [(r.id, r.type, r.data) for r in received] == sent
    assert json.loads(received[1].data) == document


def test_browser_reconnects_after_a_restart_and_gets_what_it_missed_once_in_order(
    page: Page, server_factory: Callable[..., ServerProcess], redis_server: RedisServer
) -> None:
    """History must outlive the process for a restart to lose nothing, so Redis holds it.
    While the browser's server is down, events go in through a second server on the
    same Redis; the browser comes back to the first one on the same port."""
    env = {**QUICK_RETRY, "BROKER_URL": redis_server.url, "REDIS_KEY_PREFIX": uuid.uuid4().hex}
    server = server_factory(**env)
    other = server_factory(**env)
    page.goto(server.base_url + "/")
    recorder = StreamRecorder(page, "/events/restart")
    recorder.wait_open()
    ids = [publish(server.base_url, "restart", f"before {i}") for i in range(3)]
    recorder.wait_events(3)

    server.stop()
    ids += [publish(other.base_url, "restart", f"while down {i}") for i in range(5)]
    page.wait_for_function("() => window.__recorder.log.errors.length >= 2")  # retrying, refused
    server.start()
    recorder.wait_open(2)
    ids += [publish(server.base_url, "restart", f"after {i}") for i in range(2)]

    received = recorder.wait_events(len(ids))
    time.sleep(0.3)  # a duplicate would arrive right behind
    assert [r.id for r in recorder.events()] == ids
    assert [r.data for r in received] == [
        *(f"before {i}" for i in range(3)),
        *(f"while down {i}" for i in range(5)),
        *(f"after {i}" for i in range(2)),
    ]
    assert set(recorder.errors) == {0}, "the browser kept retrying by itself (CONNECTING)"
    assert recorder.opens == 2
    assert recorder.last_event_ids_sent() == [None, ids[2]]


def test_a_browser_cut_before_its_first_event_resumes_from_its_opening_position(
    page: Page, server_factory: Callable[..., ServerProcess], redis_server: RedisServer
) -> None:
    """Regression: a client cut before any event had no id, reconnected without
    Last-Event-ID, and lost everything published meanwhile. The opening frames carry the
    stream's position as an `id:` line without data: the browser keeps it as lastEventId
    and dispatches nothing."""
    env = {**QUICK_RETRY, "BROKER_URL": redis_server.url, "REDIS_KEY_PREFIX": uuid.uuid4().hex}
    server = server_factory(**env)
    other = server_factory(**env)
    page.goto(server.base_url + "/")
    recorder = StreamRecorder(page, "/events/first-byte")
    recorder.wait_open()
    time.sleep(0.5)  # the opening frames have arrived
    server.stop()  # cut before any event
    ids = [publish(other.base_url, "first-byte", f"while cut {i}") for i in range(3)]
    server.start()
    recorder.wait_open(2)
    ids.append(publish(server.base_url, "first-byte", "live"))

    received = recorder.wait_events(len(ids))
    time.sleep(0.3)  # a duplicate would arrive right behind
    assert [r.id for r in recorder.events()] == ids
    assert [r.data for r in received] == [*(f"while cut {i}" for i in range(3)), "live"]
    first, resumed_from = recorder.last_event_ids_sent()
    assert first is None
    assert resumed_from is not None
    assert parse_event_id(resumed_from) < parse_event_id(ids[0])  # type: ignore[operator]


# The page is made a slow consumer by keeping its main thread busy: the browser
# stops reading the socket, the server's queue for the stream fills, and
# SSE_OVERFLOW=disconnect ends the stream. The loop asks the admin API (a
# synchronous request, which does not let the page's other tasks run) whether
# that has happened yet, so it blocks no longer than it must.
_BUSY_UNTIL_OVERFLOW = """
([token, limitMs]) => setTimeout(() => {
  const end = Date.now() + limitMs;
  while (Date.now() < end) {
    const request = new XMLHttpRequest();
    request.open("GET", "/api/admin/metrics", false);
    request.setRequestHeader("X-Admin-Token", token);
    request.send();
    if (JSON.parse(request.responseText).sse.overflow_disconnects > 0) return;
    const pause = Date.now() + 50;
    while (Date.now() < pause) {}
  }
}, 0)
"""
FLOOD_EVENT = "x" * 60_000  # large events fill the socket buffers quickly
MAX_FLOOD_EVENTS = 600


def overflow_disconnects(server: ServerProcess) -> int:
    response = httpx.get(
        server.base_url + "/api/admin/metrics", headers={"X-Admin-Token": ADMIN_TOKEN}, timeout=5
    )
    count: int = response.json()["sse"]["overflow_disconnects"]
    return count


def test_overflow_disconnect_then_the_browser_catches_up_without_loss(
    page: Page, server_factory: Callable[..., ServerProcess]
) -> None:
    server = server_factory(
        **QUICK_RETRY,
        SSE_OVERFLOW="disconnect",
        SSE_QUEUE_SIZE="5",
        SSE_HISTORY_MAX_MB="64",
        ADMIN_TOKEN=ADMIN_TOKEN,
    )
    page.goto(server.base_url + "/")
    recorder = StreamRecorder(page, "/events/flood")
    recorder.wait_open()
    page.evaluate(_BUSY_UNTIL_OVERFLOW, [ADMIN_TOKEN, 20_000])
    ids: list[str] = []
    with httpx.Client(base_url=server.base_url, timeout=10) as client:
        while len(ids) < MAX_FLOOD_EVENTS:
            for _ in range(10):
                response = client.post("/events/flood", json={"data": f"{len(ids)}:{FLOOD_EVENT}"})
                ids.append(response.json()["id"])
            if overflow_disconnects(server):
                break
    assert overflow_disconnects(server) >= 1, "the page never fell behind enough to overflow"
    ids += [publish(server.base_url, "flood", f"{len(ids) + i}:after") for i in range(3)]

    recorder.wait_events(len(ids), timeout_ms=30_000)
    time.sleep(0.3)
    received = recorder.events()
    assert [r.id for r in received] == ids
    assert [r.data.split(":")[0] for r in received] == [str(i) for i in range(len(ids))]
    assert "reason=overflow" in server.logs()
    assert recorder.opens >= 2
    # Every request, the cut one included: an overflow cut is a reset (RST), which the
    # browser reports as a failure of the request it had already had a 200 for.
    sent = [request.header_value("last-event-id") for request in recorder.requests]
    assert sent[0] is None
    assert sent[1:] and all(sent[1:]), "every reconnect sent Last-Event-ID"
