"""The naive hub Herald is benchmarked against: the SSE fan-out most tutorials show.

One ``asyncio.Queue(100)`` per connection, a publish endpoint that puts the body
into every queue (a full queue drops the event for that subscriber, so one slow
client cannot stall the publisher), and one default sse-starlette
``EventSourceResponse`` per connection (its own task group, ping task and
disconnect listener). Served by ``uvicorn.run`` with the same options as
``python -m app``. Deliberately not improved: it is the yardstick.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from sse_starlette import EventSourceResponse

from load_tests.serve import serve

__all__ = ["app", "main"]

app = FastAPI()
queues: set[asyncio.Queue[str]] = set()


@app.get("/events")
async def subscribe() -> EventSourceResponse:
    queue: asyncio.Queue[str] = asyncio.Queue(100)
    queues.add(queue)

    async def stream() -> AsyncIterator[dict[str, str]]:
        try:
            while True:
                yield {"data": await queue.get()}
        finally:
            queues.discard(queue)

    return EventSourceResponse(stream())


@app.post("/publish")
async def publish(request: Request) -> dict[str, int]:
    body = (await request.body()).decode()
    for queue in list(queues):
        with contextlib.suppress(asyncio.QueueFull):
            queue.put_nowait(body)
    return {"subscribers": len(queues)}


@app.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


def main() -> None:
    serve(app, 8001)


if __name__ == "__main__":
    main()
