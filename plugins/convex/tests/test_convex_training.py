"""The ``convex`` defense: the robust loss bounds the worst-case loss, it trains, and certified
training raises certified accuracy above a standard model's on digits."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from toolbox_convex import ConvexDefense, margin_lower_bounds, robust_cross_entropy
from torch import nn

import toolbox as tb
from toolbox.defense import Batch

torch.set_num_threads(1)

EPS = 0.1


def mlp(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))


def test_robust_ce_bounds_the_ce_at_attack_points(digits_data, digits_model):
    x, y = digits_data[2][:32], digits_data[3][:32]
    margins = margin_lower_bounds(digits_model, x, y, 0.02)
    per_ex = F.cross_entropy(-margins, y, reduction="none")
    x_adv = tb.attack("pgd", threat=tb.Linf(0.02), steps=10, seed=0)(digits_model, x, y)
    ce_adv = F.cross_entropy(digits_model(x_adv), y, reduction="none")
    ce_clean = F.cross_entropy(digits_model(x), y, reduction="none")
    assert (per_ex >= ce_adv - 1e-5).all() and (per_ex >= ce_clean - 1e-5).all()
    assert robust_cross_entropy(margins, y).item() == pytest.approx(per_ex.mean().item(), rel=1e-6)


def test_defense_registered_loss_has_gradients_and_logs(digits_data):
    x, y = digits_data[0][:20], digits_data[1][:20]
    d = tb.defense("convex", threat=tb.Linf(EPS))
    assert isinstance(d, ConvexDefense) and d.eps == EPS and d.norm == "linf"
    model = mlp(0)
    loss, logs = d.loss(model, Batch(x=x, y=y))
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    assert set(logs) == {"robust_ce", "robust_err", "clean_err"}
    cert = tb.certifier("dual-network", threat=tb.Linf(EPS))(model.eval(), x, y)
    assert float(logs["robust_err"]) == pytest.approx(1 - cert.accuracy, abs=1e-6)
    # the scheduled eps wins over the default; at eps=0 the robust loss is the clean CE
    loss0, _ = d.loss(model, Batch(x=x, y=y, eps=0.0))
    assert loss0.item() == pytest.approx(F.cross_entropy(model(x), y).item(), rel=1e-4)
    with pytest.raises(ValueError, match="eps"):
        ConvexDefense(eps=-1.0)
    with pytest.raises(ValueError, match="norm"):
        ConvexDefense(norm="l1")


@pytest.mark.parametrize("seed", [0])
def test_certified_training_beats_standard_on_digits(seed, digits_data):
    """Six epochs on the 1297 training digits (eps ramped 0 -> 0.1 over two): certified
    accuracy at ℓ∞ 0.1 on 200 test digits rises clearly above a standard model's (measured
    about 0.67-0.69 vs 0.39-0.46 over seeds 0-2), and stays below PGD's robust accuracy."""
    x_tr, y_tr, x_te, y_te = digits_data
    x_te, y_te = x_te[:200], y_te[:200]
    ds = tb.data.Dataset(x_tr, y_tr, num_classes=10, name="digits")
    out = {}
    for name in ("standard", "convex"):
        model = mlp(seed)
        kw = {"threat": tb.Linf(EPS)} if name == "convex" else {}
        sched = {"kind": "linear", "start": 0.0, "end": EPS, "epochs": 2} if name == "convex" else None
        trainer = tb.Trainer(model, tb.defense(name, **kw), batch_size=50, eps_schedule=sched,
                             optimizer=torch.optim.Adam(model.parameters(), lr=3e-3))
        trainer.fit(ds, epochs=6)
        model.eval()
        cert = tb.certifier("dual-network", threat=tb.Linf(EPS))(model, x_te, y_te)
        clean = (model(x_te).argmax(1) == y_te).float().mean().item()
        x_adv = tb.attack("pgd", threat=tb.Linf(EPS), steps=20, seed=0)(model, x_te, y_te)
        pgd = (model(x_adv).argmax(1) == y_te).float().mean().item()
        assert cert.accuracy <= pgd <= clean
        out[name] = (clean, cert.accuracy)
    assert out["convex"][0] >= 0.8
    assert out["convex"][1] >= out["standard"][1] + 0.1, out
