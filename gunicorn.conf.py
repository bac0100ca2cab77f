"""gunicorn settings for the deployment (render.yaml starts `gunicorn app.main:app`).

Every value can be overridden by the usual environment variables or flags.
"""

from __future__ import annotations

import gc
import os
import shutil
import sys
import tempfile

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
# The app is imported once, in the master, and every worker forks from it: the pages
# of the imported code and the objects built at import are shared by all workers
# instead of copied into each (a fresh worker starts at a few MB of its own, not
# tens), which is also what lets a reload's new workers boot beside the old ones
# inside the box. The heap is frozen before each fork (pre_fork) so the workers'
# collections do not write to those objects and copy their pages after all.
# HUP restarts the workers from the master's copy of the code: deploy new code by
# restarting the master (a new release does).
preload_app = True
# The hub logs one line per stream end itself; access logs would repeat each
# request's query string, which may carry credentials.


# The directory through which this master's workers share their figures
# (app/fleet/files.py), created before any worker forks so all inherit it.
# The owner variable holds the pid of the master that created it: a master
# re-executed by USR2 inherits both and makes its own, and only the creator
# removes it (the module's globals do not survive a HUP reload; the
# environment does). A HERALD_STATS_DIR set by hand is used as is, never removed.
STATS_DIR_VARIABLE = "HERALD_STATS_DIR"
STATS_DIR_OWNER_VARIABLE = "HERALD_STATS_DIR_OWNER"


# A bad setting is permanent: check it once here, in the master, before any worker
# forks, and stop the deployment with its message (a worker failing on it would be
# respawned forever). What is transient (Redis unreachable) stays inside the workers,
# which serve degraded and recover by themselves (app/broker/redis.py). Building the
# app checks every setting, and the master builds it anyway (preload_app): here it
# is built first, so a bad one ends the start with its message and this status.
BAD_SETTINGS_EXIT_STATUS = 2


def _build_the_app() -> None:
    from app.core.config import SettingsError

    try:
        import app.main  # noqa: F401
    except SettingsError as exc:
        print(exc, file=sys.stderr)
        raise SystemExit(BAD_SETTINGS_EXIT_STATUS) from None


_build_the_app()


def on_starting(server: object) -> None:
    log = getattr(server, "log")  # noqa: B009 - gunicorn's Arbiter, untyped here
    inherited_owner = os.environ.get(STATS_DIR_OWNER_VARIABLE)
    if not os.environ.get(STATS_DIR_VARIABLE) or inherited_owner not in (None, str(os.getpid())):
        os.environ[STATS_DIR_VARIABLE] = tempfile.mkdtemp(prefix="herald-stats-")
        os.environ[STATS_DIR_OWNER_VARIABLE] = str(os.getpid())
    log.info("workers share their stats in %s (unless Redis)", os.environ[STATS_DIR_VARIABLE])
    broker = os.environ.get("BROKER_URL", "memory://")
    if workers > 1 and broker.startswith("memory://"):
        log.warning(
            "!!! %d workers with BROKER_URL=memory:// — each worker is its own hub: an event "
            "published through one worker never reaches subscribers of another, and replay "
            "history is per worker. Set BROKER_URL=redis://... or run one worker. !!!",
            workers,
        )


def on_exit(server: object) -> None:
    if os.environ.get(STATS_DIR_OWNER_VARIABLE) == str(os.getpid()):
        shutil.rmtree(os.environ[STATS_DIR_VARIABLE], ignore_errors=True)


def pre_fork(server: object, worker: object) -> None:
    # Everything the master built moves to the permanent generation: a worker's
    # collections skip it, so its shared pages stay shared (see preload_app above).
    gc.freeze()
