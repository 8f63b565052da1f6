"""Speed of MMA relative to PGD-AT with the same K, and AN-PGD throughput relative to PGD-K.

``python plugins/mma/benchmarks/bench_mma.py [--steps 10] [--batch 50] [--batches 20]``
prints one JSON line: seconds per training step of MMA and of PGD-AT (CE on PGD-K, 2.5 eps/K)
on ``mnist-small`` at eps / d_max 0.45 (MMA after a warm-up epoch-fraction so that most
examples are correct and searched), images/s of AN-PGD (K PGD steps + 10 bisection forwards)
and of PGD-K, and the two ratios.  Interleaved repetitions, median of ``--reps``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from toolbox_mma import MMA, PGDLS

import toolbox as tb
from toolbox.defense import Batch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--batch", type=int, default=50)
    p.add_argument("--batches", type=int, default=10)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    ds = tb.data.load("mnist")
    x = ds.x[: a.batch * a.batches].float().div(255)
    y = ds.y[: a.batch * a.batches]
    # a model trained a little so that the MMA search runs on most examples
    model = tb.models.create("mnist-small")
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    tb.Trainer(model, tb.defense("standard"), optimizer=opt, batch_size=100).fit(
        tb.data.subset(ds, range(3000)), epochs=1)
    mma = MMA(tb.Linf(0.45), eps_min=0.1, steps=a.steps, seed=0)
    pgd_at = PGDLS(tb.attack("pgd", threat=tb.Linf(0.45), steps=a.steps, keep_best=False), ramp_epochs=0)
    anpgd = tb.attack("an-pgd", threat=tb.Linf(0.4725), steps=a.steps, eps_init=0.2, seed=0)
    pgdk = tb.attack("pgd", threat=tb.Linf(0.2), steps=a.steps, seed=0)

    def train_time(d):
        t0 = time.perf_counter()
        for i in range(a.batches):
            sl = slice(i * a.batch, (i + 1) * a.batch)
            model.train()
            loss, _ = d.loss(model, Batch(x=x[sl], y=y[sl], index=torch.arange(sl.start, sl.stop)))
            opt.zero_grad()
            loss.backward()
        return (time.perf_counter() - t0) / a.batches

    def attack_rate(atk):
        model.eval()
        t0 = time.perf_counter()
        for i in range(a.batches):
            sl = slice(i * a.batch, (i + 1) * a.batch)
            atk(model, x[sl], y[sl], check=False)
        return x.shape[0] / (time.perf_counter() - t0)

    res = {"mma": [], "pgd_at": [], "anpgd": [], "pgdk": []}
    for _ in range(a.reps):
        res["mma"].append(train_time(mma))
        res["pgd_at"].append(train_time(pgd_at))
        res["anpgd"].append(attack_rate(anpgd))
        res["pgdk"].append(attack_rate(pgdk))
    med = {k: statistics.median(v) for k, v in res.items()}
    print(json.dumps({"K": a.steps, "batch": a.batch, "mma_s_per_step": med["mma"],
                      "pgd_at_s_per_step": med["pgd_at"], "mma_over_pgd_at": med["mma"] / med["pgd_at"],
                      "anpgd_img_s": med["anpgd"], "pgdk_img_s": med["pgdk"],
                      "pgdk_over_anpgd": med["pgdk"] / med["anpgd"]}))


if __name__ == "__main__":
    main()
