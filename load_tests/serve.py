"""Run a comparison server (the baseline hub, the bare ASGI app) the way Herald runs.

Same ``uvicorn.run`` options as ``python -m app``, so a comparison measures the
application, not the server settings; HOST, PORT and LOG_LEVEL from the environment.
"""

from __future__ import annotations

import os

import uvicorn
from starlette.types import ASGIApp

__all__ = ["serve"]


def serve(app: ASGIApp, default_port: int) -> None:
    uvicorn.run(
        app,
        host=os.environ.get("HOST", "127.0.0.1"),
        port=int(os.environ.get("PORT", str(default_port))),
        log_level=os.environ.get("LOG_LEVEL", "warning"),
        access_log=False,
        timeout_graceful_shutdown=5,
        proxy_headers=False,
    )
