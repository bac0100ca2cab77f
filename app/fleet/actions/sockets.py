"""Requests over Unix sockets in the directory the gunicorn master shares with its workers.

``gunicorn.conf.py`` creates that directory (mode 0700) before any worker forks
and hands it over as ``HERALD_STATS_DIR``; the metrics exchange keeps its
snapshots there (``app.fleet.files``). Each worker also listens on
``<pid>.sock`` in it.

Design decisions:

1. A socket per worker, one connection per request: the asking worker writes
   the request as one JSON line and reads one JSON line back. Request and
   answer travel on one connection, so no correlation ids, mailboxes or
   polling are needed, and a worker that is gone is known at once (the
   connect fails) instead of after the timeout.
2. Named by pid, not by worker id: every worker of one master is on the same
   host, and a path must fit ``sun_path`` (108 bytes) whatever the host name.
   A stale socket left by a killed worker is replaced by the next worker with
   that pid, which unlinks it before binding.
3. Access is the directory's: 0700, owned by the user the workers run as; the
   socket itself is made 0600 too. Whoever can connect could also signal the
   workers, so the socket grants nothing new.
4. Lines are bounded: a request by :data:`MAX_LINE_BYTES` (a few hundred bytes
   in practice), an answer by :data:`MAX_ANSWER_BYTES`. An operator action's
   answer is a few hundred bytes too, but the Mercure subscription API's gather
   (``app.mercure.gather``) answers with a worker's subscription documents, up
   to ``MERCURE_SUBSCRIPTIONS_LIST_MAX_KB``; the limit is a ceiling on the
   reader's buffer, not an allocation. An answer past it is reported as an
   error of that worker, never raised into the asking request.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

from app.fleet.actions.base import ActionBus, Answer, Handler, Request

__all__ = ["MAX_ANSWER_BYTES", "MAX_LINE_BYTES", "SOCKET_SUFFIX", "SocketBus", "pid_of"]

logger = logging.getLogger("herald.fleet")

SOCKET_SUFFIX = ".sock"
SOCKET_MODE = 0o600
MAX_LINE_BYTES = 64 * 1024
MAX_ANSWER_BYTES = 64 * 1024 * 1024
"""Above the largest ``MERCURE_SUBSCRIPTIONS_LIST_MAX_KB`` (32 MiB) with room for framing."""
READ_TIMEOUT_SECONDS = 5.0
"""How long a worker waits for the request line of a connection it accepted."""


def pid_of(worker: str) -> int:
    """The pid in a worker id (``<host>:<pid>``, ``app.fleet.snapshot.worker_id``)."""
    return int(worker.rpartition(":")[2])


class SocketBus(ActionBus):
    kind = "sockets"

    def __init__(self, directory: str | os.PathLike[str], worker: str) -> None:
        super().__init__(worker)
        self.directory = Path(directory)
        self.path = self.socket_path(worker)
        self._server: asyncio.Server | None = None
        self._handler: Handler | None = None

    def socket_path(self, worker: str) -> Path:
        return self.directory / f"{pid_of(worker)}{SOCKET_SUFFIX}"

    async def start(self, handler: Handler) -> None:
        self._handler = handler
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # left by a killed worker that had this pid
        try:
            self._server = await asyncio.start_unix_server(
                self._serve, path=self.path, limit=MAX_LINE_BYTES
            )
            os.chmod(self.path, SOCKET_MODE)
        except OSError as exc:
            # The worker still serves; operator actions then reach it only
            # when they are sent to it directly.
            logger.error("cannot listen for operator actions on %s: %s", self.path, exc)

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
            with contextlib.suppress(OSError):
                self.path.unlink()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(READ_TIMEOUT_SECONDS):
                line = await reader.readline()
            request = json.loads(line)
            if not isinstance(request, dict) or self._handler is None:
                return
            answer = await self._handler(request)
            if answer is not None:
                writer.write(json.dumps(answer, separators=(",", ":")).encode() + b"\n")
                await writer.drain()
        except (OSError, TimeoutError, ValueError) as exc:
            logger.warning("bad operator action request on %s: %s", self.path, exc)
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def ask(
        self, request: Request, workers: Sequence[str], within_seconds: float
    ) -> dict[str, Answer]:
        line = json.dumps(request, separators=(",", ":")).encode() + b"\n"
        tasks = {
            asyncio.create_task(self._ask_one(worker, line), name=f"action to {worker}"): worker
            for worker in workers
        }
        if not tasks:
            return {}
        done, pending = await asyncio.wait(tasks, timeout=within_seconds)
        for task in pending:
            task.cancel()
        answers: dict[str, Answer] = {}
        for task in done:
            answer = task.result()
            if answer is not None:
                answers[tasks[task]] = answer
        return answers

    async def _ask_one(self, worker: str, line: bytes) -> Answer | None:
        try:
            reader, writer = await asyncio.open_unix_connection(
                self.socket_path(worker), limit=MAX_ANSWER_BYTES
            )
        except OSError as exc:
            return {"error": f"unreachable: {exc.strerror or exc}"}
        try:
            writer.write(line)
            await writer.drain()
            reply = await reader.readline()
        except OSError as exc:
            return {"error": f"connection failed: {exc.strerror or exc}"}
        except ValueError:  # StreamReader's limit: the answer is longer than MAX_ANSWER_BYTES
            return {"error": f"answer longer than {MAX_ANSWER_BYTES} bytes"}
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        if not reply:
            return None  # it chose not to answer (not addressed to it)
        try:
            answer = json.loads(reply)
        except ValueError:
            return {"error": "unreadable answer"}
        return answer if isinstance(answer, dict) else {"error": "unreadable answer"}
