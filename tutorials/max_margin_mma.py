"""Tutorial: MMA, max-margin adversarial training (Ding, Sharma, Lui, Huang, ICLR 2020).

MMA trains each correctly classified example at its own radius: the distance to the decision
boundary (its *input-space margin*), found by AN-PGD (PGD at the example's previous margin,
then a bisection along the PGD direction for the boundary).  The margins live in the
Trainer's per-example store keyed by dataset index, so the next visit starts from them.
Margins beyond a hinge ``d_max`` are left alone; misclassified examples get clean CE.

This script

1. shows the margin losses (LM, SLM) and AN-PGD's margin estimate on a trained model,
2. trains MMA with the margin tracker and prints how the stored margins grow per epoch,
3. reports the minimal-perturbation statistics (mean / quartiles, the paper's Tables 2-3) and
   AvgAcc / AvgRobAcc over an eps grid (Tables 4-11) for a clean model and the MMA model,
4. (full mode) compares PGD training at eps 0.45 (collapses to a constant predictor) with
   PGDLS (linear eps ramp) and MMA, the paper's Table 4 finding, on an MNIST subset.

Run ``python tutorials/max_margin_mma.py`` (MNIST, about 3 minutes on 2 CPU cores) or
``--quick`` (scikit-learn digits, under a minute; the numbers then only show that everything
runs).  ``--out DIR`` chooses where ``mma_margins.png`` goes.  Needs ``toolbox-mma``
(``pip install --no-deps -e plugins/mma``).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from toolbox_mma import MarginTracker, grid_report, lm, margin_report, plot_margins, slm
from toolbox_mma.experiments import run as run_scaledown

import toolbox as tb


def setting(quick: bool):
    """(train, test, model name, d_max, eps grid, epochs, eps_min, lr)."""
    if quick:
        train, test = tb.data.load("digits"), tb.data.load("digits", split="test")
        return train, test, "digits-cnn", 0.3, (0.05, 0.1, 0.15), 4, 0.03, 3e-3
    train = tb.data.subset(tb.data.load("mnist"), range(4000))
    return train, tb.data.load("mnist", split="test"), "mnist-small", 0.45, (0.1, 0.2, 0.3), 3, 0.1, 1e-3


def train(defense, train_data, model_name, epochs, lr, callbacks=()):
    torch.manual_seed(0)
    model = tb.models.create(model_name)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    tr = tb.Trainer(model, defense, optimizer=opt, batch_size=50, seed=0, callbacks=list(callbacks))
    t0 = time.perf_counter()
    hist = tr.fit(train_data, epochs=epochs)
    return model.eval(), hist, tr, time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="digits instead of MNIST, under a minute")
    p.add_argument("--out", default=".", help="folder for mma_margins.png")
    a = p.parse_args()
    torch.set_num_threads(2)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    train_data, test_data, model_name, d_max, grid, epochs, eps_min, lr = setting(a.quick)

    # 1. margin losses: LM = max_{j != y} z_j - z_y, SLM = logsumexp_{j != y} z_j - z_y
    z = torch.tensor([[3.0, 1.0, 0.5], [0.2, 0.1, 2.0]])
    y = torch.tensor([0, 0])
    print("LM  :", [round(v, 3) for v in lm(z, y).tolist()], "(negative = correct)")
    print("SLM :", [round(v, 3) for v in slm(z, y).tolist()], "(SLM - log(K-1) <= LM <= SLM)")

    # 2. a clean model and its AN-PGD margins
    clean, _, _, s0 = train(tb.defense("standard"), train_data, model_name, epochs, lr)
    anpgd = tb.attack("an-pgd", threat=tb.Linf(1.05 * d_max), steps=10 if a.quick else 20, eps_init=d_max / 2,
                      bisection_loss="lm", seed=0)
    x, yb = next(iter(tb.data.make_loader(test_data, 8, shuffle=False, device="cpu")))[:2]
    res = anpgd.margin(clean, x, yb)
    print("AN-PGD margins of 8 test images (clean model):", [round(v, 3) for v in res.eps.tolist()])

    # 3. MMA with the margin tracker
    mma = tb.defense("mma", threat=tb.Linf(d_max), eps_min=eps_min, steps=5 if a.quick else 10, seed=0)
    tracker = MarginTracker(n=300, plot=None)
    model, hist, tr, s1 = train(mma, train_data, model_name, epochs, lr, [tracker])
    print(f"\nMMA (d_max {d_max}) trained in {s1:.0f} s; stored margins per epoch on 300 fixed examples:")
    cols = ["epoch", "margin_mean", "margin_median", "margin_small", "train_clean_acc", "train_frac_hinged"]
    print(hist[[c for c in cols if c in hist.columns]].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    fig = plot_margins(tracker)
    fig.savefig(out / "mma_margins.png", dpi=100)
    print("plot:", out / "mma_margins.png")

    n_eval = 200 if a.quick else 500
    pgd = tb.attack("pgd", threat=tb.Linf(grid[-1]), steps=20, step_size=grid[-1] / 8, seed=0)
    for name, m in (("clean training", clean), ("MMA", model)):
        rep = margin_report(m, test_data, anpgd, n=n_eval)
        row = grid_report(m, test_data, pgd, grid, n=n_eval)
        print(f"\n{name}: minimal L-inf perturbation mean {rep['mean']:.3f}, quartiles "
              f"{rep['q25']:.3f} / {rep['median']:.3f} / {rep['q75']:.3f}")
        print(row.to_string(index=False, float_format=lambda v: f"{v:.1f}"))

    # 4. the paper's large-eps finding (full mode only: three more trainings)
    if not a.quick:
        print("\nTraining at eps 0.45 from scratch (Table 4: PGD-0.45 is a constant predictor):")
        for method in ("pgd", "pgdls"):
            r = run_scaledown(method, 0, epochs=4, ramp_frac=1.0, train_data=train_data, test_data=test_data)
            print(f"  {method:6s} clean {r['clean']:.1f}  rob@0.1 {r['rob@0.1']:.1f}  rob@0.3 "
                  f"{r['rob@0.3']:.1f}  most frequent prediction {100 * r['constant']:.0f} % of the test images")


if __name__ == "__main__":
    main()
