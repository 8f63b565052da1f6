"""Per-batch training time of one-step ATLAS vs one-step ADV (FGSM-RS) vs twenty-step ADV (PGD-20,
step 0.01) on MNIST (mnist-small, batch 128 as in the paper), interleaved in one run, beside the
paper's Table 1 times (0.018 s / 0.009 s / 0.077 s per batch; hardware not stated, so compare
the ratios).  ``python plugins/atlas/benchmarks/bench_atlas.py [--iters 30] [--threads 1]``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from toolbox_atlas import ATLAS, fgsm_rs_attack

import toolbox as tb

PAPER = {"one-step ATLAS": 0.018, "one-step ADV": 0.009, "twenty-step ADV": 0.077}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--iters", type=int, default=30)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    ds = tb.data.load("mnist", split="train")
    x = ds.x[:128]
    x = (x.float() / 255 if x.dtype == torch.uint8 else x.float()).to(dev)
    y = ds.y[:128].to(dev)
    thr = tb.Linf(0.3)
    defenses = {"one-step ATLAS": ATLAS(thr, alpha=1e-5, beta=0.3),
                "one-step ADV": tb.defense("adversarial", attack=fgsm_rs_attack(thr)),
                "twenty-step ADV": tb.defense("adversarial", attack=tb.attack("pgd", threat=thr, steps=20,
                                                                              step_size=0.01))}
    models = {k: tb.models.create("mnist-small").to(dev) for k in defenses}
    opts = {k: torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9) for k, m in models.items()}
    times: dict[str, list[float]] = {k: [] for k in defenses}
    g = torch.Generator(device=dev).manual_seed(0)
    for it in range(a.iters + 3):
        for k, d in defenses.items():
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            loss, _ = d.loss(models[k], tb.Batch(x, y, extra={"generator": g}))
            opts[k].zero_grad()
            loss.backward()
            opts[k].step()
            if dev.type == "cuda":
                torch.cuda.synchronize()
            if it >= 3:
                times[k].append(time.perf_counter() - t0)
    base = statistics.median(times["one-step ADV"])
    print(f"{'method':16s} {'s/batch':>9s} {'ratio':>6s} {'paper s':>8s} {'paper ratio':>11s}")
    for k, ts in times.items():
        med = statistics.median(ts)
        print(f"{k:16s} {med:9.4f} {med / base:6.2f} {PAPER[k]:8.3f} {PAPER[k] / PAPER['one-step ADV']:11.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
