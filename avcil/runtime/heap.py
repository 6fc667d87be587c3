"""Giving freed memory back to the system after a model reload.

A reload builds the new head (the analytic readout's statistics: ~20 MB for lite, allocated twice while the state
dict is copied in) on the watcher thread while the old head still serves, then drops the old one. glibc keeps
what was freed in that thread's arena: in a 60-minute soak, RSS rose by 50-60 MB at each reload and stayed there
(benchmarks/results/soak-*). `malloc_trim(0)` returns it: a lite Recognizer flipped 12 times between three
versions of the soak's model dir stayed 40-100 MB above its starting RSS without it, and at or below it with it.
"""

from __future__ import annotations

import ctypes
import ctypes.util


def trim_heap() -> bool:
    """Return freed heap memory to the system (glibc's malloc_trim); False where the C library has none."""
    name = ctypes.util.find_library("c")
    trim = getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None
    return bool(trim(0)) if trim is not None else False
