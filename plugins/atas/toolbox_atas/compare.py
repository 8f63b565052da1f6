"""MNIST CPU scale-down: ATAS against FGSM-RS at an aggressive step (2 eps), over seeds.

Both train the fast-AT MNIST net (``mnist-small``) at eps = 0.3 with Adam and a cyclic
learning rate (peak 5e-3 at 2/5 of training), batch 100.  FGSM-RS uses a fixed step 0.6 (2
eps) from a uniform random start that is not clamped to the box (Wong et al.'s MNIST code);
ATAS uses the same largest step ``step_max = 0.6``, scaled down per example by its
gradient-norm EMA (``c = 0.2`` on per-example norms, clamp ``[0.075, 0.6]``, no warm-up or
reset in so short a run).  Each run has the toolbox's catastrophic-overfitting detector
(``co-detector``, held batch of 200 training images, checks every epoch, ``action="continue"``:
an event rolls the weights back to the last good check and training goes on); the table
counts its events.  Evaluation on the first ``n_eval`` test images: clean, PGD-20 (step
0.01), PGD-50x5 (5 restarts) and APGD-CE, plus the per-example worst case.

``python -m toolbox_atas.compare --seeds 0 1 2 --check`` (what ``tox -e repro-atas`` runs
beside ``toolbox repro atas --quick``) prints the table and exits with 1 when ATAS misses
clean >= 95 % or PGD-20 >= 75 % in any seed, or does not beat FGSM-RS on PGD-20 on average.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch

import toolbox as tb

__all__ = ["ATAS_MNIST", "compare_mnist", "make_defense", "main"]

EPS = 0.3
#: ATAS arguments of the MNIST scale-down (per-example gradient norms; see the module doc)
ATAS_MNIST: dict[str, Any] = {"c": 0.2, "step_max": 2 * EPS, "clamp": (0.075, 2 * EPS), "warmup_epochs": 0,
                              "reset_every": 0, "grad_scale": "per-example"}


def make_defense(method: str, eps: float = EPS, step: float = 2 * EPS) -> tb.Defense:
    """``"atas"`` (with :data:`ATAS_MNIST`, ``step_max = step``), ``"atta"`` (fixed ``step``)
    or ``"fgsm-rs"`` (uniform start not clamped to the box, fixed ``step``)."""
    if method == "atas":
        kw = dict(ATAS_MNIST, step_max=step, clamp=(ATAS_MNIST["clamp"][0], step))
        return tb.defense("atas", threat=tb.Linf(eps), **kw)
    if method == "atta":
        return tb.defense("atta", threat=tb.Linf(eps), step_size=step, reset_every=0)
    if method == "fgsm-rs":
        return tb.defense("adversarial", attack=tb.attack("fgsm", threat=tb.Linf(eps), step_size=step,
                                                           random_start=True, clamp_start=False))
    raise ValueError(f"method must be 'atas', 'atta' or 'fgsm-rs', got {method!r}")


def run_one(method: str, seed: int, *, epochs: int = 3, n_train: int | None = None, n_eval: int = 1000,
            eps: float = EPS, step: float = 2 * EPS, strong: bool = True, train_data: Any = None,
            test_data: Any = None) -> dict[str, Any]:
    """Train one model and evaluate it; returns a row (accuracies as fractions in [0, 1])."""
    train = train_data if train_data is not None else tb.data.load("mnist")
    test = test_data if test_data is not None else tb.data.load("mnist", split="test")
    if n_train is not None and n_train < len(train):
        idx = torch.randperm(len(train), generator=torch.Generator().manual_seed(1000 + seed))[:n_train]
        train = tb.data.subset(train, idx)
    torch.manual_seed(seed)
    model = tb.models.create("mnist-small")
    co = tb.train.callbacks.CODetector(batch=200, action="continue", seed=seed)
    trainer = tb.Trainer(model, make_defense(method, eps, step), optimizer={"name": "adam", "lr": 5e-3},
                         lr_schedule={"kind": "cyclic", "peak": 5e-3, "peak_at": 0.4}, batch_size=100,
                         seed=seed, callbacks=[co])
    t0 = time.perf_counter()
    hist = trainer.fit(train, epochs)
    train_s = time.perf_counter() - t0
    thr = tb.Linf(eps)
    attacks = {"pgd20": tb.attack("pgd", threat=thr, steps=20, step_size=0.01)}
    if strong:
        attacks["pgd50x5"] = tb.attack("pgd", threat=thr, steps=50, step_size=0.01, restarts=5)
        attacks["apgd-ce"] = tb.attack("apgd-ce", threat=thr, steps=100)
    rep = tb.evaluate(trainer.model, test, attacks=attacks, n=n_eval, seed=seed, progress=False)
    acc = dict(zip(rep.index if "attack" not in rep else rep["attack"], rep["accuracy"], strict=True))
    row = {"method": method, "seed": seed, "epochs": epochs, "train_s": round(train_s, 1),
           "co_events": len(co.events), **{k: float(v) for k, v in acc.items()}}
    if "train_step" in hist:
        row["mean_step"] = float(hist["train_step"].iloc[-1])
    return row


def compare_mnist(seeds=(0, 1, 2), methods=("atas", "fgsm-rs"), **kw: Any):
    """``run_one`` for every method and seed; a ``pandas.DataFrame`` with one row per run."""
    import pandas as pd

    train, test = tb.data.load("mnist"), tb.data.load("mnist", split="test")
    rows = [run_one(m, s, train_data=train, test_data=test, **kw) for s in seeds for m in methods]
    return pd.DataFrame(rows)


def check(df) -> list[str]:
    """The scale-down's claims, as failure messages (empty when all hold)."""
    fails = []
    atas = df[df["method"] == "atas"]
    for _, r in atas.iterrows():
        if r["clean"] < 0.95:
            fails.append(f"ATAS seed {r['seed']}: clean {r['clean']:.3f} < 0.95")
        if r["pgd20"] < 0.75:
            fails.append(f"ATAS seed {r['seed']}: PGD-20 {r['pgd20']:.3f} < 0.75")
    fg = df[df["method"] == "fgsm-rs"]
    if len(fg) and len(atas) and not atas["pgd20"].mean() > fg["pgd20"].mean():
        fails.append(f"ATAS mean PGD-20 {atas['pgd20'].mean():.3f} does not beat FGSM-RS {fg['pgd20'].mean():.3f}")
    return fails


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m toolbox_atas.compare", description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--n-train", type=int, default=None)
    p.add_argument("--n-eval", type=int, default=1000)
    p.add_argument("--methods", nargs="+", default=["atas", "fgsm-rs"])
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--csv", default=None)
    p.add_argument("--check", action="store_true", help="exit 1 when a claim of the scale-down fails")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    df = compare_mnist(a.seeds, a.methods, epochs=a.epochs, n_train=a.n_train, n_eval=a.n_eval)
    print(df.to_string(index=False))
    cols = [c for c in ("clean", "pgd20", "pgd50x5", "apgd-ce", "worst-case", "co_events") if c in df]
    print(df.groupby("method")[cols].agg(["mean", "std", "min", "max"]).round(3).to_string())
    if a.csv:
        df.to_csv(a.csv, index=False)
    if a.check:
        fails = check(df)
        for f in fails:
            print("FAIL:", f)
        return 1 if fails else 0
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
