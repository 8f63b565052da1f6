"""MSD step cost vs three separate single-norm PGD steps (issue 12, "Speed").

One MSD iteration = one forward+backward pass at the shared iterate plus one forward pass per
norm (to choose the candidate); three single-norm PGDs = three forward+backward passes.
Prints seconds per iteration for both and their ratio (< 1: MSD is cheaper than running the
three attacks).  ``python plugins/union/benchmarks/bench_union.py [--batch 100] [--steps 20]``.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from toolbox_union import MSD, Union

import toolbox as tb


def bench(batch: int = 100, steps: int = 20, repeats: int = 3, model: str = "mnist-small") -> dict:
    torch.manual_seed(0)
    net = tb.models.create(model).eval()
    x = torch.rand(batch, 1, 28, 28)
    y = torch.randint(0, 10, (batch,))
    threats = [tb.Linf(0.3), tb.L2(1.5), tb.L1(12.0)]
    msd = MSD(Union(threats), steps=steps, seed=0)
    pgds = [tb.attack("pgd", threat=t, steps=steps, seed=0) for t in threats]

    def best(fn):
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return min(times) / steps

    t_msd = best(lambda: msd(net, x, y, check=False))
    t_pgd = best(lambda: [p(net, x, y, check=False) for p in pgds])
    return {"batch": batch, "steps": steps, "threads": torch.get_num_threads(),
            "msd_s_per_iter": round(t_msd, 5), "three_pgd_s_per_iter": round(t_pgd, 5),
            "ratio": round(t_msd / t_pgd, 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    print(json.dumps(bench(a.batch, a.steps)))


if __name__ == "__main__":
    main()
