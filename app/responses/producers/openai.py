"""A producer that relays an OpenAI-compatible streaming chat completion.

It sends ``POST {base_url}/v1/chat/completions`` with ``"stream": true`` and
yields ``choices[0].delta.content`` from each ``data:`` event of the upstream's
SSE response until ``data: [DONE]``.

Every failure leaves this module as a ``ProducerError`` whose message is shown
to browsers, so messages name what went wrong but never carry the API key, the
upstream URL or a stack trace; those details go to the server log instead::

    ProducerError
     ├── upstream answered with a non-2xx status   (status + upstream message)
     ├── could not connect / connect timed out
     ├── timed out waiting for the next chunk      (read timeout between chunks)
     ├── stream ended (or connection dropped) before ``data: [DONE]``
     └── malformed JSON chunk, or an ``error`` object inside the stream

Design decisions:

- A missing ``[DONE]`` is an error, not a normal end: an upstream that crashes
  mid-answer usually just closes the body, and relaying that as a complete
  answer would cache and replay a truncated response as if it were whole.
- The read timeout is per chunk (httpx's read timeout applies to each socket
  read), so a long answer that keeps streaming never times out, while an
  upstream that stalls between chunks does. It is passed on every request, so
  it also applies to a client handed in by the caller.
- The body of an error response is read up to ``MAX_ERROR_BODY_BYTES`` only: it
  is used for a 200-character message and must not let an upstream make us
  buffer an arbitrarily large body.
- The upstream's error message is relayed (it is usually the most useful part,
  e.g. "model not found"), but the API key is masked in it first, because some
  servers echo the key they rejected.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Sequence

import httpx

from app.responses.producers.base import Message, ProducerError

__all__ = [
    "CHAT_COMPLETIONS_PATH",
    "DEFAULT_CONNECT_TIMEOUT_SECONDS",
    "DEFAULT_OPENAI_NAME",
    "DEFAULT_TIMEOUT_SECONDS",
    "MAX_ERROR_BODY_BYTES",
    "MAX_ERROR_MESSAGE_CHARS",
    "OpenAIProducer",
    "chat_completions_url",
]

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT_SECONDS = 60.0
DEFAULT_CONNECT_TIMEOUT_SECONDS = 10.0
DEFAULT_OPENAI_NAME = "openai"
CHAT_COMPLETIONS_PATH = "/v1/chat/completions"
MAX_ERROR_MESSAGE_CHARS = 200
MAX_ERROR_BODY_BYTES = 64 * 1024

_VERSION_SUFFIX = "/v1"
_DONE_SENTINEL = "[DONE]"
_SECRET_MASK = "***"
_ELLIPSIS = "…"


def chat_completions_url(base_url: str) -> str:
    """Return the chat completions URL for ``base_url``.

    Accepts ``http://host:port``, ``http://host:port/`` and ``http://host:port/v1``
    alike, because all three spellings are common in OpenAI client settings.
    Raises ``ValueError`` for anything that is not an absolute http(s) URL, so a
    bad setting fails at start-up rather than on the first request.
    """
    root = base_url.strip().rstrip("/")
    root = root.removesuffix(_VERSION_SUFFIX)
    try:
        url = httpx.URL(root + CHAT_COMPLETIONS_PATH)
    except httpx.InvalidURL as exc:
        raise ValueError(f"invalid upstream base URL {base_url!r}: {exc}") from exc
    if url.scheme not in ("http", "https") or not url.host:
        raise ValueError(f"upstream base URL must be an absolute http(s) URL, got {base_url!r}")
    return str(url)


class OpenAIProducer:
    """Streams a chat completion from an OpenAI-compatible server.

    Lifecycle: the producer owns the ``httpx.AsyncClient`` it creates and
    closes it in ``aclose()``; a client passed in stays the caller's to close.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str | None,
        model: str,
        *,
        timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
        connect_timeout_seconds: float = DEFAULT_CONNECT_TIMEOUT_SECONDS,
        name: str = DEFAULT_OPENAI_NAME,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        if timeout_seconds <= 0 or connect_timeout_seconds <= 0:
            raise ValueError("timeouts must be positive")
        self.name = name
        self.model = model
        self._url = chat_completions_url(base_url)
        # Credentials may hide in the URL's userinfo; keep them out of the logs.
        self._url_for_logs = str(httpx.URL(self._url).copy_with(userinfo=b""))
        # An empty key (e.g. API_KEY= in an env file) means "no key", not "Bearer ".
        self._api_key = api_key or None
        self._timeout_seconds = timeout_seconds
        self._connect_timeout_seconds = connect_timeout_seconds
        self._timeout = httpx.Timeout(timeout_seconds, connect=connect_timeout_seconds)
        self._owns_client = client is None
        self._client = client if client is not None else httpx.AsyncClient(timeout=self._timeout)

    async def aclose(self) -> None:
        """Close the HTTP client if this producer created it."""
        if self._owns_client:
            await self._client.aclose()

    async def stream(self, input: str, context: Sequence[Message]) -> AsyncIterator[str]:
        """Yield the upstream's content deltas for ``context`` followed by ``input``."""
        try:
            async with self._client.stream(
                "POST",
                self._url,
                json=self._request_body(input, context),
                headers=self._headers(),
                timeout=self._timeout,
            ) as response:
                if not response.is_success:
                    raise await self._status_error(response)
                async for chunk in self._relay(response):
                    yield chunk
        except httpx.ConnectTimeout as exc:
            raise self._failure(
                f"timed out connecting to the upstream after {self._connect_timeout_seconds:g}s",
                exc,
            ) from exc
        except httpx.TimeoutException as exc:
            raise self._failure(
                f"upstream timed out: no data for {self._timeout_seconds:g}s", exc
            ) from exc
        except httpx.ConnectError as exc:
            raise self._failure("could not connect to the upstream", exc) from exc
        except httpx.RemoteProtocolError as exc:
            # Typically the connection closed in the middle of a chunked body.
            raise self._failure(
                "upstream stream ended before completion (connection closed)", exc
            ) from exc
        except httpx.HTTPError as exc:
            raise self._failure(f"upstream request failed ({type(exc).__name__})", exc) from exc

    def _request_body(self, input: str, context: Sequence[Message]) -> dict[str, object]:
        messages = [{"role": message.role, "content": message.content} for message in context]
        messages.append({"role": "user", "content": input})
        return {"model": self.model, "stream": True, "messages": messages}

    def _headers(self) -> dict[str, str]:
        headers = {"Accept": "text/event-stream"}
        if self._api_key is not None:
            headers["Authorization"] = f"Bearer {self._api_key}"
        return headers

    async def _relay(self, response: httpx.Response) -> AsyncIterator[str]:
        """Yield content from the upstream's SSE events; raise if [DONE] never comes.

        Events are assembled the SSE way (``data:`` lines joined until a blank
        line), so an upstream that splits one JSON payload over several
        ``data:`` lines still works. Other fields and comments are ignored.
        """
        data_lines: list[str] = []
        async for line in response.aiter_lines():
            if line:
                field, _, value = line.partition(":")
                if field == "data":
                    data_lines.append(value.removeprefix(" "))
                continue
            if not data_lines:
                continue
            payload = "\n".join(data_lines)
            data_lines.clear()
            if payload == _DONE_SENTINEL:
                return
            content = self._content_of(payload)
            if content:
                yield content
        # Be lenient with an upstream that omits the blank line after [DONE].
        if "\n".join(data_lines) == _DONE_SENTINEL:
            return
        raise self._failure("upstream stream ended before completion")

    def _content_of(self, payload: str) -> str:
        """Return ``choices[0].delta.content`` of one chunk, or "" if it has none."""
        try:
            chunk: object = json.loads(payload)
        except json.JSONDecodeError as exc:
            raise self._failure("upstream sent a malformed chunk (invalid JSON)", exc) from exc
        if not isinstance(chunk, dict):
            raise self._failure("upstream sent a malformed chunk (not a JSON object)")
        if "error" in chunk:
            message = self._error_message(chunk)
            raise self._failure(f"upstream error: {message}" if message else "upstream error")
        # Role-only, finish_reason and usage chunks legitimately carry no content.
        choices: object = chunk.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            return ""
        delta: object = choices[0].get("delta")
        if not isinstance(delta, dict):
            return ""
        content: object = delta.get("content")
        return content if isinstance(content, str) else ""

    async def _status_error(self, response: httpx.Response) -> ProducerError:
        body = bytearray()
        try:
            async for part in response.aiter_bytes():
                body += part
                if len(body) >= MAX_ERROR_BODY_BYTES:
                    break
        except httpx.HTTPError:
            # The status alone is still worth reporting.
            logger.debug("could not read upstream error body", exc_info=True)
        detail = f"upstream returned HTTP {response.status_code}"
        message = self._error_message(_parse_json(bytes(body)))
        return self._failure(f"{detail}: {message}" if message else detail)

    def _error_message(self, document: object) -> str:
        """Extract, mask and truncate ``{"error": {"message": ...}}`` (or ``{"error": str}``)."""
        if not isinstance(document, dict):
            return ""
        error: object = document.get("error")
        message: object = error.get("message") if isinstance(error, dict) else error
        if not isinstance(message, str):
            return ""
        message = " ".join(message.split())
        if self._api_key:
            message = message.replace(self._api_key, _SECRET_MASK)
        if len(message) > MAX_ERROR_MESSAGE_CHARS:
            message = message[: MAX_ERROR_MESSAGE_CHARS - len(_ELLIPSIS)] + _ELLIPSIS
        return message

    def _failure(self, message: str, cause: BaseException | None = None) -> ProducerError:
        """Build the client-safe error and log the server-side detail."""
        logger.warning(
            "producer %s: %s (url=%s, cause=%r)", self.name, message, self._url_for_logs, cause
        )
        return ProducerError(message)


def _parse_json(body: bytes) -> object:
    try:
        document: object = json.loads(body)
    except ValueError:  # JSONDecodeError, and UnicodeDecodeError for non-UTF-8 bodies
        return None
    return document
