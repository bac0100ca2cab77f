"""Herald as a Mercure hub seen from real Chromium, as the official suite drives it:
``EventSource`` for public updates and the browser's reconnect with a publisher id,
``fetch`` with an ``Authorization`` header (reading the stream's body) for private ones.
Updates are published with a real Mercure publisher library from PyPI
(``mercure-publisher``): its form encoding and HTTP, with a Mercure 1.0 access token
(the library mints only pre-1.0 tokens — ``mercure`` claim, ``typ: JWT`` — which a 1.0
hub must refuse; the last test shows Herald does)."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import httpx
import pytest
from mercure_publisher import (  # type: ignore[import-untyped]
    MercureConfig,
    MercurePublisher,
    MercurePublishError,
)
from playwright.sync_api import Page

from tests.e2e.recorder import StreamRecorder
from tests.mercure.tokens import MERCURE_ENV, SECRET, detail, token
from tests.support.server import ServerProcess

pytestmark = pytest.mark.integration

HUB = "/.well-known/mercure"

_FETCH_STREAM = """
async ([url, auth]) => {
  const log = { events: [], status: 0 };
  window.__fetched = log;
  const response = await fetch(url, { headers: { Authorization: "Bearer " + auth } });
  log.status = response.status;
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\\n\\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = block.split("\\n").filter((l) => l.startsWith("data: ")).map((l) => l.slice(6));
      if (data.length) log.events.push(data.join("\\n"));
    }
  }
}
"""


def library_publisher(server: ServerProcess) -> MercurePublisher:
    """The library's publisher, its Authorization header swapped for a 1.0 access token."""
    access_token = token(detail(["publish"], "*"))

    def spec_token(request: httpx.Request) -> None:
        request.headers["Authorization"] = f"Bearer {access_token}"

    config = MercureConfig(
        hub_url=server.base_url + HUB, publisher_jwt_key=SECRET, publish_topics=["*"]
    )
    return MercurePublisher(config, client=httpx.Client(event_hooks={"request": [spec_token]}))


def test_eventsource_gets_library_published_updates_and_resumes_with_their_ids(
    page: Page, server_factory: Callable[..., ServerProcess]
) -> None:
    server = server_factory(**MERCURE_ENV, SSE_RETRY_MS="300")
    page.goto(server.base_url + "/")
    u = uuid.uuid4().hex
    topic = f"https://example.com/books/{u}"
    query = f"{HUB}?match_urlpattern=https%3A%2F%2Fexample.com%2Fbooks%2F%3Aid"
    recorder = StreamRecorder(page, query, names=("book",))
    recorder.wait_open()
    with library_publisher(server) as publisher:
        first = publisher.publish(topic, {"n": 1}, id=f"urn:{u}:1", type="book")
        assert first == f"urn:{u}:1"
        publisher.publish(topic, "two\nlines", id=f"urn:{u}:2")
        received = recorder.wait_events(2)
        assert [(r.id, r.type, r.data) for r in received] == [
            (f"urn:{u}:1", "book", '{"n": 1}'),
            (f"urn:{u}:2", "message", "two\nlines"),
        ]
        # The page closes its stream; an update is published meanwhile; a new
        # EventSource resumes with the last id it saw (the query form, as on a first
        # connection) and gets exactly the missed update.
        page.evaluate("window.__recorder.source.close()")
        publisher.publish(topic, "missed", id=f"urn:{u}:3")
    resumed = StreamRecorder(page, query + f"&last_event_id=urn%3A{u}%3A2")
    resumed.wait_open()
    (missed,) = resumed.wait_events(1)
    assert (missed.id, missed.data) == (f"urn:{u}:3", "missed")


def test_fetch_with_a_bearer_token_reads_private_updates(
    page: Page, server_factory: Callable[..., ServerProcess]
) -> None:
    server = server_factory(**MERCURE_ENV)
    page.goto(server.base_url + "/")
    u = uuid.uuid4().hex
    reader = token(detail(["subscribe"], u))
    page.evaluate(f"args => {{ ({_FETCH_STREAM})(args); }}", [f"{HUB}?match={u}", reader])
    anonymous = StreamRecorder(page, f"{HUB}?match={u}")
    anonymous.wait_open()
    page.wait_for_function("() => window.__fetched && window.__fetched.status === 200")
    with library_publisher(server) as publisher:
        publisher.publish(u, "secret", private=True)
        publisher.publish(u, "public")
    page.wait_for_function("() => window.__fetched.events.length >= 2")
    assert page.evaluate("() => window.__fetched.events") == ["secret", "public"]
    assert [r.data for r in anonymous.wait_events(1)] == ["public"]


def test_the_librarys_own_pre_1_0_token_is_refused(
    server_factory: Callable[..., ServerProcess],
) -> None:
    server = server_factory(**MERCURE_ENV)
    config = MercureConfig(
        hub_url=server.base_url + HUB,
        publisher_jwt_key=SECRET,
        publish_topics=["*"],
        jwt_additional_claims={"aud": MERCURE_ENV["JWT_AUDIENCE"], "iss": "https://localhost"},
    )
    with MercurePublisher(config) as publisher, pytest.raises(MercurePublishError, match="401"):
        publisher.publish("a", "x")
