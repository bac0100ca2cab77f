"""The gunicorn worker: uvicorn's, plus streams that close on every kind of worker exit.

The trap this fixes: when a worker reaches ``--max-requests`` uvicorn's main
loop simply ends and it starts its graceful shutdown — without setting
``Server.should_exit`` and without any signal. sse-starlette (and our hub's
shutdown watcher) never hear of it, so open SSE streams keep the worker alive
until gunicorn kills it at ``--timeout``, while every EventSource reconnect
counts as one more request. This worker registers a shutdown probe that sees
the server draining for any reason: SIGTERM/SIGINT (gunicorn stop, SIGHUP
reload of old workers), SIGQUIT, or max-requests.

Exit codes matter to gunicorn: ``WORKER_BOOT_ERROR`` (3) halts the whole
deployment, any other exit is respawned. So a bad setting (permanent; normally
caught in the master by ``gunicorn.conf.py`` first) exits with 3, and nothing
transient may: an unreachable Redis leaves the worker serving degraded.

It also serves with Herald's HTTP protocol (:mod:`app.serving.protocols`), which
hands each stream its transport, as ``python -m app`` does.
"""

from __future__ import annotations

import sys
from typing import ClassVar

from gunicorn.arbiter import Arbiter
from uvicorn.server import Server
from uvicorn_worker import UvicornWorker

from app.core.config import SettingsError
from app.memory.box import register_server_root
from app.serving.protocols import HeraldHttpProtocol
from app.sse.shutdown import register_shutdown_probe

__all__ = ["HeraldWorker", "server_is_draining"]


def server_is_draining(server: Server) -> bool:
    if server.should_exit:
        return True
    limit = server.config.limit_max_requests
    return limit is not None and server.server_state.total_requests >= limit


class HeraldWorker(UvicornWorker):  # type: ignore[misc, unused-ignore]  # untyped base
    # Herald decides whom to believe about X-Forwarded-For (TRUSTED_PROXIES).
    CONFIG_KWARGS: ClassVar[dict[str, object]] = {
        **UvicornWorker.CONFIG_KWARGS,
        "proxy_headers": False,
        # uvicorn's protocol plus the transport in the scope (stream socket buffers).
        "http": HeraldHttpProtocol,
    }

    _server: Server | None = None

    def load_wsgi(self) -> None:
        # The box the memory guard reads is the master's whole tree, this worker's siblings
        # included (app.memory.box); the guard may recycle this worker once a crowd left.
        register_server_root(self.ppid, self.cfg.workers, self._recycle)
        try:
            super().load_wsgi()
        except SettingsError as exc:
            self.log.error("%s", exc)
            sys.exit(Arbiter.WORKER_BOOT_ERROR)

    def _recycle(self) -> None:
        # A graceful exit, as for max-requests: streams end with a jittered retry: and resume
        # on the other workers; the master starts a fresh worker in this one's place.
        if self._server is not None:
            self._server.should_exit = True

    async def _serve(self) -> None:
        # Same as UvicornWorker._serve, keeping the Server to watch it.
        self.config.app = self.wsgi
        server = self._server = Server(config=self.config)
        register_shutdown_probe(lambda: server_is_draining(server))
        self._install_sigquit_handler()
        await server.serve(sockets=self.sockets)
        if not server.started:
            sys.exit(Arbiter.WORKER_BOOT_ERROR)
