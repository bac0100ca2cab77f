"""An earlier commit of this repository as a plain directory, to serve it beside this
checkout in one run (the before/after steps of the latency, write-cost and publish tools)."""

from __future__ import annotations

import contextlib
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from tests.support.server import REPO_ROOT

__all__ = ["checkout"]


@contextlib.contextmanager
def checkout(commit: str) -> Iterator[Path]:
    """``commit`` of this repository as a plain directory tree (``git archive``)."""
    with tempfile.TemporaryDirectory(prefix="herald-before-") as directory:
        archive = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "archive", commit],
            check=True,
            capture_output=True,
        )
        subprocess.run(["tar", "-x", "-C", directory], input=archive.stdout, check=True)
        yield Path(directory)
