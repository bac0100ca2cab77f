"""A fake OpenAI-compatible chat completions server, run for real by uvicorn.

The producer under test talks HTTP to this server over a real socket, so the
tests exercise httpx's streaming, timeouts and connection handling exactly as
in production, instead of a mock transport that would hide them.

The server is a raw ASGI app (no framework) so that every failure mode can be
produced precisely: an error status with a JSON body, a body that ends cleanly
without ``[DONE]``, a connection dropped mid-body, and a stall between chunks.
Each test scripts it by assigning ``FakeUpstream.behaviour`` and reads back
``FakeUpstream.requests``.

Design decisions:

- The server runs in a background thread with its own event loop, so a stall in
  the fake cannot block the test's loop, and the fake's timings are real.
- A stall waits for the client to disconnect (or ``stall_seconds``), so once the
  producer gives up the handler ends at once and shutdown is not held up.
- The listening socket is bound before the thread starts and handed to uvicorn,
  so the port is known up front and no other process can grab it in between.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any, Literal

import uvicorn

__all__ = [
    "CHAT_COMPLETIONS_PATH",
    "Behaviour",
    "FakeUpstream",
    "RecordedRequest",
    "chunk_payload",
    "error_body",
]

CHAT_COMPLETIONS_PATH = "/v1/chat/completions"
DEFAULT_CHUNKS = ("Hello", ",", " world", "!")
DEFAULT_STALL_SECONDS = 5.0
STARTUP_TIMEOUT_SECONDS = 5.0
SHUTDOWN_TIMEOUT_SECONDS = 5.0
_MODEL = "fake-model"

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

Finish = Literal["done", "cut", "drop"]
"""How a 200 stream ends: ``[DONE]``; body ends cleanly without ``[DONE]``;
connection dropped mid-body (the app raises, so uvicorn aborts the response)."""


@dataclass(frozen=True)
class Behaviour:
    """What the fake answers to the next requests."""

    chunks: tuple[str, ...] = DEFAULT_CHUNKS
    status: int = 200
    error_body: bytes = b""
    finish: Finish = "done"
    # Send this many chunks, then stall before the rest.
    stall_after: int | None = None
    stall_seconds: float = DEFAULT_STALL_SECONDS
    # Pause between content chunks, for a slow upstream a client can join or leave midway.
    chunk_delay_seconds: float = 0.0
    # Raw ``data:`` payloads sent after the chunks (e.g. malformed JSON).
    raw_payloads: tuple[str, ...] = ()


@dataclass(frozen=True)
class RecordedRequest:
    """One request the fake received."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any


def chunk_payload(delta: dict[str, Any], finish_reason: str | None = None) -> str:
    """An OpenAI ``chat.completion.chunk`` as the JSON after ``data: ``."""
    return json.dumps(
        {
            "id": "chatcmpl-fake",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": _MODEL,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
        }
    )


def error_body(message: str) -> bytes:
    """An OpenAI-style JSON error body."""
    return json.dumps({"error": {"message": message, "type": "fake_error"}}).encode()


def _event(payload: str) -> bytes:
    return f"data: {payload}\n\n".encode()


class _DropConnection(Exception):
    """Raised inside the app so that uvicorn aborts the response mid-body."""


class FakeUpstream:
    """The fake server; use as a context manager or call ``start``/``stop``."""

    def __init__(self) -> None:
        self.behaviour = Behaviour()
        self._requests: list[RecordedRequest] = []
        self._lock = threading.Lock()
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind(("127.0.0.1", 0))
        self.port: int = self._socket.getsockname()[1]
        # log_config=None: don't let uvicorn reconfigure the test process's logging.
        # interface="asgi3": uvicorn's auto-detection mistakes a bound method for ASGI2.
        config = uvicorn.Config(
            self._app, log_level="warning", log_config=None, lifespan="off", interface="asgi3"
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._socket]}, daemon=True
        )

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    def reset(self) -> None:
        """Back to the default behaviour with no recorded requests."""
        self.behaviour = Behaviour()
        with self._lock:
            self._requests.clear()

    def start(self) -> None:
        self._thread.start()
        deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("fake upstream did not start")
            time.sleep(0.01)

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(SHUTDOWN_TIMEOUT_SECONDS)
        self._socket.close()

    def __enter__(self) -> FakeUpstream:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    async def _app(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        self._record(scope, body)
        behaviour = self.behaviour
        if scope["path"] != CHAT_COMPLETIONS_PATH:
            await self._respond(send, 404, error_body(f"no route {scope['path']}"))
        elif behaviour.status != 200:
            await self._respond(send, behaviour.status, behaviour.error_body)
        else:
            await self._stream(behaviour, receive, send)

    def _record(self, scope: Scope, body: bytes) -> None:
        headers = {
            key.decode("latin-1"): value.decode("latin-1") for key, value in scope["headers"]
        }
        try:
            parsed: Any = json.loads(body)
        except ValueError:
            parsed = body
        request = RecordedRequest(scope["method"], scope["path"], headers, parsed)
        with self._lock:
            self._requests.append(request)

    @staticmethod
    async def _respond(send: Send, status: int, body: bytes) -> None:
        headers = [(b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    @staticmethod
    async def _stream(behaviour: Behaviour, receive: Receive, send: Send) -> None:
        headers = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})

        async def emit(payload: str) -> None:
            await send({"type": "http.response.body", "body": _event(payload), "more_body": True})

        # Like OpenAI: a role-only first chunk and a content-less last chunk.
        await emit(chunk_payload({"role": "assistant", "content": ""}))
        for index, text in enumerate(behaviour.chunks):
            if index == behaviour.stall_after:
                # receive() returns http.disconnect as soon as the client gives up.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(receive(), behaviour.stall_seconds)
                return
            if index and behaviour.chunk_delay_seconds:
                await asyncio.sleep(behaviour.chunk_delay_seconds)
            await emit(chunk_payload({"content": text}))
        for payload in behaviour.raw_payloads:
            await emit(payload)
        if behaviour.finish == "drop":
            raise _DropConnection("fake upstream drops the connection")
        await emit(chunk_payload({}, finish_reason="stop"))
        if behaviour.finish == "done":
            await emit("[DONE]")
        await send({"type": "http.response.body", "body": b"", "more_body": False})
