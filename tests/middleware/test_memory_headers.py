"""X-Process-RSS-Bytes: on ordinary responses only, never touching SSE streams."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import anyio
import httpx
import pytest
from starlette.responses import JSONResponse, StreamingResponse
from starlette.types import Message, Receive, Scope, Send

from app.middleware.memory_headers import RSS_HEADER, MemoryHeadersMiddleware
from tests.support.server import ServerProcess
from tests.support.sse_client import open_stream

FAKE_RSS = 123_456_789


def http_scope() -> Scope:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/",
        "raw_path": b"/",
        "query_string": b"",
        "root_path": "",
        "headers": [],
        "client": ("127.0.0.1", 1234),
        "server": ("127.0.0.1", 80),
    }


async def run(app: Callable[[Scope, Receive, Send], object], scope: Scope) -> list[Message]:
    sent: list[Message] = []

    async def receive() -> Message:
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    async def send(message: Message) -> None:
        sent.append(message)

    middleware = MemoryHeadersMiddleware(app, rss_source=lambda: FAKE_RSS)  # type: ignore[arg-type]
    with anyio.move_on_after(1):
        await middleware(scope, receive, send)
    return sent


def header(message: Message, name: str) -> bytes | None:
    for key, value in message["headers"]:
        if key == name.lower().encode():
            return bytes(value)
    return None


async def test_json_response_gets_the_header() -> None:
    response = JSONResponse({"ok": True})
    original = list(response.raw_headers)
    sent = await run(response, http_scope())
    assert header(sent[0], RSS_HEADER) == str(FAKE_RSS).encode()
    assert response.raw_headers == original  # the response's own list is not mutated
    assert sent[1]["body"] == b'{"ok":true}'


async def test_event_stream_is_left_alone_and_unbuffered() -> None:
    produced: list[int] = []

    async def frames() -> AsyncIterator[str]:
        for index in range(3):
            produced.append(index)
            yield f"data: {index}\n\n"

    response = StreamingResponse(frames(), media_type="text/event-stream")
    sent = await run(response, http_scope())
    assert header(sent[0], RSS_HEADER) is None
    bodies = [message["body"] for message in sent[1:] if message["body"]]
    # One message per frame, as the app sent them: nothing collected into one body.
    assert bodies == [b"data: 0\n\n", b"data: 1\n\n", b"data: 2\n\n"]


async def test_non_http_scopes_pass_straight_through() -> None:
    seen: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope["type"])
        await send({"type": "lifespan.startup.complete"})

    sent = await run(app, {"type": "lifespan"})
    assert seen == ["lifespan"]
    assert sent == [{"type": "lifespan.startup.complete"}]


# --- a real server -------------------------------------------------------------------


@pytest.mark.integration
async def test_real_server_header_on_health_not_on_streams(
    server_factory: Callable[..., ServerProcess],
) -> None:
    server = server_factory(MEMORY_HEADERS="true")
    async with (
        httpx.AsyncClient(base_url=server.base_url) as client,
        open_stream(server.base_url, "/events/with-headers") as stream,
    ):
        health = await client.get("/health")
        assert int(health.headers[RSS_HEADER]) > 10 * 1024 * 1024
        assert stream.response.headers["content-type"].startswith("text/event-stream")
        assert RSS_HEADER not in stream.response.headers
        for _ in range(100):
            if (await client.get("/health")).json()["connections"] == 1:
                break
            await anyio.sleep(0.02)
        sent = await client.post("/events/with-headers", json={"data": "streams"})
        assert sent.status_code == 202
        assert (await stream.next_event()).data == "streams"


@pytest.mark.integration
def test_off_by_default(herald: ServerProcess) -> None:
    assert RSS_HEADER not in httpx.get(herald.base_url + "/health").headers
