"""The garbage collector tuned for a process that parses batches and keeps a hub.

Measured with ``load_tests.publish_rate``'s batch targets (1,000-event batches on
``memory://``; figures in docs/performance.md, "Publishing"): with CPython's defaults
the cyclic collector takes a large share of a worker's CPU. Two causes, two decisions:

1. A batch holds a few thousand live containers at once (the parsed items, their
   drafts and events), so the default young-generation threshold of 700 ran several
   collections per batch, each walking the live request and promoting it to the older
   generations, which then ran full collections over everything. ``GC_YOUNG_THRESHOLD``
   (default 10,000: more than a largest batch's containers) lets a request's objects
   die by reference counting before a collection looks at them. The cost is bounded:
   cyclic garbage waits for at most that many allocations (a few MB at worst; cycles
   are rare on these paths).
2. The tens of thousands of objects built at start-up (modules, FastAPI's routes, the
   settings) never die, yet every full collection walked them again. ``gc.freeze()``
   once the application is ready moves them out of the collector's sight; under
   gunicorn each worker does it after its own start-up.

The older generations keep their default ratios: only what survives many young
collections reaches them, and on these paths little does.
"""

from __future__ import annotations

import gc

__all__ = ["tune_collector"]


_frozen = False


def tune_collector(young_threshold: int) -> None:
    """Freeze what start-up built (once per process: an application built again in the
    same process, as tests do, must not freeze its predecessor's objects for good) and set
    the young generation's threshold."""
    global _frozen
    if not _frozen:
        _frozen = True
        gc.collect()  # what start-up left as garbage must not be frozen with the rest
        gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(young_threshold, middle, old)
