"""SEAT step cost against FGSM-RS on MNIST (mnist-small, batch 100), one thread.

    python plugins/seat/benchmarks/bench_seat.py [--steps 30] [--reps 5]

Times full optimizer steps (defense.loss + backward + Adam step) on random MNIST batches,
interleaving the variants per repetition and reporting the median ms/step and the ratio to
FGSM-RS.  Variants: FGSM-RS (uniform start, step 1.25 eps: 2 forward + 2 backward passes);
SEAT as the code computes it (4 forwards; detached first-order term); SEAT with the shared clean
pass (3 forwards); and the default SEAT (shared pass + double backprop through δᵀ∇ₓCE).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from toolbox_seat import SEAT

import toolbox as tb


def variants(eps: float) -> dict[str, tb.Defense]:
    th = tb.Linf(eps)
    return {
        "fgsm-rs": tb.defense("adversarial", attack=tb.attack("fgsm", threat=th, step_size=1.25 * eps,
                                                              random_start=True, clamp_start=False)),
        "seat-code (4 fwd, detached)": SEAT(th, share_clean_pass=False, double_backprop=False),
        "seat-shared (3 fwd, detached)": SEAT(th, share_clean_pass=True, double_backprop=False),
        "seat-default (3 fwd, double backprop)": SEAT(th),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    ds = tb.data.load("mnist", split="train")
    x_all, y_all = ds.x[:5000].float().div(255), ds.y[:5000]
    times: dict[str, list[float]] = {k: [] for k in variants(0.3)}
    for _rep in range(a.reps):
        for name, d in variants(0.3).items():
            torch.manual_seed(0)
            model = tb.models.create("mnist-small", seed=0)
            opt = torch.optim.Adam(model.parameters(), lr=1e-3)
            gen = torch.Generator().manual_seed(0)
            batches = [torch.randint(0, len(x_all), (100,), generator=gen) for _ in range(a.steps + 2)]
            t0 = 0.0
            for i, idx in enumerate(batches):
                if i == 2:
                    t0 = time.perf_counter()   # two warm-up steps
                loss, _ = d.loss(model, tb.Batch(x_all[idx], y_all[idx], extra={"generator": gen}))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            times[name].append(1000 * (time.perf_counter() - t0) / a.steps)
    base = statistics.median(times["fgsm-rs"])
    print(f"{'variant':40s} {'ms/step':>8s} {'x FGSM-RS':>10s}")
    for name, ts in times.items():
        m = statistics.median(ts)
        print(f"{name:40s} {m:8.1f} {m / base:10.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
