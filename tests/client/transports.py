"""httpx transports for the client's tests: the real transport underneath, each attempt
recorded, and chosen attempts cut after Herald answered (the answer lost on the way back, as
when a connection resets or a proxy times out after the server did the work)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx

__all__ = ["AsyncRecordingTransport", "Attempt", "RecordingTransport", "cut_first", "never"]


@dataclass
class Attempt:
    """One request the client sent: its ``Idempotency-Key``, when it went out, its timeout,
    and what became of it (the status, or the error the client saw)."""

    key: str | None
    sent_at: float
    read_timeout: float | None
    status: int | None = None
    error: str | None = None
    cut: bool = False


def cut_first(number: int) -> bool:
    return number == 1


def never(number: int) -> bool:
    return False


class _Recorder:
    def __init__(self, cut: Callable[[int], bool]) -> None:
        self.attempts: list[Attempt] = []
        self._cut = cut
        self._lock = threading.Lock()

    def sent(self, request: httpx.Request) -> tuple[Attempt, bool]:
        timeout = request.extensions.get("timeout", {}).get("read")
        attempt = Attempt(request.headers.get("idempotency-key"), time.monotonic(), timeout)
        with self._lock:
            self.attempts.append(attempt)
            number = len(self.attempts)
        return attempt, self._cut(number)

    @property
    def keys(self) -> list[str | None]:
        return [attempt.key for attempt in self.attempts]


class RecordingTransport(httpx.BaseTransport, _Recorder):
    def __init__(self, cut: Callable[[int], bool] = never) -> None:
        _Recorder.__init__(self, cut)
        self._inner = httpx.HTTPTransport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        attempt, cut = self.sent(request)
        try:
            response = self._inner.handle_request(request)
        except httpx.HTTPError as exc:
            attempt.error = type(exc).__name__
            raise
        attempt.status = response.status_code
        if cut:
            attempt.cut = True
            response.close()  # unread: the connection is dropped, not reused
            raise httpx.ReadError("connection cut by the test after Herald answered")
        return response

    def close(self) -> None:
        self._inner.close()


class AsyncRecordingTransport(httpx.AsyncBaseTransport, _Recorder):
    def __init__(self, cut: Callable[[int], bool] = never) -> None:
        _Recorder.__init__(self, cut)
        self._inner = httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        attempt, cut = self.sent(request)
        try:
            response = await self._inner.handle_async_request(request)
        except httpx.HTTPError as exc:
            attempt.error = type(exc).__name__
            raise
        attempt.status = response.status_code
        if cut:
            attempt.cut = True
            await response.aclose()
            raise httpx.ReadError("connection cut by the test after Herald answered")
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()
