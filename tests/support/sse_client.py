"""An SSE test client: real HTTP streaming with httpx, parsed like a browser would."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import httpx

from app.wire.parser import SSEMessage, SSEParser

__all__ = ["EventStream", "open_stream"]

DEFAULT_WAIT_SECONDS = 5.0


class EventStream:
    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.parser = SSEParser()
        self._raw = response.aiter_raw()
        self._ready: list[SSEMessage] = []
        self.ended = False
        self.received = bytearray()

    async def _read_more(self) -> None:
        try:
            chunk = await self._raw.__anext__()
        except (StopAsyncIteration, httpx.ReadError, httpx.RemoteProtocolError):
            self.ended = True
            return
        self.received += chunk
        self._ready.extend(self.parser.feed(chunk))

    async def next_event(self, timeout: float = DEFAULT_WAIT_SECONDS) -> SSEMessage:
        async with asyncio.timeout(timeout):
            while not self._ready:
                if self.ended:
                    raise EOFError("stream ended")
                await self._read_more()
        return self._ready.pop(0)

    async def events(self, count: int, timeout: float = DEFAULT_WAIT_SECONDS) -> list[SSEMessage]:
        return [await self.next_event(timeout) for _ in range(count)]

    async def position(self, timeout: float = DEFAULT_WAIT_SECONDS) -> str:
        """The id the stream's opening frames set (the client's ``lastEventId``)."""
        async with asyncio.timeout(timeout):
            while not self.parser.last_event_id:
                if self.ended:
                    raise EOFError("stream ended")
                await self._read_more()
        return self.parser.last_event_id

    async def until_closed(self, timeout: float = DEFAULT_WAIT_SECONDS) -> list[SSEMessage]:
        """Read to the end of the stream; returns the events that came before it."""
        async with asyncio.timeout(timeout):
            while not self.ended:
                await self._read_more()
        rest, self._ready = self._ready, []
        return rest

    async def wait_for_comment(self, timeout: float = DEFAULT_WAIT_SECONDS) -> str:
        async with asyncio.timeout(timeout):
            while not self.parser.comments:
                if self.ended:
                    raise EOFError("stream ended")
                await self._read_more()
        return self.parser.comments[0]


@contextlib.asynccontextmanager
async def open_stream(
    base_url: str, path: str, headers: dict[str, str] | dict[str, bytes] | None = None
) -> AsyncIterator[EventStream]:
    timeout = httpx.Timeout(10.0, read=None)
    async with (
        httpx.AsyncClient(base_url=base_url, timeout=timeout) as client,
        client.stream("GET", path, headers=headers) as response,
    ):
        yield EventStream(response)
