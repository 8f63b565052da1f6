"""Tutorial: Wasserstein adversarial examples (Wong's thesis, chapter 5).

A Wasserstein adversary treats an image as a distribution of mass and may *move* mass to
nearby pixels, paying the distance moved; ``eps`` bounds the total transport cost.  Unlike an
ℓp ball it cannot add ink out of nowhere, so its perturbations follow the strokes.

This script

1. trains a standard model (MNIST ``mnist-small``, or scikit-learn digits with ``--quick``),
2. projects one perturbed image onto the Wasserstein ball with projected Sinkhorn and checks
   the answer against the exact transport LP,
3. runs the growing-radius Wasserstein PGD (``wasserstein-pgd``): each example's radius
   grows ×1.1 every 10 iterations until it breaks, which gives, per example, the smallest
   radius that broke it, and from those the accuracy-vs-radius curve,
4. draws perturbation heatmaps (mass moved along the strokes),
5. fine-tunes briefly with adaptive-radius Wasserstein adversarial training
   (``wasserstein-at``; 6,000 MNIST images, one epoch) and compares the curves, and
6. certifies a linear classifier exactly (conjugate Sinkhorn / LP dual): deep networks have no
   such certificate (the thesis's negative result).

Run ``python tutorials/wasserstein_attacks.py`` (a few minutes on one CPU thread) or
``--quick`` (digits, under a minute; the numbers then only show that everything runs).
``--out DIR`` chooses where the plots go.  Needs ``toolbox-wasserstein``
(``pip install --no-deps -e plugins/wasserstein``).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from toolbox_wasserstein import (
    Wasserstein,
    WassersteinPGD,
    perturbation_grid,
    plot_accuracy_vs_eps,
    projected_sinkhorn,
    wasserstein_lp,
)

import toolbox as tb


def setting(quick: bool) -> dict:
    """Data, model and attack schedule for the chosen mode."""
    if quick:
        return dict(train=tb.data.load("digits"), test=tb.data.load("digits", split="test"),
                    model="digits-cnn", epochs=8, n=60, eps0=0.02, growth=1.3, every=4, steps=48,
                    eps_max=1.0, at_steps=6, at_epochs=2, at_n=None, opt={"name": "adam", "lr": 3e-3})
    return dict(train=tb.data.load("mnist"), test=tb.data.load("mnist", split="test"),
                model="mnist-small", epochs=3, n=100, eps0=0.3, growth=1.1, every=10, steps=200,
                eps_max=2.0, at_steps=10, at_epochs=1, at_n=6000,
                # the thesis's optimiser; the model's Wasserstein robustness depends on it
                # (lr 0.05 without weight decay trains a noticeably harder-to-break model)
                opt={"name": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4})


def test_batch(ds, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    x = ds.x[:n]
    x = x.float() / 255 if x.dtype == torch.uint8 else x.float()
    return x, ds.y[:n].long()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="scikit-learn digits (under a minute)")
    p.add_argument("--out", default="runs/tutorial-wasserstein", help="folder for the plots")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    s = setting(args.quick)
    x, y = test_batch(s["test"], s["n"])

    # --- 1. a standard model -------------------------------------------------------------------
    t0 = time.time()
    model = tb.models.create(s["model"], seed=1)
    tb.Trainer(model, tb.defense("standard"), optimizer=s["opt"], batch_size=128, seed=1).fit(
        s["train"], epochs=s["epochs"])
    model.eval()
    with torch.no_grad():
        clean = float((model(x).argmax(1) == y).float().mean())
    print(f"standard model: clean accuracy {100 * clean:.1f}% on {len(y)} test images "
          f"({time.time() - t0:.0f}s)")

    # --- 2. one projection, checked against the exact transport LP ------------------------------
    # Images are normalised to mass 1; a 5x5 window limits where mass may go; cost p=1 is the
    # thesis's 1-Wasserstein (Euclidean pixel distance).  The projection is approximate (an
    # entropy term, weight reg = 1/lambda), but its last step certifies the answer lies in the
    # ball: the exact LP cost of moving x to z never exceeds eps.
    x0 = x[:1].double()
    m = x0.sum()
    w = x0 + 0.1 * torch.randn(x0.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    z, plan_cost = projected_sinkhorn(x0 / m, w / m, 0.2, p=1, kernel_size=5, reg=1e-3)
    if x0[0].numel() <= 400:  # the LP has (H W)^2 variables: digits only
        lp = f"exact LP cost {wasserstein_lp(x0[0] / m, z[0], p=1, kernel_size=5):.4f}"
    else:
        lp = "exact LP skipped (image too large)"
    print(f"projection onto the ball of radius 0.2: certified plan cost {float(plan_cost[0]):.4f}, "
          f"{lp}, mass kept {float(z.sum()):.6f}")

    # --- 3. the growing-radius attack ------------------------------------------------------------
    threat = Wasserstein(s["eps_max"], p=1, kernel_size=5, reg=1e-3)
    atk = WassersteinPGD(threat, steps=s["steps"], eps0=s["eps0"], growth=s["growth"], every=s["every"])
    t0 = time.time()
    res = atk.search(model, x, y)
    grid = [0.1, 0.5, 1.0] if not args.quick else [0.05, 0.1, 0.2]
    accs = res.accuracy(grid)
    print(f"wasserstein-pgd ({time.time() - t0:.0f}s, radii up to {res.max_radius:.2f}): "
          f"broken {int(res.success.sum())}/{len(y)}; "
          "adversarial accuracy " + ", ".join(f"{100 * a:.0f}% at eps {e}" for e, a in zip(grid, accs, strict=True)))
    fin = res.eps[torch.isfinite(res.eps) & (res.eps > 0)]
    if fin.numel():
        print(f"smallest radius per broken example: median {float(fin.median()):.3f}, "
              f"max {float(fin.max()):.3f}")

    # --- 4. heatmaps: where the mass went --------------------------------------------------------
    with torch.no_grad():
        pred = model(res.x_adv).argmax(1)
    show = (res.success & (res.eps > 0)).nonzero().squeeze(1)[:8]
    titles = [f"{int(y[i])}→{int(pred[i])}, ε={float(res.eps[i]):.2f}" for i in show]
    perturbation_grid(x[show], res.x_adv[show], titles=titles, n=max(len(show), 1),
                      path=out / "wasserstein_heatmaps.png")
    print(f"heatmaps: {out / 'wasserstein_heatmaps.png'}")

    # --- 5. adaptive-radius Wasserstein adversarial training -------------------------------------
    # Each batch is attacked with a growing radius (x1.4 every 2 iterations here) and the model
    # trains on the first adversarial example found; the radius that broke each example is kept
    # in the Trainer's per-example store and the next attack on it starts just below it.
    t0 = time.time()
    robust = tb.models.create(s["model"], seed=1)
    robust.load_state_dict(model.state_dict())           # fine-tune the standard model
    d = tb.defense("wasserstein-at", threat=threat.with_eps(s["eps_max"]), eps_min=s["eps0"],
                   growth=1.4, every=2, steps=s["at_steps"])
    at_data = s["train"] if s["at_n"] is None else tb.data.subset(s["train"], torch.arange(s["at_n"]))
    hist = tb.Trainer(robust, d, optimizer={"name": "adam", "lr": 1e-3}, batch_size=128, seed=1).fit(
        at_data, epochs=s["at_epochs"])
    robust.eval()
    print(f"wasserstein-at ({time.time() - t0:.0f}s): last epoch mean radius "
          f"{float(hist['train_eps_mean'].iloc[-1]):.3f}, broken {100 * float(hist['train_broken'].iloc[-1]):.0f}%")
    res_r = atk.search(robust, x, y)
    print("after wasserstein-at: adversarial accuracy " + ", ".join(
        f"{100 * a:.0f}% at eps {e}" for e, a in zip(grid, res_r.accuracy(grid), strict=True)))
    plot_accuracy_vs_eps({"standard": res, "wasserstein-at": res_r}, path=out / "wasserstein_curve.png")
    print(f"accuracy-vs-radius curve: {out / 'wasserstein_curve.png'}")

    # --- 6. exact certificates for a linear classifier -------------------------------------------
    xtr, ytr = test_batch(s["train"], 2000)
    lin = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(xtr[0].numel(), 10))
    opt = torch.optim.Adam(lin.parameters(), lr=0.02)
    for _ in range(100):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(lin(xtr), ytr).backward()
        opt.step()
    lin.eval()
    for eps in (0.01, 0.05):
        cert = tb.certifier("wasserstein-linear", threat=threat.with_eps(eps))(lin, x, y)
        print(f"linear model: certified accuracy {100 * cert.accuracy:.0f}% at eps {eps}")


if __name__ == "__main__":
    main()
