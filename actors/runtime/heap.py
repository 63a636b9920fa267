"""How a long-running process (agent, controller) keeps the cyclic garbage collector's full passes short.

Start-up leaves about a hundred thousand objects that live as long as the process: modules, classes, functions,
kubernetes-asyncio's model classes.  Every full (generation 2) collection walks them all.  In the 1000-pod load
test, whose ten agents share two cores and allocate alike, all ten made a full pass at the same moment once or
twice a run, each taking 220 to 670 ms of wall time; when that moment fell in a phase, one round of ten ADDs
stalled for about 0.4 s, the 1 % of the phase that its p99 measures (``docs/benchmarks.md``, "Full
collections").  ``settle_heap`` hands what start-up made to the permanent generation (``gc.freeze``), so later
passes walk only what serving made: under 13 ms in the same runs.
"""

from __future__ import annotations

import gc


def settle_heap() -> None:
    """Collect start-up's garbage, then hide everything still alive from later collections.  Call once, in
    the process's own entry point when it serves (never from a library: tests share one interpreter)."""
    gc.collect()
    gc.freeze()
