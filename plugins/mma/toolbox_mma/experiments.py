"""MNIST L∞ scale-down of the MMA paper's large-eps comparison (Table 4 at d_max = ε = 0.45).

PGD training at ε = 0.45 from scratch collapses to the constant predictor (paper: 11.35 %
everywhere), while PGDLS (linear ε ramp) and MMA (per-example margins) train.  One run = one
:class:`toolbox.Trainer` fit of a small CNN on an MNIST subset, then clean and PGD accuracy at
0.1 / 0.2 / 0.3 (and 0.4) on the first ``n_eval`` test images, AvgAcc / AvgRobAcc over that grid.

Used by the slow CI test, the tutorial and ``python -m toolbox_mma.experiments`` (the opt-in
multi-seed reproduction; ``--help``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import torch

import toolbox as tb

from .defenses import MMA, PGDLS, STORE_KEY
from .margins import MarginTracker, avg_accuracies

__all__ = ["METHODS", "make_defense", "run", "main"]

METHODS = ("mma", "omma", "pgd", "pgdls")


def make_defense(method: str, eps: float = 0.45, *, steps: int = 10, eps_min: float = 0.1,
                 ramp_epochs: float = 1.0, seed: int = 0) -> tb.Defense:
    """``mma`` / ``omma`` (d_max = ``eps``, AN-PGD with ``steps`` PGD steps), ``pgd`` (PGD
    training at ``eps``, ``steps`` steps of 2.5 ε/K, CE) or ``pgdls`` (the same with a linear
    ramp over ``ramp_epochs``)."""
    if method in ("mma", "omma"):
        return MMA(tb.Linf(eps), eps_min=eps_min, steps=steps, clean_weight=1 / 3 if method == "mma" else 0.0,
                   seed=seed)
    atk = tb.attack("pgd", threat=tb.Linf(eps), steps=steps, keep_best=False)
    if method == "pgd":
        return PGDLS(atk, ramp_epochs=0)
    if method == "pgdls":
        return PGDLS(atk, ramp_epochs=ramp_epochs)
    raise ValueError(f"method must be one of {METHODS}, got {method!r}")


def run(method: str, seed: int = 0, *, eps: float = 0.45, epochs: int = 3, n_train: int = 4000,
        n_eval: int = 500, batch_size: int = 50, lr: float = 1e-3, steps: int = 10,
        eps_min: float = 0.1, ramp_frac: float = 0.6, eval_grid=(0.1, 0.2, 0.3),
        eval_steps: int = 20, model: str = "mnist-small", train_data: Any = None,
        test_data: Any = None, track: int = 300) -> dict[str, Any]:
    """Train ``method`` on the first ``n_train`` MNIST training images and evaluate.

    Adam with a constant ``lr``, batch ``batch_size``; PGDLS ramps ε over ``ramp_frac`` of the
    epochs.  Evaluation: clean and PGD-``eval_steps`` (step ε/8, random start) at each ε of
    ``eval_grid`` on the first ``n_eval`` test images.  Returns a dict with ``method``,
    ``seed``, ``clean`` and ``rob@<eps>`` (percent), ``AvgAcc``, ``AvgRobAcc``, ``constant``
    (fraction of test predictions equal to the most frequent one), ``margin_mean`` (list,
    per epoch, MMA only), ``history``, ``train_s``, ``model``.
    """
    torch.manual_seed(seed)
    train = train_data if train_data is not None else tb.data.subset(tb.data.load("mnist"), range(n_train))
    test = test_data if test_data is not None else tb.data.load("mnist", split="test")
    net = tb.models.create(model)
    d = make_defense(method, eps, steps=steps, eps_min=eps_min, ramp_epochs=ramp_frac * epochs, seed=seed)
    cbs = [MarginTracker(n=track, seed=seed, plot=None)] if isinstance(d, MMA) else []
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    tr = tb.Trainer(net, d, optimizer=opt, batch_size=batch_size, seed=seed, callbacks=cbs)
    t0 = time.perf_counter()
    hist = tr.fit(train, epochs=epochs)
    train_s = time.perf_counter() - t0
    net.eval()
    attacks = {f"rob@{e:g}": tb.attack("pgd", threat=tb.Linf(e), steps=eval_steps, step_size=e / 8, seed=seed)
               for e in eval_grid}
    rep = tb.evaluate(net, test, attacks, n=n_eval, seed=seed, progress=False)
    acc = dict(zip(rep["attack"] if "attack" in rep.columns else rep.index, rep["accuracy"], strict=True))
    out: dict[str, Any] = {"method": method, "seed": seed, "clean": 100 * float(acc["clean"])}
    for k in attacks:
        out[k] = 100 * float(acc[k])
    out["AvgAcc"], out["AvgRobAcc"] = avg_accuracies(out["clean"], [out[k] for k in attacks])
    with torch.no_grad():
        xt = torch.stack([test[i][0] for i in range(n_eval)])
        pred = net(xt).argmax(1)
    out["constant"] = float(pred.bincount(minlength=10).max()) / n_eval
    if "margin_mean" in hist.columns:
        out["margin_mean"] = [float(v) for v in hist["margin_mean"]]
        out["stored_eps_mean"] = float(tr.store.tensor(STORE_KEY).mean())
    out.update(history=hist, train_s=train_s, model=net)
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m toolbox_mma.experiments --methods mma pgd pgdls --seeds 0 1 2``: print one
    JSON line per run (accuracies in percent)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--n-train", type=int, default=4000)
    p.add_argument("--n-eval", type=int, default=500)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--eps", type=float, default=0.45)
    p.add_argument("--ramp-frac", type=float, default=0.6)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    for m in a.methods:
        for s in a.seeds:
            r = run(m, s, epochs=a.epochs, n_train=a.n_train, n_eval=a.n_eval, steps=a.steps, eps=a.eps,
                    ramp_frac=a.ramp_frac, lr=a.lr)
            keep = {k: v for k, v in r.items() if k not in ("history", "model")}
            print(json.dumps(keep), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
