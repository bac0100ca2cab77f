"""A TCP proxy in front of Redis that can hold Redis's replies: while held, commands still
reach Redis and run, and their answers wait. So a test can have Herald's workers publish,
see in Redis itself that the events are in, and stop the workers before any is answered."""

from __future__ import annotations

import asyncio
import contextlib
from types import TracebackType

__all__ = ["ReplyValve"]

CHUNK_BYTES = 65536


class ReplyValve:
    def __init__(self, redis_port: int) -> None:
        self.redis_port = redis_port
        self.port = 0
        self._open = asyncio.Event()
        self._open.set()
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[object]] = set()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def hold(self) -> None:
        self._open.clear()

    def release(self) -> None:
        self._open.set()

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, replies: bool
    ) -> None:
        try:
            while data := await reader.read(CHUNK_BYTES):
                if replies:
                    await self._open.wait()
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()  # an end on one side is passed on to the other

    async def _connect(self, client: asyncio.StreamReader, to_client: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            redis, to_redis = await asyncio.open_connection("127.0.0.1", self.redis_port)
        except OSError:
            to_client.close()
            return
        try:
            await asyncio.gather(
                self._pump(client, to_redis, replies=False),
                self._pump(redis, to_client, replies=True),
            )
        finally:
            self._connections.discard(task)

    async def __aenter__(self) -> ReplyValve:
        self._server = await asyncio.start_server(self._connect, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        assert self._server is not None
        self._server.close()
        self.release()
        for task in list(self._connections):
            task.cancel()
        for task in list(self._connections):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._server.wait_closed()
