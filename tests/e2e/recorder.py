"""A page-side recorder: one plain ``EventSource`` whose every event lands in a list.

The recorder has no reconnect logic of its own. Whatever reconnecting and
resuming the tests observe is the browser's own ``EventSource`` at work, with
Herald on the other end.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx
from playwright.sync_api import Page, Request

__all__ = ["Received", "StreamRecorder", "publish"]

_OPEN = """
([path, names]) => {
  const log = { events: [], opens: 0, errors: [] };
  const source = new EventSource(path);
  source.addEventListener("open", () => { log.opens += 1; });
  source.addEventListener("error", () => { log.errors.push(source.readyState); });
  const record = (event) =>
    log.events.push({ id: event.lastEventId, type: event.type, data: event.data });
  for (const name of ["message", ...names]) source.addEventListener(name, record);
  window.__recorder = { log, source };
}
"""


@dataclass(frozen=True)
class Received:
    id: str
    type: str
    data: str


class StreamRecorder:
    """Opens ``path`` in an ``EventSource`` on ``page`` and reads back what it got."""

    def __init__(self, page: Page, path: str, names: tuple[str, ...] = ()) -> None:
        self.page = page
        self.path = path
        self.requests: list[Request] = []
        page.on("request", self._seen)
        page.evaluate(_OPEN, [path, list(names)])

    def _seen(self, request: Request) -> None:
        if request.url.split("?")[0].endswith(self.path.split("?")[0]):
            self.requests.append(request)

    def wait_open(self, count: int = 1, timeout_ms: float = 10_000) -> None:
        self.page.wait_for_function(
            "n => window.__recorder.log.opens >= n", arg=count, timeout=timeout_ms
        )

    def wait_events(self, count: int, timeout_ms: float = 10_000) -> list[Received]:
        self.page.wait_for_function(
            "n => window.__recorder.log.events.length >= n", arg=count, timeout=timeout_ms
        )
        return self.events()

    def events(self) -> list[Received]:
        raw: list[dict[str, str]] = self.page.evaluate("window.__recorder.log.events")
        return [Received(**event) for event in raw]

    @property
    def opens(self) -> int:
        count: int = self.page.evaluate("window.__recorder.log.opens")
        return count

    @property
    def errors(self) -> list[int]:
        """``readyState`` at each ``error``: 0 (CONNECTING) is the browser retrying."""
        states: list[int] = self.page.evaluate("window.__recorder.log.errors")
        return states

    def last_event_ids_sent(self) -> list[str | None]:
        """The ``Last-Event-ID`` header of each request the stream made that got an answer."""
        return [r.header_value("last-event-id") for r in self.requests if r.failure is None]


def publish(base_url: str, channel: str, data: Any, event: str | None = None) -> str:
    body: dict[str, Any] = {"data": data}
    if event is not None:
        body["event"] = event
    response = httpx.post(f"{base_url}/events/{channel}", json=body, timeout=10)
    assert response.status_code == 202, response.text
    event_id: str = response.json()["id"]
    return event_id
