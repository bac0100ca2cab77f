"""The collector tuning: start-up objects frozen once per process, the young threshold set."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.support.server import REPO_ROOT

# In a child process: freezing is process-wide and must not touch the test runner's heap.
PROBE = """
import gc, json
from app.serving.collector import tune_collector
built_at_start = [object() for _ in range(1000)]
tune_collector(12_345)
first = gc.get_freeze_count()
later = [[] for _ in range(1000)]  # built after start-up: must stay collectable
tune_collector(20_000)  # an application built again in the same process
print(json.dumps({"first": first, "second": gc.get_freeze_count(),
                  "threshold": gc.get_threshold()[0]}))
"""


def test_start_up_objects_are_frozen_once_and_the_young_threshold_is_set() -> None:
    out = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    )
    seen = json.loads(out.stdout)
    assert seen["first"] > 1000  # at least what the probe built before start-up ended
    assert seen["second"] == seen["first"]  # the second application froze nothing more
    assert seen["threshold"] == 20_000
