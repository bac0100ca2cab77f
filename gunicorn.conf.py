"""gunicorn settings for the deployment (render.yaml starts `gunicorn app.main:app`).

Every value can be overridden by the usual environment variables or flags.
"""

from __future__ import annotations

import os

# Render (and most platforms) give the port in $PORT and expect 0.0.0.0.
bind = f"{os.environ.get('HOST', '0.0.0.0')}:{os.environ.get('PORT', '8000')}"
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
worker_class = "app.serving.worker.HeraldWorker"
timeout = 120
# Recycle workers now and then (a safety net against slow leaks in dependencies);
# the jitter keeps both workers from restarting at once. Each EventSource
# reconnect counts as a request.
max_requests = int(os.environ.get("GUNICORN_MAX_REQUESTS", "1000"))
max_requests_jitter = int(os.environ.get("GUNICORN_MAX_REQUESTS_JITTER", "50"))
# Render waits 30 s (its default shutdown delay) between SIGTERM and SIGKILL;
# Herald closes streams within ~0.1 s of SIGTERM, so 25 s is plenty and fits.
graceful_timeout = 25
keepalive = 5
accesslog = None
# The hub logs one line per stream end itself; access logs would repeat each
# request's query string, which may carry credentials.


def on_starting(server: object) -> None:
    broker = os.environ.get("BROKER_URL", "memory://")
    if workers > 1 and broker.startswith("memory://"):
        log = getattr(server, "log")  # noqa: B009 - gunicorn's Arbiter, untyped here
        log.warning(
            "!!! %d workers with BROKER_URL=memory:// — each worker is its own hub: an event "
            "published through one worker never reaches subscribers of another, and replay "
            "history is per worker. Set BROKER_URL=redis://... or run one worker. !!!",
            workers,
        )
