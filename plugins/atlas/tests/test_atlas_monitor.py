"""The CO monitor: ‖J(x')‖²_F per epoch beside PGD validation accuracy, and its plot."""

from __future__ import annotations

import pytest
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

torch.set_num_threads(1)


def tiny(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


def test_monitor_logs_jacobian_and_pgd_accuracy_and_plots(tmp_path):
    train = tb.data.subset(tb.data.load("digits", split="train"), torch.arange(400))
    val = tb.data.subset(tb.data.load("digits", split="test"), torch.arange(80))
    model = tiny()
    mon = JacobianMonitor(n=50, n_val=80, seed=3)
    d = ATLAS(tb.Linf(0.1), alpha=1e-3, beta=0.5)
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    df = tb.Trainer(model, d, optimizer=opt, callbacks=[mon], batch_size=50).fit(train, epochs=3, val_data=val)
    assert {"jac_adv", "val_pgd_acc", "train_jac", "train_kl"} <= set(df.columns)
    assert (df["jac_adv"] > 0).all() and df["val_pgd_acc"].between(0, 1).all()
    # the last row is the exact Jacobian norm at the seeded FGSM-RS adversary of the first 50 examples
    x, y, _ = train.tensors()
    model.eval()
    xa = fgsm_rs_attack(tb.Linf(0.1), mode="eval")(model, x[:50], y[:50], generator=torch.Generator().manual_seed(3))
    ref = jacobian_frobenius(model, xa, exact=True).mean().item()
    assert df["jac_adv"].iloc[-1] == pytest.approx(ref, rel=1e-5)
    # and the PGD accuracy is PGD-20 (step eps/30) on the 80 validation images
    vx, vy, _ = val.tensors()
    pgd = tb.attack("pgd", threat=tb.Linf(0.1), steps=20, step_size=0.1 / 30, random_start=True)
    with torch.no_grad():
        acc = (model(pgd(model, vx, vy, generator=torch.Generator().manual_seed(3))).argmax(1) == vy).float().mean()
    assert df["val_pgd_acc"].iloc[-1] == pytest.approx(acc.item())
    fig = plot_co_monitor(df, tmp_path / "co.png", title="digits")
    assert (tmp_path / "co.png").stat().st_size > 1000 and len(fig.axes) == 2
    with pytest.raises(ValueError, match="jac_adv"):
        plot_co_monitor(df.drop(columns=["jac_adv"]))


def test_monitor_arguments():
    with pytest.raises(ValueError, match="n"):
        JacobianMonitor(n=0)
    with pytest.raises(ValueError, match="val_attack"):
        JacobianMonitor(val_attack="pgd")
