"""Timing helper shared by the benchmark scripts (run them as `python benchmarks/<system>.py`)."""

from __future__ import annotations

import time
from collections.abc import Callable


def best_rate(fn: Callable[[], object], rows: int, repeats: int = 3) -> float:
    """Rows per second of ``fn()`` processing ``rows`` rows: the best of ``repeats`` calls (least disturbed)."""
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return rows / best
