"""Quickstart: train two small CNNs on scikit-learn's 8x8 digits with the toolbox Trainer and
compare their worst-case robustness.

* ``standard``: plain cross-entropy training (``tb.defense("standard")``);
* ``fgsm-rs``: adversarial training on one FGSM step from a random start (Wong et al. 2020,
  "fast is better than free"): ``tb.defense("adversarial", attack=tb.attack("fgsm",
  random_start=True, step_size=1.25 eps))``.

Both models are then attacked with FGSM, PGD-20 and APGD-CE at Linf eps = 0.1 on the 500
held-out digits; ``tb.evaluate`` reports each attack and the per-example worst case (an example
counts only if it survives every attack).  A robustness curve (PGD accuracy against eps) of
both models is drawn with ``tb.robustness_curve`` and ``tb.plot``.

Run (about 10 s on one core; no download, the digits ship with scikit-learn)::

    python examples/quickstart_digits.py --out runs/quickstart

Files written to ``--out``: ``report.csv`` (one row per model and attack), ``curve.csv`` and
``robustness_curve.png``, ``history.csv`` (the Trainer's per-epoch rows of both models).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pandas as pd
import torch

import toolbox as tb

CURVE_EPS = (0.0, 0.025, 0.05, 0.075, 0.1, 0.125, 0.15)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=None,
                   help="folder for report.csv, curve.csv, history.csv and robustness_curve.png "
                        "(default: print the table only)")
    p.add_argument("--epochs", type=int, default=30, help="training epochs per model (default 30)")
    p.add_argument("--eps", type=float, default=0.1,
                   help="Linf radius for training and evaluation, pixels in [0, 1] (default 0.1)")
    p.add_argument("--n", type=int, default=500, help="test digits to evaluate, at most 500 (default 500)")
    p.add_argument("--seed", type=int, default=0, help="seed for training and attacks (default 0)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    args = p.parse_args(argv)
    if args.epochs < 1:
        p.error(f"--epochs must be >= 1, got {args.epochs}")
    if not 0 < args.eps <= 1:
        p.error(f"--eps must be in (0, 1], got {args.eps}")
    if args.n < 1:
        p.error(f"--n must be >= 1, got {args.n}")
    if args.threads < 1:
        p.error(f"--threads must be >= 1, got {args.threads}")
    return args


def make_defense(name: str, eps: float) -> tb.Defense:
    """``"standard"`` or ``"fgsm-rs"`` (FGSM from a uniform random start, step 1.25 eps, the
    start left unclamped for the gradient pass as in the paper)."""
    if name == "standard":
        return tb.defense("standard")
    fgsm = tb.attack("fgsm", threat=tb.Linf(eps), step_size=1.25 * eps, random_start=True,
                     clamp_start=False)
    return tb.defense("adversarial", attack=fgsm)


def train(name: str, train_data, epochs: int, eps: float, seed: int):
    """Train a ``digits-cnn`` (input ``[N, 1, 8, 8]`` in [0, 1], 10 logits) with defense
    ``name``; Adam with a one-cycle learning rate peaking at 1e-2 after 40 % of the run."""
    model = tb.models.create("digits-cnn", seed=seed)
    trainer = tb.Trainer(model, make_defense(name, eps), optimizer="adam", batch_size=64,
                         lr_schedule={"kind": "cyclic", "peak": 1e-2, "peak_at": 0.4}, seed=seed)
    history = trainer.fit(train_data, epochs=epochs)
    history.insert(0, "model", name)
    return model.eval(), history


def attacks(eps: float, seed: int) -> dict[str, tb.Attack]:
    threat = tb.Linf(eps)
    return {
        "fgsm": tb.attack("fgsm", threat=threat),
        "pgd": tb.attack("pgd", threat=threat, steps=20, step_size=eps / 4, seed=seed),
        "apgd-ce": tb.attack("apgd-ce", threat=threat, steps=100, seed=seed),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    train_data = tb.data.load("digits", split="train")
    test_data = tb.data.load("digits", split="test")
    n = min(args.n, len(test_data))

    reports, histories, curves = [], [], []
    for name in ("standard", "fgsm-rs"):
        t0 = time.perf_counter()
        model, history = train(name, train_data, args.epochs, args.eps, args.seed)
        print(f"trained {name:<8} {args.epochs} epochs in {time.perf_counter() - t0:.1f} s",
              flush=True)
        rep = tb.evaluate(model, test_data, attacks(args.eps, args.seed), n=n, seed=args.seed,
                          progress=False)
        rep = rep.reset_index().rename(columns={rep.index.name or "index": "row"})
        rep.insert(0, "model", name)
        reports.append(rep)
        histories.append(history)
        pgd = attacks(args.eps, args.seed)["pgd"]
        curve = tb.robustness_curve(model, test_data, pgd, CURVE_EPS, n=n, seed=args.seed,
                                    progress=False)
        curve.insert(0, "model", name)
        curves.append(curve)

    report = pd.concat(reports, ignore_index=True)
    table = report.pivot(index="row", columns="model", values="accuracy")
    order = ["clean", "fgsm", "pgd", "apgd-ce", "worst-case"]
    table = (100 * table.loc[order, ["standard", "fgsm-rs"]]).round(1)
    table.index.name = f"accuracy % (Linf eps={args.eps:g}, n={n})"
    table.columns.name = None
    print()
    print(table.to_string())
    print()

    if args.out is not None:
        out = args.out
        out.mkdir(parents=True, exist_ok=True)
        report.to_csv(out / "report.csv", index=False)
        pd.concat(histories, ignore_index=True).to_csv(out / "history.csv", index=False)
        curve_df = pd.concat(curves, ignore_index=True)
        curve_df.to_csv(out / "curve.csv", index=False)
        fig = None
        for c in curves:
            name = str(c["model"].iloc[0])
            part = c.drop(columns="model")
            part.attrs.update(threat="linf", attack="pgd")
            fig = tb.plot.robustness_curve(part, ax=None if fig is None else fig.axes[0],
                                           label=f"{name} (PGD-20)")
        fig.axes[0].set_title("digits-cnn: robust accuracy against Linf eps", fontsize=10)
        fig.tight_layout()
        tb.plot.save(fig, out / "robustness_curve.png")
        print(f"wrote {out / 'report.csv'}, {out / 'curve.csv'}, {out / 'history.csv'} and "
              f"{out / 'robustness_curve.png'}")
    print(f"total {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
