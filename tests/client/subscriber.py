"""A subscriber that follows a channel as a browser's ``EventSource`` does: when its stream
ends (a worker killed or recycled), it opens it again with the last id it saw, so it sees
every event once whatever happens to the workers."""

from __future__ import annotations

import asyncio
import contextlib

import httpx

from app.wire.parser import SSEMessage
from tests.support.sse_client import open_stream

__all__ = ["ResumingSubscriber"]

RECONNECT_SECONDS = 0.05


class ResumingSubscriber:
    def __init__(self, base_url: str, path: str) -> None:
        self.base_url = base_url
        self.path = path
        self.events: list[SSEMessage] = []
        self.last_event_id = ""
        self.opens = 0
        self._task: asyncio.Task[None] | None = None

    @property
    def data(self) -> list[str]:
        return [message.data for message in self.events]

    async def _follow(self) -> None:
        while True:
            headers = {"Last-Event-ID": self.last_event_id} if self.last_event_id else {}
            with contextlib.suppress(httpx.HTTPError, EOFError, TimeoutError):
                async with open_stream(self.base_url, self.path, headers) as stream:
                    self.opens += 1
                    try:
                        await stream.position(timeout=60)
                        self.last_event_id = stream.parser.last_event_id
                        while True:
                            self.events.append(await stream.next_event(timeout=60))
                    finally:
                        # The opening frames' position counts too: a stream cut before its
                        # first event resumes from where it started.
                        self.last_event_id = stream.parser.last_event_id or self.last_event_id
            await asyncio.sleep(RECONNECT_SECONDS)  # what a browser waits: its retry

    async def __aenter__(self) -> ResumingSubscriber:
        self._task = asyncio.create_task(self._follow())
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
