"""A server for ``load_tests/density.py``: Herald (``python -m app``), gunicorn, plain uvicorn
or the raw floor hub, optionally under tracemalloc.

Run as a script (``python load_tests/density_server.py app|gunicorn|uvicorn|floor``), not as
a module, so that ``PYTHONPATH`` decides which checkout's ``app`` it serves: the density tool
serves an earlier commit's code the same way, for before/after figures in one run.

With ``DENSITY_TRACE_FRAMES`` set, each ``SIGUSR1`` takes a tracemalloc snapshot (that many
frames per allocation) after a full collection; tracing starts at the first. The second is
compared with the first and written, by allocating stack (most recent frame first), to
``DENSITY_TRACE_OUT`` (JSON): what the streams opened between the two signals hold.
"""

from __future__ import annotations

import gc
import json
import os
import runpy
import signal
import sys
import tracemalloc
from pathlib import Path
from types import FrameType

__all__: list[str] = []

TOP_LINES = 400


def _snapshots() -> None:
    frames = int(os.environ.get("DENSITY_TRACE_FRAMES", "0"))
    if not frames:
        return
    taken: list[tracemalloc.Snapshot] = []
    out = Path(os.environ["DENSITY_TRACE_OUT"])

    def on_signal(signum: int, frame: FrameType | None) -> None:
        gc.collect()
        if not tracemalloc.is_tracing():
            # Traced from the first signal on: what was allocated before it is not the
            # streams', and tracing the start-up would make it too slow to answer in time.
            tracemalloc.start(frames)
        taken.append(tracemalloc.take_snapshot())
        if len(taken) < 2:
            return
        filters = [tracemalloc.Filter(False, tracemalloc.__file__)]
        before, after = (s.filter_traces(filters) for s in taken[-2:])
        rows = []
        for stat in after.compare_to(before, "traceback")[:TOP_LINES]:
            rows.append(
                {
                    "size_diff": stat.size_diff,
                    "count_diff": stat.count_diff,
                    "frames": [f"{f.filename}:{f.lineno}" for f in reversed(stat.traceback)],
                }
            )
        total = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
        out.write_text(json.dumps({"total": total, "rows": rows}))

    signal.signal(signal.SIGUSR1, on_signal)


def main() -> None:
    kind = sys.argv[1]
    _snapshots()
    if kind == "floor":
        from load_tests.floor_hub import main as floor

        floor()
    elif kind == "gunicorn":
        sys.argv = ["gunicorn", "app.main:app", *sys.argv[2:]]
        runpy.run_module("gunicorn", run_name="__main__")
    elif kind == "uvicorn":
        sys.argv = ["uvicorn", "app.main:app", *sys.argv[2:]]
        runpy.run_module("uvicorn", run_name="__main__")
    else:
        sys.argv = ["app"]
        runpy.run_module("app", run_name="__main__")


if __name__ == "__main__":
    # Run as a script: its own directory comes first on sys.path; the checkout to serve is
    # the working directory (and PYTHONPATH), so ``app`` is that checkout's.
    sys.path[0] = os.getcwd()
    main()
