"""SEAT: stable single-step adversarial training through local linearisation (toolbox-seat).

Run top to bottom::

    pip install --no-deps --no-build-isolation -e plugins/seat   # the toolbox already installed
    python tutorials/local_linearity_seat.py            # ~4 minutes on an idle 2-core CPU (MNIST)
    python tutorials/local_linearity_seat.py --quick    # < 1 minute on sklearn digits (CI)

What it shows:

1. **The linearity error** ``g(δ; x) = |ℓ(x+δ) − ℓ(x) − δᵀ∇ₓℓ(x)|``: zero for a linear loss,
   quadratic in ``‖δ‖`` for a smooth one.  FGSM trusts the loss to be linear inside the ball;
   catastrophic overfitting (CO) is the moment that stops being true.
2. **The SEAT attack** (``tb.attack("seat")``): one signed step of size ε from a random vertex
   of the ℓ∞ ball on the max-margin loss plus λ·g, usable like any other attack.
3. **Training** FGSM-AT (zero init, step ε, the collapse-prone baseline) and SEAT (λ = 0.5)
   with a ``linearity-monitor`` callback that logs, on a held batch, g of the FGSM perturbation
   (Eq. 4's δ) and g maximised over the ε-ball (γ), beside PGD accuracy; the plot shows g jumping
   when FGSM-AT collapses, while SEAT's stays flat.  A collapse need not show along the FGSM
   direction (the loss there can stay nearly linear while PGD breaks the model), which is why γ
   is the measure to compare methods by.
4. An evaluation table (clean, PGD-20, APGD-CE) and the plot ``linearity.png``.

``--quick`` uses the 8x8 digits (eps 0.2, a few hundred steps): it runs every step but says
nothing about the paper's numbers.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from toolbox_seat import LinearityMonitor, linearity_error, local_linearity_error, seat_perturb
from toolbox_seat.experiments import make_defense
from toolbox_seat.plot import linearity_curves
from torch import nn

import toolbox as tb


def part1_linearity_error() -> None:
    print("1. the linearity error g")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 6, generator=g, dtype=torch.float64)
    d = torch.randn(4, 6, generator=g, dtype=torch.float64)
    w = torch.randn(6, generator=g, dtype=torch.float64)
    print("   linear loss w.x:     g =", local_linearity_error(lambda z: z @ w, x, d).detach().tolist())
    net = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)).double()
    y = torch.tensor([0, 1, 2, 0])
    d = 1e-3 * d / d.norm(dim=1, keepdim=True)
    g1 = linearity_error(net, x, y, d).detach()
    g2 = linearity_error(net, x, y, 0.1 * d).detach()
    print("   MLP + CE: g(0.1 δ) / g(δ) =", (g2 / g1).tolist(), "(≈ 0.01: quadratic)")


def part2_attack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> None:
    print("2. the SEAT attack")
    with tb.attack_mode(model):
        s = seat_perturb(model, x, y, eps, lam=0.5, generator=torch.Generator().manual_seed(0))
    delta = s.x_adv - x
    print(f"   ‖δ‖∞ = {float(delta.abs().max()):.3f} (eps {eps}); input-gradient passes: {s.grad_evals}")
    rep = tb.evaluate(model, (x, y), {"seat": tb.attack("seat", threat=tb.Linf(eps), seed=0),
                                      "fgsm": tb.attack("fgsm", threat=tb.Linf(eps)),
                                      "pgd20": tb.attack("pgd", threat=tb.Linf(eps), steps=20, seed=0)},
                      progress=False)
    print(rep[["accuracy"]].round(3).to_string())


def train(method: str, train_data, test_data, *, eps: float, epochs: int, model_name: str, seed: int,
          every: int, batch_size: int):
    torch.manual_seed(seed)
    model = tb.models.create(model_name, seed=seed)
    mon = LinearityMonitor(n=200, every=every, seed=seed, threat=tb.Linf(eps))
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    trainer = tb.Trainer(model, make_defense(method, eps, lam=0.5), optimizer=opt, batch_size=batch_size,
                         seed=seed, callbacks=[mon],
                         lr_schedule={"kind": "cyclic", "peak": 5e-3, "peak_at": 0.4})
    t0 = time.perf_counter()
    trainer.fit(train_data, epochs=epochs, val_data=test_data)
    return model, mon, time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="digits, < 1 minute (CI)")
    p.add_argument("--out", default="runs/tutorial-seat", help="where linearity.png goes")
    p.add_argument("--seed", type=int, default=1)
    a = p.parse_args(argv)
    torch.set_num_threads(1 if a.quick else 2)
    if a.quick:
        tr, te = tb.data.load("digits", split="train"), tb.data.load("digits", split="test")
        eps, epochs, name, every, bs, n_eval = 0.2, 8, "digits-cnn", 20, 64, 500
    else:
        tr, te = tb.data.load("mnist", split="train"), tb.data.load("mnist", split="test")
        eps, epochs, name, every, bs, n_eval = 0.3, 2, "mnist-small", 100, 100, 1000

    part1_linearity_error()
    runs, models = {}, {}
    for method in ("fgsm-at", "seat"):
        model, mon, secs = train(method, tr, te, eps=eps, epochs=epochs, model_name=name, seed=a.seed,
                                 every=every, batch_size=bs)
        runs[method], models[method] = mon.dataframe(), model
        last = mon.records[-1]
        print(f"3. {method:8s} trained in {secs:5.1f} s: held batch: g(δ_FGSM) {last['lin_err']:.3g} "
              f"(max {runs[method]['lin_err'].max():.3g}), g maximised over the ball {last['lin_err_max']:.3g}, "
              f"PGD acc {last['lin_pgd_acc']:.2f}")
    x = torch.stack([te[i][0] for i in range(200)])
    y = torch.tensor([int(te[i][1]) for i in range(200)])
    part2_attack(models["seat"], x, y, eps)

    print("4. evaluation on the first", n_eval, "test images")
    th = tb.Linf(eps)
    attacks = {"pgd20": tb.attack("pgd", threat=th, steps=20, step_size=eps / 30 if a.quick else 0.01),
               "apgd-ce": tb.attack("apgd-ce", threat=th, steps=50)}
    for method, model in models.items():
        rep = tb.evaluate(model, te, attacks, n=n_eval, seed=0, progress=False)
        print(f"   {method:8s}", "  ".join(f"{k} {100 * v:5.1f}%" for k, v in rep["accuracy"].items()))
    out = Path(a.out)
    linearity_curves(runs, out / "linearity.png")
    print("   wrote", out / "linearity.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
