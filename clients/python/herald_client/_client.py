"""``HeraldPublisher`` (sync) and ``AsyncHeraldPublisher`` (async): the same calls, the same
retries (``_call``), over ``httpx.Client`` and ``httpx.AsyncClient``.

Design decisions (read before changing):

* One publisher per process, shared: it holds a connection pool, and httpx's clients may
  be used from many threads (sync) or tasks (async) at once. A call keeps no state on the
  publisher, so concurrent calls do not interfere.
* ``timeout`` applies to every attempt (connect, write, read and waiting for a pooled
  connection each), also on a caller's own ``http_client``: a retry policy with a deadline
  only holds if no single attempt can outlive it.
* A caller's ``http_client`` stays the caller's: its base URL is not used (every request
  names its URL in full) and closing the publisher does not close it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from types import TracebackType

import httpx

from ._call import PublishCall, Wait
from ._models import BatchItem, BatchResult, PublishResult
from ._retry import DEFAULT_RETRY_POLICY, RetryPolicy
from ._version import __version__
from ._wire import PreparedPublish, ResultT, prepare_batch, prepare_multi, prepare_single

__all__ = ["DEFAULT_TIMEOUT_SECONDS", "USER_AGENT", "AsyncHeraldPublisher", "HeraldPublisher"]

DEFAULT_TIMEOUT_SECONDS = 10.0
USER_AGENT = f"herald-client/{__version__}"


class _PublisherBase:
    def __init__(
        self, base_url: str, token: str | None, timeout: float, retry: RetryPolicy
    ) -> None:
        url = httpx.URL(base_url)
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError(f"base_url must be an http:// or https:// URL, not {base_url!r}")
        self.base_url = str(url).rstrip("/")
        if timeout <= 0:
            raise ValueError("timeout must be more than 0 seconds")
        self.timeout = timeout
        self.retry = retry
        self._headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT}
        if token is not None:
            self._headers["Authorization"] = f"Bearer {token}"

    def _call(
        self, prepared: PreparedPublish[ResultT], idempotency_key: str | None
    ) -> PublishCall[ResultT]:
        return PublishCall(prepared, self._headers, idempotency_key, self.retry)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.base_url!r})"


class HeraldPublisher(_PublisherBase):
    """Publishes to the Herald at ``base_url`` from synchronous code.

    ``token`` is Herald's ``PUBLISH_TOKEN`` or a JWT granting ``publish`` on the channels;
    without one only a publisher on Herald's loopback is let in. Every call carries an
    ``Idempotency-Key`` (a fresh one, or ``idempotency_key=``) and is retried under
    ``retry``; it returns once Herald acknowledged the event (from then on every subscriber
    receives it) or raises ``PublishError``. Use it as a context manager or ``close()`` it.
    """

    def __init__(
        self,
        base_url: str,
        *,
        token: str | None = None,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
        retry: RetryPolicy = DEFAULT_RETRY_POLICY,
        http_client: httpx.Client | None = None,
    ) -> None:
        super().__init__(base_url, token, timeout, retry)
        self._owns_client = http_client is None
        self._http = http_client if http_client is not None else httpx.Client()

    def publish(
        self,
        channel: str,
        data: object,
        *,
        event: str | None = None,
        private: bool = False,
        idempotency_key: str | None = None,
    ) -> PublishResult:
        """Publish ``data`` (any JSON value; a string goes out as itself) on ``channel``."""
        return self._send(prepare_single(channel, data, event, private), idempotency_key)

    def publish_to(
        self,
        channels: str | Iterable[str],
        data: object,
        *,
        event: str | None = None,
        private: bool = False,
        idempotency_key: str | None = None,
    ) -> PublishResult:
        """Publish one event on several channels: one id, delivered once to a stream that
        subscribes to more than one of them."""
        return self._send(prepare_multi(channels, data, event, private), idempotency_key)

    def publish_batch(
        self, items: Iterable[BatchItem], *, idempotency_key: str | None = None
    ) -> BatchResult:
        """Publish several events in one request, all or none, with consecutive ids; one
        ``Idempotency-Key`` covers the whole batch."""
        return self._send(prepare_batch(items), idempotency_key)

    def _send(self, prepared: PreparedPublish[ResultT], idempotency_key: str | None) -> ResultT:
        call = self._call(prepared, idempotency_key)
        url = self.base_url + prepared.path
        while True:
            timeout = call.start_attempt(self.timeout)
            try:
                response = self._http.post(
                    url, content=prepared.body, headers=call.headers, timeout=timeout
                )
            except httpx.HTTPError as exc:
                outcome: ResultT | Wait = call.failed(exc)
            else:
                outcome = call.answered(response)
            if not isinstance(outcome, Wait):
                return outcome
            time.sleep(outcome.seconds)

    def close(self) -> None:
        """Close the connection pool, unless it is the caller's ``http_client``."""
        if self._owns_client:
            self._http.close()

    def __enter__(self) -> HeraldPublisher:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


class AsyncHeraldPublisher(_PublisherBase):
    """``HeraldPublisher`` for asyncio code: the same arguments and calls, awaited; an
    ``http_client`` is an ``httpx.AsyncClient``. Use it as an async context manager or
    ``await aclose()`` it."""

    def __init__(
        self,
        base_url: str,
        *,
        token: str | None = None,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
        retry: RetryPolicy = DEFAULT_RETRY_POLICY,
        http_client: httpx.AsyncClient | None = None,
    ) -> None:
        super().__init__(base_url, token, timeout, retry)
        self._owns_client = http_client is None
        self._http = http_client if http_client is not None else httpx.AsyncClient()

    async def publish(
        self,
        channel: str,
        data: object,
        *,
        event: str | None = None,
        private: bool = False,
        idempotency_key: str | None = None,
    ) -> PublishResult:
        """Publish ``data`` (any JSON value; a string goes out as itself) on ``channel``."""
        return await self._send(prepare_single(channel, data, event, private), idempotency_key)

    async def publish_to(
        self,
        channels: str | Iterable[str],
        data: object,
        *,
        event: str | None = None,
        private: bool = False,
        idempotency_key: str | None = None,
    ) -> PublishResult:
        """Publish one event on several channels: one id, delivered once to a stream that
        subscribes to more than one of them."""
        return await self._send(prepare_multi(channels, data, event, private), idempotency_key)

    async def publish_batch(
        self, items: Iterable[BatchItem], *, idempotency_key: str | None = None
    ) -> BatchResult:
        """Publish several events in one request, all or none, with consecutive ids; one
        ``Idempotency-Key`` covers the whole batch."""
        return await self._send(prepare_batch(items), idempotency_key)

    async def _send(
        self, prepared: PreparedPublish[ResultT], idempotency_key: str | None
    ) -> ResultT:
        call = self._call(prepared, idempotency_key)
        url = self.base_url + prepared.path
        while True:
            timeout = call.start_attempt(self.timeout)
            try:
                response = await self._http.post(
                    url, content=prepared.body, headers=call.headers, timeout=timeout
                )
            except httpx.HTTPError as exc:
                outcome: ResultT | Wait = call.failed(exc)
            else:
                outcome = call.answered(response)
            if not isinstance(outcome, Wait):
                return outcome
            await asyncio.sleep(outcome.seconds)

    async def aclose(self) -> None:
        """Close the connection pool, unless it is the caller's ``http_client``."""
        if self._owns_client:
            await self._http.aclose()

    async def __aenter__(self) -> AsyncHeraldPublisher:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()
