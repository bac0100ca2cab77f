"""Is the server on its way out?

uvicorn (and gunicorn's uvicorn worker) stop accepting on SIGTERM and then
*wait* for open responses; an endless SSE stream would hold the process until
it is killed. The hub polls this function and closes every stream itself.

Two sources, as in sse-starlette: its ``AppStatus.should_exit`` flag (set by its
patch of uvicorn's ``Server.handle_exit``) and the running uvicorn ``Server``
found through the installed signal handler, for when the patch did not apply.
Extra probes can be registered (the gunicorn worker registers its own).
"""

from __future__ import annotations

import signal
from collections.abc import Callable

from sse_starlette.sse import AppStatus

__all__ = ["register_shutdown_probe", "shutdown_requested"]

_probes: list[Callable[[], bool]] = []


def register_shutdown_probe(probe: Callable[[], bool]) -> None:
    _probes.append(probe)


def _uvicorn_should_exit() -> bool:
    handler = signal.getsignal(signal.SIGTERM)
    server = getattr(handler, "__self__", None)
    return bool(getattr(server, "should_exit", False))


def shutdown_requested() -> bool:
    if AppStatus.should_exit or _uvicorn_should_exit():
        return True
    return any(probe() for probe in _probes)
