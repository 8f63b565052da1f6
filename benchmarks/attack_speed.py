"""PGD-50 speed: toolbox vs a hand-written PyTorch loop vs torchattacks vs ART.

PGD-50 (L∞, eps=0.3, alpha=0.01, random start) on 1,000 MNIST-shaped inputs of the fast-AT
small CNN, in chunks of 250, on the CPU.  Runs are interleaved round-robin and the table
reports medians and the median per-repetition ratio to the hand loop (absolute times drift
by up to 40 % on shared machines; ratios taken in one run do not).

    python benchmarks/attack_speed.py [--reps 7] [--threads 2] [--n 1000]
"""

from __future__ import annotations

import argparse
import warnings

import numpy as np
import torch
from _common import interleaved, ratio_table
from torch import nn

import toolbox as tb

EPS, ALPHA, STEPS = 0.3, 0.01, 50


def small_cnn() -> nn.Module:
    """The fast-AT MNIST net (same layers as ``tb.models.create("mnist-small")``)."""
    return nn.Sequential(
        nn.Conv2d(1, 16, 4, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(16, 32, 4, stride=2, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(32 * 7 * 7, 100), nn.ReLU(), nn.Linear(100, 10),
    )


def hand_pgd(model, x, y):
    """The loop a researcher writes by hand: grad w.r.t. delta, sign step, two clamps."""
    delta = (torch.rand_like(x) * 2 - 1) * EPS
    delta = (x + delta).clamp(0, 1) - x
    for _ in range(STEPS):
        delta.requires_grad_(True)
        loss = nn.functional.cross_entropy(model(x + delta), y)
        g, = torch.autograd.grad(loss, delta)
        delta = (delta.detach() + ALPHA * g.sign()).clamp(-EPS, EPS)
        delta = (x + delta).clamp(0, 1) - x
    return x + delta


def chunks(fn, model, x, y, bs=250):
    return torch.cat([fn(model, x[i:i + bs], y[i:i + bs]) for i in range(0, len(x), bs)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n", type=int, default=1000)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = small_cnn().eval()
    x = torch.rand(args.n, 1, 28, 28)
    y = torch.randint(0, 10, (args.n,))

    tm = tb.Linf(EPS)
    best = tb.attack("pgd", threat=tm, steps=STEPS, step_size=ALPHA)
    last = tb.attack("pgd", threat=tm, steps=STEPS, step_size=ALPHA, keep_best=False)
    fns = {
        "hand loop": lambda: chunks(hand_pgd, model, x, y),
        "toolbox pgd (keep_best)": lambda: chunks(best, model, x, y),
        "toolbox pgd (last iterate)": lambda: chunks(last, model, x, y),
    }
    try:
        import torchattacks

        ta = torchattacks.PGD(model, eps=EPS, alpha=ALPHA, steps=STEPS, random_start=True)
        fns["torchattacks 3.5.1"] = lambda: chunks(lambda m, a, b: ta(a, b), model, x, y)
    except ImportError:
        print("torchattacks not installed: skipped (pip install --no-deps torchattacks==3.5.1)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from art.attacks.evasion import ProjectedGradientDescentPyTorch
            from art.estimators.classification import PyTorchClassifier

        clf = PyTorchClassifier(model, loss=nn.CrossEntropyLoss(), input_shape=(1, 28, 28),
                                nb_classes=10, clip_values=(0.0, 1.0), device_type="cpu")
        art = ProjectedGradientDescentPyTorch(clf, norm=np.inf, eps=EPS, eps_step=ALPHA,
                                              max_iter=STEPS, num_random_init=1, batch_size=250,
                                              verbose=False)
        xn, yn = x.numpy(), y.numpy()
        fns["ART 1.20"] = lambda: art.generate(xn, yn)
    except ImportError:
        print("adversarial-robustness-toolbox not installed: skipped")

    times = interleaved(fns, reps=args.reps)
    print(f"PGD-{STEPS} on {args.n} inputs, small MNIST CNN, {args.threads} threads, "
          f"{args.reps} interleaved reps")
    print(ratio_table(times, "hand loop"))


if __name__ == "__main__":
    main()
