"""MNIST scale-down of the thesis's Table 5.2: P∞, P2, P1 (single-norm PGD-AT), Worst-PGD,
PGD-Aug and MSD, each trained with :class:`toolbox.Trainer` and evaluated per norm with
:func:`~toolbox_union.union_report`.

Used by the slow CI test, the tutorial and ``python -m toolbox_union.experiments`` (the opt-in
``tox -e repro-union``).  Defaults are the CPU scale-down: the ``mnist-small`` CNN, a seeded
``n_train`` subset, Adam with a cyclic LR, the union scale ramped from 0 to 1 over the first
half of training, ``attack_steps`` iterations per training attack (default step sizes
``2.5 eps/steps``), evaluation with ``eval_steps``-step PGD per norm and ``restarts``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import torch

import toolbox as tb

from .attack import MSD, as_union
from .defenses import PGDAug, WorstPGD
from .evaluation import ALL, norm_suite, union_report

__all__ = ["METHODS", "RADII", "CPU_SCALE_DOWN", "make_defense", "run", "summary", "main"]

METHODS = ("p-inf", "p-2", "p-1", "worst-pgd", "pgd-aug", "msd")
#: the thesis MNIST radii (ℓ∞, ℓ2, ℓ1)
RADII = (0.3, 1.5, 12.0)
#: the CI-sized MNIST scale-down: half the thesis radii (at the full radii 180-600 CPU steps of
#: 5-step PGD leave the ℓ∞ model at ~0-3 % ℓ∞ accuracy), a seeded 6,000-image subset, 3 epochs
#: (180 steps), 5-step training attacks, PGD-10 per norm on 300 test images; ~1.5 minutes for
#: P∞ + P1 + MSD on one thread
CPU_SCALE_DOWN = {"radii": (0.15, 0.75, 6.0), "n_train": 6000, "epochs": 3, "attack_steps": 5,
                  "eval_steps": 10, "n_eval": 300}


def make_defense(method: str, radii: tuple[float, float, float] = RADII, *, steps: int = 5) -> tb.Defense:
    """The defense of one Table 5.2 column; ``steps`` iterations per training attack."""
    u = as_union([tb.Linf(radii[0]), tb.L2(radii[1]), tb.L1(radii[2])])
    single = {"p-inf": 0, "p-2": 1, "p-1": 2}
    if method in single:
        t = u.threats[single[method]]
        return tb.defense("adversarial", attack=tb.attack("pgd", threat=t, steps=steps))
    if method == "worst-pgd":
        return WorstPGD(threat=u, steps=steps)
    if method == "pgd-aug":
        return PGDAug(threat=u, steps=steps)
    if method == "msd":
        return tb.defense("msd", attack=MSD(u, steps=steps))
    raise ValueError(f"method must be one of {METHODS}, got {method!r}")


def run(method: str, seed: int = 0, *, n_train: int = 10000, epochs: int = 4, radii=RADII,
        attack_steps: int = 5, eval_steps: int = 20, restarts: int = 1, n_eval: int = 500,
        peak_lr: float = 5e-3, ramp: float = 0.5, batch_size: int = 100, model: str = "mnist-small",
        train_data: Any = None, test_data: Any = None) -> dict[str, Any]:
    """Train ``method`` (one of :data:`METHODS`) on MNIST and evaluate it per norm.

    Returns a dict: ``method``, ``seed``, ``history`` (DataFrame), ``report``
    (:func:`union_report` DataFrame), ``train_s``, ``model`` and the accuracies in percent
    ``clean``, ``linf``, ``l2``, ``l1`` (per-norm worst case) and ``all``.
    """
    train = train_data if train_data is not None else tb.data.load("mnist", split="train")
    test = test_data if test_data is not None else tb.data.load("mnist", split="test")
    if n_train is not None and n_train < len(train):
        gen = torch.Generator()
        gen.manual_seed(1000 + seed)
        train = tb.data.subset(train, torch.randperm(len(train), generator=gen)[:n_train])
    torch.manual_seed(seed)
    net = tb.models.create(model)
    defense = make_defense(method, tuple(radii), steps=attack_steps)
    opt = torch.optim.Adam(net.parameters(), lr=peak_lr)
    trainer = tb.Trainer(net, defense, optimizer=opt, batch_size=batch_size, seed=seed,
                         lr_schedule={"kind": "cyclic", "peak": peak_lr, "peak_at": 0.4},
                         eps_schedule=None if not ramp else
                         {"kind": "linear", "start": 0.0, "end": 1.0, "epochs": ramp * epochs})
    t0 = time.perf_counter()
    history = trainer.fit(train, epochs=epochs)
    train_s = time.perf_counter() - t0
    suite = norm_suite([tb.Linf(radii[0]), tb.L2(radii[1]), tb.L1(radii[2])], steps=eval_steps,
                       restarts=restarts, seed=seed)
    report = union_report(net, test, suite, n=n_eval, seed=seed)
    out = {"method": method, "seed": seed, "radii": list(radii), "history": history, "report": report, "train_s": train_s,
           "model": net, "eval_s": float(report.attrs["evaluate"].loc["worst-case", "time_s"])}
    for key, row in (("clean", "clean"), ("linf", "linf"), ("l2", "l2"), ("l1", "l1"), ("all", ALL)):
        out[key] = 100 * float(report.loc[row, "accuracy"])
    return out


def summary(r: dict[str, Any]) -> dict[str, Any]:
    """The JSON-friendly part of a :func:`run` result."""
    keys = ("method", "seed", "radii", "clean", "linf", "l2", "l1", "all", "train_s", "eval_s")
    return {k: (round(r[k], 2) if isinstance(r[k], float) else r[k]) for k in keys}


def main(argv: list[str] | None = None) -> int:
    """``python -m toolbox_union.experiments [--methods ...] [--seeds ...] [--epochs E] ...``:
    print one JSON line per run (the per-norm table row)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", nargs="+", default=["p-inf", "p-1", "msd"], choices=METHODS)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--n-train", type=int, default=10000)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--attack-steps", type=int, default=5)
    ap.add_argument("--eval-steps", type=int, default=20)
    ap.add_argument("--restarts", type=int, default=1)
    ap.add_argument("--n-eval", type=int, default=500)
    ap.add_argument("--scale", type=float, default=1.0, help="multiply the radii (0.3, 1.5, 12)")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    for seed in a.seeds:
        for m in a.methods:
            r = run(m, seed, radii=tuple(a.scale * e for e in RADII), n_train=a.n_train, epochs=a.epochs, attack_steps=a.attack_steps,
                    eval_steps=a.eval_steps, restarts=a.restarts, n_eval=a.n_eval)
            print(json.dumps(summary(r)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
