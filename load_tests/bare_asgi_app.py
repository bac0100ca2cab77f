"""The ceiling for publish figures: a bare ASGI app on the same uvicorn as Herald.

It reads each request's body and answers ``202`` with a small JSON object, and
does nothing else: no framework, no routing, no work. Whatever a publish costs
beyond this is Herald's (or FastAPI's). Served by ``uvicorn.run`` with the same
options as ``python -m app`` (the event loop and HTTP parser uvicorn picks with
``auto``), so both sides of a ratio share the server.
"""

from __future__ import annotations

from typing import Any

from load_tests.serve import serve

__all__ = ["app", "main"]

ANSWER = b'{"id":"0-0"}'
HEADERS = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(ANSWER))]
HEALTH = b'{"status":"ok"}'


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    if scope["path"] == "/health":
        body, status = HEALTH, 200
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    else:
        body, status, headers = ANSWER, 202, HEADERS
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def main() -> None:
    serve(app, 8002)


if __name__ == "__main__":
    main()
