"""Shared helpers for the benchmarks: interleaved timing (wall and CPU time) and ratio tables."""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable


def interleaved(fns: dict[str, Callable[[], object]], reps: int, warmup: int = 2, seed: int = 0,
                cpu: dict[str, list[float]] | None = None) -> dict[str, list[float]]:
    """Time each function ``reps`` times, interleaved, in seconds of wall-clock time.

    Every repetition runs each function once, in a freshly shuffled order (seeded), so drift and
    position effects (the run after a heavy one, caches) hit all implementations alike.  When
    ``cpu`` is a dict it receives the process CPU time of each run too: on a shared machine CPU
    time hardly moves when other processes compete for the cores, wall time does.
    """
    rng = random.Random(seed)
    names = list(fns)
    for _ in range(warmup):
        for k in names:
            fns[k]()
    times: dict[str, list[float]] = {k: [] for k in fns}
    if cpu is not None:
        cpu.update({k: [] for k in fns})
    for _ in range(reps):
        order = names[:]
        rng.shuffle(order)
        for k in order:
            c, t = time.process_time(), time.perf_counter()
            fns[k]()
            times[k].append(time.perf_counter() - t)
            if cpu is not None:
                cpu[k].append(time.process_time() - c)
    return times


def median_ratio(times: dict[str, list[float]], name: str, base: str) -> float:
    """Median over repetitions of ``time[name] / time[base]`` (pairs from the same repetition)."""
    return statistics.median(a / b for a, b in zip(times[name], times[base], strict=True))


def ratio_table(times: dict[str, list[float]], base: str,
                cpu: dict[str, list[float]] | None = None) -> str:
    """Median time per implementation and the median of per-repetition ratios to ``base``
    (wall-clock, and CPU time when ``cpu`` is given)."""
    head = f"{'implementation':<30}{'wall s':>9}{'ratio':>8}"
    if cpu:
        head += f"{'cpu s':>9}{'ratio':>8}"
    lines = [head]
    for k, ts in times.items():
        line = f"{k:<30}{statistics.median(ts):>9.3f}{median_ratio(times, k, base):>8.3f}"
        if cpu:
            line += f"{statistics.median(cpu[k]):>9.3f}{median_ratio(cpu, k, base):>8.3f}"
        lines.append(line)
    return "\n".join(lines)
