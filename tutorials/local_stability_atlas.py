"""ATLAS: adversarial training via local stability (toolbox-atlas).

Run top to bottom::

    pip install --no-deps --no-build-isolation -e plugins/atlas   # the toolbox already installed
    python tutorials/local_stability_atlas.py            # ~4 minutes on an idle 2-core CPU (MNIST)
    python tutorials/local_stability_atlas.py --quick    # < 1 minute on sklearn digits (CI)

What it shows:

1. **The Jacobian estimator**: ``‖J(x)‖²_F`` of the logits w.r.t. the input by random
   projections (one backward pass, ``C·‖vᵀJ‖²`` with ``v`` uniform on the sphere, unbiased)
   against the exact value (one-hot basis) and ``torch.autograd.functional.jacobian``.
2. **The ATLAS loss** ``CE(x') + α‖J(x')‖²_F + β KL(p(x') ‖ p(x))`` at the one-step FGSM-RS
   adversary ``x'``, its ablations ATLAS-l (β = 0) and ATLAS-g (α = 0), and the ε warm-up
   (α_t, β_t scaled by ε_t/ε; plain CE at ε_t = 0).
3. **Training** one-step ADV (FGSM-RS) and one-step ATLAS with the ``jacobian-monitor``
   callback (``‖J(x')‖²_F`` of a held batch beside PGD validation accuracy: catastrophic
   overfitting shows as the Jacobian rising while PGD accuracy drops), plotted to ``co.png``.
4. An evaluation table (clean, PGD-20, APGD-CE).

``--quick`` uses the 8x8 digits (eps 0.2, a few hundred steps): it runs every step but says
nothing about the paper's numbers.  The full run is the plugin's MNIST scale-down (one seed).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from toolbox_atlas import (
    ATLAS,
    JacobianMonitor,
    fgsm_rs_attack,
    jacobian_frobenius,
    plot_co_monitor,
)
from torch import nn

import toolbox as tb


def part1_estimator() -> None:
    print("1. the Jacobian Frobenius-norm estimator")
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 5)).double()
    x = torch.rand(1, 12, dtype=torch.double)
    ref = torch.autograd.functional.jacobian(lambda z: net(z.unsqueeze(0))[0], x[0]).pow(2).sum().item()
    exact = jacobian_frobenius(net, x, exact=True).item()
    g = torch.Generator().manual_seed(0)
    one = jacobian_frobenius(net, x.repeat(8, 1), generator=g)           # 8 single-projection draws
    many = jacobian_frobenius(net, x.repeat(20000, 1), generator=g).mean().item()
    print(f"   autograd.functional.jacobian: {ref:.4f}   exact (one-hot): {exact:.4f}")
    print(f"   single projections: {[round(v, 2) for v in one.tolist()]}")
    print(f"   mean of 20,000 projections: {many:.4f} (unbiased)")


def part2_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> None:
    print("2. the ATLAS loss and its switches")
    for variant in ("atlas", "atlas-l", "atlas-g"):
        d = ATLAS(tb.Linf(eps), alpha=1e-3, beta=0.5, variant=variant, log_jacobian=True)
        loss, logs = d.loss(model, tb.Batch(x, y, extra={"generator": torch.Generator().manual_seed(0)}))
        parts = ", ".join(f"{k}={float(logs[k]):.4f}" for k in ("adv_loss", "jac", "kl") if k in logs)
        print(f"   {variant:8s} loss={loss.item():.4f}  ({parts}; alpha_t={logs['alpha_t']}, beta_t={logs['beta_t']})")
    d = ATLAS(tb.Linf(eps), alpha=1e-3, beta=0.5)
    for eps_t in (0.0, eps / 2, eps):
        loss, logs = d.loss(model, tb.Batch(x, y, eps=eps_t, extra={"generator": torch.Generator().manual_seed(0)}))
        print(f"   warm-up eps_t={eps_t:.3f}: alpha_t={logs['alpha_t']:.2e} beta_t={logs['beta_t']:.3f} "
              f"loss={loss.item():.4f}")
    with torch.no_grad():
        ce = nn.functional.cross_entropy(model(x), y).item()
    print(f"   plain CE(x) = {ce:.4f} (equals the loss at eps_t = 0)")


def train(method: str, model: nn.Module, train_data, val_data, *, eps: float, epochs: int, lr_peak: float,
          alpha: float, beta: float, batch_size: int, seed: int, warmup: float = 0.0):
    thr = tb.Linf(eps)
    d = (tb.defense("adversarial", attack=fgsm_rs_attack(thr)) if method == "fgsm-rs"
         else ATLAS(thr, alpha=alpha, beta=beta))
    # the paper's eps warm-up (0 -> eps linearly over `warmup` epochs; ATLAS scales alpha_t, beta_t along)
    eps_schedule = {"kind": "linear", "start": 0.0, "end": eps, "epochs": warmup} if warmup > 0 else None
    opt = torch.optim.Adam(model.parameters(), lr=lr_peak)
    mon = JacobianMonitor(n=200, n_val=200, seed=seed)
    trainer = tb.Trainer(model, d, optimizer=opt, callbacks=[mon], batch_size=batch_size, seed=seed,
                         lr_schedule={"kind": "cyclic", "peak": lr_peak, "peak_at": 0.4}, eps_schedule=eps_schedule)
    t0 = time.perf_counter()
    hist = trainer.fit(train_data, epochs=epochs, val_data=val_data)
    print(f"   {method}: {epochs} epochs in {time.perf_counter() - t0:.1f} s; "
          f"‖J(x')‖²_F per epoch {[round(v, 1) for v in hist['jac_adv']]}; "
          f"PGD val acc {[round(100 * v, 1) for v in hist['val_pgd_acc']]}")
    return hist


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="ATLAS tutorial")
    p.add_argument("--quick", action="store_true", help="sklearn digits, < 1 minute")
    p.add_argument("--out", default="runs/atlas-tutorial", help="where co.png goes")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    part1_estimator()

    if a.quick:
        eps, epochs, lr, bs, alpha, beta, warmup = 0.2, 6, 5e-3, 50, 1e-3, 0.5, 0.0
        train_data = tb.data.load("digits", split="train")
        full_test = tb.data.load("digits", split="test")
        val_data = tb.data.subset(full_test, torch.arange(200))
        test_data = tb.data.subset(full_test, torch.arange(200, 500))

        def make():
            torch.manual_seed(0)
            return tb.models.create("digits-cnn")
    else:
        # the CPU scale-down recipe (mnist_atlas_cpu.toml, 3 epochs here): eps warm-up over 1.2 epochs, and
        # beta 0.1 with alpha 1e-4 (the paper's 0.3 / 1e-5 overfit catastrophically at 3 epochs)
        eps, epochs, lr, bs, alpha, beta, warmup = 0.3, 3, 5e-3, 100, 1e-4, 0.1, 1.2
        train_data, val_data = tb.data.split(tb.data.load("mnist", split="train"), 1000, seed=0)
        test_data = tb.data.subset(tb.data.load("mnist", split="test"), torch.arange(1000))

        def make():
            torch.manual_seed(0)
            return tb.models.create("mnist-small")

    x, y, _ = next(iter(tb.data.make_loader(train_data, 32, shuffle=False, device="cpu")))
    part2_loss(make(), x, y, eps)

    print("3. training one-step ADV (FGSM-RS) and one-step ATLAS with the Jacobian monitor")
    models, hists = {}, {}
    for method in ("fgsm-rs", "atlas"):
        models[method] = make()
        hists[method] = train(method, models[method], train_data, val_data, eps=eps, epochs=epochs, lr_peak=lr,
                              alpha=alpha, beta=beta, batch_size=bs, seed=0, warmup=warmup)
    for method, h in hists.items():
        plot_co_monitor(h, out / f"co_{method}.png", title=method)
    plot_co_monitor(hists["atlas"], out / "co.png", title="one-step ATLAS")
    print(f"   plots: {out / 'co.png'}, {out / 'co_fgsm-rs.png'}")

    print("4. evaluation (clean, PGD-20, APGD-CE)")
    thr = tb.Linf(eps)
    attacks = {"pgd20": tb.attack("pgd", threat=thr, steps=20, step_size=eps / 30, seed=0),
               "apgd-ce": tb.attack("apgd-ce", threat=thr, steps=50 if a.quick else 100, seed=0)}
    for method, m in models.items():
        rep = tb.evaluate(m.eval(), test_data, attacks=attacks, n=300 if a.quick else 1000)
        acc = rep["accuracy"].to_dict()
        print(f"   {method:8s} " + "  ".join(f"{k} {100 * float(v):.1f}%" for k, v in acc.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
