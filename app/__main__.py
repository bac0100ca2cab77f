"""``python -m app``: serve Herald on HOST:PORT with uvicorn (and Herald's HTTP protocol,
:mod:`app.serving.protocols`)."""

from __future__ import annotations

import sys

import uvicorn

from app.core.config import SettingsError, load_settings
from app.serving.protocols import HeraldHttpProtocol

# Our own shutdown watcher closes streams within 0.1 s; this is only a backstop.
GRACEFUL_SHUTDOWN_SECONDS = 5


def main() -> None:
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(exc, file=sys.stderr)
        sys.exit(2)
    from app.main import create_app

    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=settings.access_log,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
        # Herald decides whom to believe about X-Forwarded-For (TRUSTED_PROXIES);
        # uvicorn's own handling would trust 127.0.0.1 behind our back.
        proxy_headers=False,
        # uvicorn's protocol plus the transport in the scope (stream socket buffers).
        http=HeraldHttpProtocol,
    )


if __name__ == "__main__":
    main()
