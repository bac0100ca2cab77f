"""``HERALD_STATS_DIR``: the directory through which one gunicorn master's workers share.

The master creates it before any worker forks (``gunicorn.conf.py``) and hands it over in the
environment; the figures (:mod:`app.fleet.files`) and the action bus's sockets
(:mod:`app.fleet.actions.sockets`) live in it. It is read from the environment when the worker
starts, not from ``Settings``: with ``--preload`` the settings are read in the master before
the hook that sets it runs.
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["STATS_DIR_VARIABLE", "stats_dir"]

STATS_DIR_VARIABLE = "HERALD_STATS_DIR"


def stats_dir(environ: Mapping[str, str]) -> str:
    """The shared directory, or ``""`` when this worker has no gunicorn master sharing one."""
    return environ.get(STATS_DIR_VARIABLE, "").strip()
