"""Shared helpers for the benchmarks: interleaved timing and ratio tables."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def interleaved(fns: dict[str, Callable[[], object]], reps: int, warmup: int = 2) -> dict[str, list[float]]:
    """Time each function ``reps`` times, round-robin (so drift hits all alike); seconds."""
    for _ in range(warmup):
        for f in fns.values():
            f()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(reps):
        for k, f in fns.items():
            t = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t)
    return times


def ratio_table(times: dict[str, list[float]], base: str) -> str:
    """Median time per implementation and the median of per-repetition ratios to ``base``."""
    lines = [f"{'implementation':<28}{'median s':>10}{'ratio':>8}"]
    for k, ts in times.items():
        ratios = [a / b for a, b in zip(ts, times[base], strict=True)]
        lines.append(f"{k:<28}{statistics.median(ts):>10.3f}{statistics.median(ratios):>8.3f}")
    return "\n".join(lines)
