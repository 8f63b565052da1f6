"""Robustness to a union of threat models: ℓ∞ ∪ ℓ2 ∪ ℓ1 with MSD (toolbox-union).

Run top to bottom::

    pip install --no-deps --no-build-isolation -e plugins/union   # the toolbox already installed
    python tutorials/union_of_threat_models.py            # MNIST scale-down, ~2-4 min on 2 cores
    python tutorials/union_of_threat_models.py --quick    # < 1 minute on sklearn digits (CI)

What it shows:

1. **The union threat model** ``Union([Linf(0.3), L2(1.5), L1(12)])``: a perturbation counts
   when it lies in *any* ball; the gauge ``norm`` is ≤ 1 exactly then.
2. **The MSD attack** (``tb.attack("msd")``): every iteration takes one steepest-ascent step
   per norm from the same iterate, projects each onto its own ball and keeps, per example, the
   candidate with the highest loss — so the iterate can wander between the balls.
3. **Training** single-norm PGD models (P∞, P1) and an MSD model with the Trainer, then the
   per-norm evaluation of thesis Table 5.2: robust accuracy per norm (worst case over that
   norm's attacks) and over all norms ("all attacks", the per-example worst case), as a
   pandas DataFrame and a bar chart ``union_bars.png``.

The full run is the CPU scale-down (``toolbox_union.experiments.CPU_SCALE_DOWN``): half the
thesis radii (ℓ∞ 0.15, ℓ2 0.75, ℓ1 6), 6,000 MNIST images, 3 epochs, 5-step training attacks.
The pattern to look for (thesis Table 5.2): P∞ is weak against ℓ1, P1 is near zero against
ℓ∞, and only MSD keeps non-trivial accuracy against all three.  ``--quick`` uses the 8x8
digits with radii (0.1, 0.6, 2.0) and tiny budgets: it runs every step but proves nothing.

The evaluation here is the kernel's PGD per norm.  The thesis adds foolbox attacks (DeepFool,
DDN, C&W, Boundary, Pointwise, Salt&Pepper, ...): with the optional extra
``pip install toolbox-union[foolbox]``, ``norm_suite(threats, foolbox=True)`` adds them to the
same per-norm report (``union_report``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
import torch
from toolbox_union import MSD, Union
from toolbox_union.experiments import CPU_SCALE_DOWN, run

import toolbox as tb


def part1_union() -> None:
    print("1. the union threat model")
    u = Union([tb.Linf(0.3), tb.L2(1.5), tb.L1(12.0)])
    x = torch.full((3, 1, 28, 28), 0.5)
    d = torch.zeros_like(x)
    d[0] = 0.3                          # a full ℓ∞ corner: ℓ2 8.4, ℓ1 235 -> only in the ℓ∞ ball
    d[1, 0, 0, :5] = 0.5                # five pixels: ℓ2 1.1, ℓ1 2.5   -> in the ℓ2 and ℓ1 balls
    d[2, 0, :4, :4] = 0.5               # sixteen pixels: ℓ1 8, ℓ2 2.0  -> only in the ℓ1 ball
    inside = {t.name: t.contains(x + d, x).tolist() for t in u.threats}
    print("   in each ball:", inside)
    print("   in the union:", u.contains(x + d, x).tolist(), " gauge norm:",
          [round(v, 3) for v in u.norm(d).tolist()])


def part2_msd(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, radii) -> None:
    print("2. the MSD attack against the MSD model")
    u = Union([tb.Linf(radii[0]), tb.L2(radii[1]), tb.L1(radii[2])])
    picks = []
    orig_select = u.select

    def select(cands, x_adv, grad, loss_fn=None):   # record which norm won each step
        out = orig_select(cands, x_adv, grad, loss_fn)
        picks.append(out[1])
        return out

    u.select = select
    x_adv = MSD(u, steps=10, seed=0)(model, x, y)
    share = torch.bincount(torch.cat(picks), minlength=3).float()
    share = (share / share.sum()).tolist()
    with torch.no_grad():
        acc = (model(x_adv).argmax(1) == y).float().mean()
    print(f"   accuracy under MSD-10: {100 * float(acc):.1f}%; steps won by "
          f"ℓ∞ {share[0]:.2f}, ℓ2 {share[1]:.2f}, ℓ1 {share[2]:.2f}; all inside the union: "
          f"{bool(u.contains(x_adv, x).all())}")


def bar_chart(table: pd.DataFrame, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    table[["clean", "linf", "l2", "l1", "all"]].plot.bar(ax=ax, rot=0)
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 118)
    ax.set_title("robust accuracy per threat model (worst case per norm / over all)")
    ax.legend(ncol=5, fontsize=8, loc="upper center")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="digits, < 1 minute (CI)")
    p.add_argument("--out", default="runs/tutorial-union", help="where union_bars.png goes")
    p.add_argument("--methods", nargs="+", default=["p-inf", "p-1", "msd"])
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    torch.set_num_threads(1 if a.quick else 2)
    if a.quick:
        tr, te = tb.data.load("digits", split="train"), tb.data.load("digits", split="test")
        kw = dict(radii=(0.1, 0.6, 2.0), n_train=None, epochs=6, attack_steps=3, eval_steps=10,
                  n_eval=300, batch_size=64, model="digits-cnn", peak_lr=5e-3)
    else:
        tr, te = tb.data.load("mnist", split="train"), tb.data.load("mnist", split="test")
        kw = {**CPU_SCALE_DOWN, "eval_steps": 20, "n_eval": 500}

    part1_union()
    rows, models = [], {}
    for m in a.methods:
        r = run(m, a.seed, train_data=tr, test_data=te, **kw)
        models[m] = r["model"]
        rows.append({k: r[k] for k in ("method", "clean", "linf", "l2", "l1", "all", "train_s")})
        print(f"3. {m:9s} trained in {r['train_s']:5.1f} s")
    table = pd.DataFrame(rows).set_index("method").round(1)
    print("   robust accuracy (%) per norm, each the per-example worst case over that norm's attacks:")
    print(table.to_string())
    if "msd" in models:
        x = torch.stack([te[i][0] for i in range(200)])
        y = torch.tensor([int(te[i][1]) for i in range(200)])
        part2_msd(models["msd"], x, y, kw["radii"])
    path = bar_chart(table, Path(a.out) / "union_bars.png")
    print("   wrote", path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
