"""Speed of the fastat defenses on the kernel Trainer (issue 5, "Speed").

1. One FGSM-RS pass over ``--n`` MNIST images through ``tb.Trainer`` + ``fgsm-rs`` versus a
   hand-written loop doing the same arithmetic (paper-exact FGSM-RS, Adam, cyclic LR per
   step, one ``.item()`` per step for logging).  Target: ratio <= 1.05.
2. Free (m replays) and PGD-AT (K steps) cost per pass relative to FGSM-RS, counting
   forward+backward passes: Free does one per replay (both gradients from one backward), so
   about m / 2 of FGSM-RS's two per batch (m / 2 / m = 1/2 per epoch equivalent); PGD-AT does
   K + 1, about (K + 1) / 2.

Repetitions are interleaved (A B A B ...) and the median is reported, so a busy machine
affects both sides alike.  Usage::

    python plugins/fastat/benchmarks/bench_fastat.py [--n 20000] [--reps 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

import toolbox as tb

EPS, ALPHA, BS = 0.3, 0.375, 100


def hand_loop(x: torch.Tensor, y: torch.Tensor, seed: int) -> float:
    """Paper-exact FGSM-RS (fast_adversarial MNIST), whole data in memory; seconds."""
    model = tb.models.create("mnist-small", seed=seed)
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    n = x.shape[0]
    steps = n // BS
    top = 0.4 * steps
    g = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    perm = torch.randperm(n, generator=g)
    for i in range(steps):
        idx = perm[i * BS:(i + 1) * BS]
        xb, yb = x[idx], y[idx]
        s = i + 1
        lr = 5e-3 * (s / top if s <= top else (steps - s) / (steps - top))
        for pg in opt.param_groups:
            pg["lr"] = lr
        delta = (torch.rand(xb.shape, generator=g) * 2 - 1) * EPS
        delta.requires_grad_(True)
        for p in model.parameters():
            p.requires_grad_(False)
        loss = F.cross_entropy(model(xb + delta), yb)
        grad, = torch.autograd.grad(loss, delta)
        for p in model.parameters():
            p.requires_grad_(True)
        delta = (delta.detach() + ALPHA * grad.sign()).clamp(-EPS, EPS)
        x_adv = torch.max(torch.min(xb + delta, torch.ones_like(xb)), torch.zeros_like(xb))
        opt.zero_grad(set_to_none=True)
        out = model(x_adv)
        loss = F.cross_entropy(out, yb)
        loss.backward()
        opt.step()
        _ = loss.item(), (out.argmax(1) == yb).float().mean().item()
    return time.perf_counter() - t0


def trainer_run(train, defense, seed: int) -> float:
    model = tb.models.create("mnist-small", seed=seed)
    trainer = tb.Trainer(model, defense, optimizer={"name": "adam", "lr": 5e-3}, batch_size=BS, seed=seed,
                         lr_schedule={"kind": "cyclic", "peak": 5e-3, "peak_at": 0.4})
    hist = trainer.fit(train, epochs=1)
    return float(hist["time_s"].iloc[0])


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=20000, help="training images per pass")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--replays", type=int, default=4, help="Free's m")
    p.add_argument("--pgd-steps", type=int, default=10, help="PGD-AT's K")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    full = tb.data.load("mnist")
    train = tb.data.subset(full, torch.arange(args.n))
    x, y, _ = train.tensors()
    thr = tb.Linf(EPS)
    times: dict[str, list[float]] = {"hand": [], "fgsm-rs": [], "free": [], "pgd-at": []}
    for r in range(args.reps):
        times["hand"].append(hand_loop(x, y, r))
        times["fgsm-rs"].append(trainer_run(train, tb.defense("fgsm-rs", threat=thr, step_size=ALPHA), r))
        times["free"].append(trainer_run(train, tb.defense("free", threat=thr, replays=args.replays), r))
        times["pgd-at"].append(trainer_run(train, tb.defense("pgd-at", threat=thr, steps=args.pgd_steps,
                                                             step_size=0.03), r))
    med = {k: statistics.median(v) for k, v in times.items()}
    k = args.pgd_steps
    rows = [("hand-written FGSM-RS loop", med["hand"], 1.0, "-"),
            ("Trainer + fgsm-rs", med["fgsm-rs"], med["fgsm-rs"] / med["hand"], "<= 1.05 x hand"),
            (f"Trainer + free (m={args.replays})", med["free"], med["free"] / med["fgsm-rs"],
             f"~{args.replays / 2:g} x fgsm-rs (m fwd/bwd vs 2)"),
            (f"Trainer + pgd-at (K={k})", med["pgd-at"], med["pgd-at"] / med["fgsm-rs"],
             f"~{(k + 1) / 2:g} x fgsm-rs (K+1 fwd/bwd vs 2)")]
    print(f"one pass over {args.n} MNIST images, batch {BS}, {args.threads} thread(s), median of {args.reps}")
    print(f"{'run':32s} {'seconds':>8s} {'ratio':>7s}  expected")
    for name, s, ratio, want in rows:
        print(f"{name:32s} {s:8.2f} {ratio:7.2f}  {want}")
    return med


if __name__ == "__main__":
    main()
