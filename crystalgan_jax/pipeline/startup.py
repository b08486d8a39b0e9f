"""Process-wide settings that an entry point applies first, before its heavy imports.

Kept apart from everything else so that importing it loads nothing (no JAX, no pymatgen):
``experiments/train.py`` calls :func:`collect_less` on its first lines.
"""

from __future__ import annotations

import gc

# Python's defaults are (700, 10, 10): a young collection every 700 net container
# allocations, and an older one every 10 of those. Importing JAX, pymatgen and matplotlib
# and tracing a training step allocate millions of objects that live for the whole run,
# so the collector ran over them thousands of times. 50,000 young objects take a few MB.
GC_THRESHOLDS = (50_000, 10, 10)


def collect_less() -> None:
    """Sets the cyclic garbage collector's thresholds to :data:`GC_THRESHOLDS`.

    Nothing is left uncollected: every generation is still collected, less often. Python's
    default ran the collector over the millions of objects of JAX, pymatgen and a traced
    step thousands of times during a short run (docs/performance.md has the figures).
    """
    gc.set_threshold(*GC_THRESHOLDS)
