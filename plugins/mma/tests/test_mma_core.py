"""AN-PGD, bisection and margin-loss checks (digest §1.10 checks 1-3)."""

from __future__ import annotations

import math

import pytest
import torch
from toolbox_mma import ANPGD, bisect, lm, slm
from torch import nn

import toolbox as tb


# -- check 1: bisection --------------------------------------------------------------------
@pytest.mark.parametrize("eta0_side", ["below", "above"])
def test_bisection_lands_within_tolerance(eta0_side):
    eps_max = torch.full((7,), 0.5)
    root = torch.tensor([0.013, 0.1, 0.2345, 0.31, 0.4, 0.49, 0.25])
    eta0 = root * 0.5 if eta0_side == "below" else torch.minimum(root * 1.5 + 0.01, eps_max)
    seen = []

    def fn(eta):
        seen.append(eta.clone())
        return eta - root          # negative (still correct) below the root

    eta, lo, hi, found = bisect(fn, eta0, eps_max, steps=10)
    assert len(seen) == 11
    tol = 0.5 / 2 ** 10
    assert torch.all((eta - root).abs() <= tol + 1e-7), (eta, root)
    assert torch.all(lo <= eta) and torch.all(eta <= hi)
    assert torch.all(lo <= root + 1e-7) and torch.all(root <= hi + 1e-7)
    assert found.all()


def test_bisection_without_crossing_ends_near_eps_max():
    eps_max = torch.tensor([0.3, 0.3])

    def fn(eta):
        return eta - 1.0           # boundary beyond eps_max

    eta, lo, hi, found = bisect(fn, torch.tensor([0.1, 0.2]), eps_max, steps=10)
    assert not found.any()
    assert torch.all(eta >= 0.3 * (1 - 2 ** -10) - 1e-7) and torch.all(eta <= 0.3)
    assert torch.all(hi == 0.3)


# -- check 2: linear binary classifier, exact margins ---------------------------------------
def _linear_binary(d=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    lin = nn.Linear(d, 2).double()
    with torch.no_grad():
        lin.weight.copy_(torch.randn(2, d, generator=g, dtype=torch.float64))
        lin.bias.zero_()
    return nn.Sequential(nn.Flatten(), lin), g


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_anpgd_recovers_linear_margin(norm):
    d, n = 200, 6
    model, g = _linear_binary(d)
    w = model[1].weight.detach()
    wd = w[0] - w[1]                       # y = 0 correct iff wd.x + bd > 0
    x = (0.5 + 0.02 * (torch.rand(n, 1, d, generator=g, dtype=torch.float64) - 0.5))
    target = torch.tensor([0.02, 0.05, 0.1, 0.15, 0.2, 0.25]) * (1.0 if norm == "linf" else 2.0)
    dual = wd.abs().sum() if norm == "linf" else wd.norm()
    # shift each x along wd so that example i has margin (wd.x)/||wd||_dual = target[i]
    cur = (x.flatten(1) @ wd) / dual
    step = wd.sign() if norm == "linf" else wd / wd.norm()   # wd.step = ||wd||_dual
    x = x + (target.double() - cur).view(-1, 1, 1) * step.view(1, 1, -1)
    true = (x.flatten(1) @ wd) / dual
    assert torch.allclose(true, target.double(), atol=1e-9)
    assert float(x.min()) > 0.05 and float(x.max()) < 0.95
    y = torch.zeros(n, dtype=torch.long)
    eps_max = float(target.max()) * 1.6
    tm = tb.Linf(eps_max) if norm == "linf" else tb.L2(eps_max)
    # PGD radius below the margin for some examples and above it for others
    eps_init = torch.tensor([0.01, 0.1, 0.05, 0.3, 0.1, 0.35]) * (1.0 if norm == "linf" else 2.0)
    atk = ANPGD(tm, steps=20, random_start=(norm == "linf"), seed=0)
    res = atk.margin(model, x, y, eps_init)
    tol = eps_max / 2 ** 10
    assert torch.all((res.eps.double() - true).abs() <= tol + 1e-6), (res.eps, true)
    assert res.found.all()
    # the returned minimal adversary is adversarial, within eps_max and near the margin
    assert (model(res.x_min_adv).argmax(1) != y).all()
    assert torch.all((res.eps_adv.double() - true) <= tol + 1e-6) and torch.all(res.eps_adv.double() >= true - 1e-6)
    assert tm.contains(res.x_adv, x, atol=1e-6).all()


def test_anpgd_multiclass_linear_upper_bounds_true_margin():
    g = torch.Generator().manual_seed(1)
    d, k, n = 30, 5, 16
    lin = nn.Linear(d, k).double()
    with torch.no_grad():
        lin.weight.copy_(torch.randn(k, d, generator=g, dtype=torch.float64))
        lin.bias.copy_(torch.randn(k, generator=g, dtype=torch.float64))
    model = nn.Sequential(nn.Flatten(), lin)
    x = 0.3 + 0.4 * torch.rand(n, d, generator=g, dtype=torch.float64)
    y = model(x).argmax(1)
    W, b = lin.weight.detach(), lin.bias.detach()
    num = (W[y][:, None, :] - W[None]).mul(x[:, None, :]).sum(-1) + (b[y][:, None] - b[None])
    den = (W[y][:, None, :] - W[None]).abs().sum(-1)
    true = torch.where(den > 0, num / den.clamp_min(1e-12), torch.full_like(num, float("inf"))).min(1).values
    eps_max = 0.25
    atk = ANPGD(tb.Linf(eps_max), steps=20, bisection_loss="lm", seed=0)
    res = atk.margin(model, x, y, 0.05)
    # where the true margin lies inside [0, eps_max] and away from the box edges, the found
    # crossing is feasible: it cannot be closer than the true margin
    ok = true < eps_max * 0.9
    assert ok.sum() >= 4
    assert torch.all(res.eps_adv.double()[ok] >= true[ok] - 1e-6)
    assert res.found[ok].all()


# -- check 3: loss identities ---------------------------------------------------------------
def test_slm_lm_bounds_and_registry():
    g = torch.Generator().manual_seed(0)
    k = 10
    z = 5 * torch.randn(500, k, generator=g, dtype=torch.float64)
    y = torch.randint(0, k, (500,), generator=g)
    a, s = lm(z, y), slm(z, y)
    assert torch.all(s - math.log(k - 1) <= a + 1e-12) and torch.all(a <= s + 1e-12)
    # binary: identical
    z2, y2 = z[:, :2], y % 2
    assert torch.allclose(lm(z2, y2), slm(z2, y2))
    assert set(tb.names("loss")) >= {"lm", "slm"}
    with pytest.raises(ValueError, match="logits"):
        lm(torch.zeros(3), y[:3])


def test_ce_gradient_is_r_times_slm_gradient():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 10)).double()
    x = torch.rand(8, 1, 4, 4, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 10, (8,))
    z = model(x)
    gce = torch.autograd.grad(tb.losses.ce(z, y).sum(), x, retain_graph=True)[0]
    gslm = torch.autograd.grad(slm(z, y).sum(), x)[0]
    r = 1 - torch.softmax(z.detach(), 1).gather(1, y[:, None]).squeeze(1)
    assert torch.allclose(gce, r.view(-1, 1, 1, 1) * gslm, atol=1e-12)


def test_sign_pgd_iterates_equal_under_ce_and_slm():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 48), nn.Tanh(), nn.Linear(48, 10)).double()
    x = torch.rand(20, 1, 8, 8, dtype=torch.float64)
    y = torch.randint(0, 10, (20,))
    outs = [tb.attack("pgd", threat=tb.Linf(0.1), steps=15, loss=loss, keep_best=False, seed=3)(model, x, y)
            for loss in ("ce", "slm")]
    assert torch.equal(outs[0], outs[1])


# -- AN-PGD as an attack ---------------------------------------------------------------------
def test_anpgd_attack_contract(digits_model, digits_data):
    _, _, xt, yt = digits_data
    x, y = xt[:64], yt[:64]
    atk = tb.attack("an-pgd", threat=tb.Linf(0.3), steps=10, eps_init=0.1, bisection_loss="lm", seed=0)
    was = digits_model.training
    x_adv = atk(digits_model, x, y)
    assert digits_model.training == was
    assert all(p.grad is None for p in digits_model.parameters())
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype
    assert tb.Linf(0.3).contains(x_adv, x).all()
    res = atk.margin(digits_model, x, y)
    assert torch.all((res.eps >= 0) & (res.eps <= 0.3))
    # same seed, same search: every example whose search found a crossing is broken by the
    # attack's output, at exactly the smallest adversarial radius seen
    with torch.no_grad():
        wrong = digits_model(x_adv).argmax(1) != y
    assert res.found.float().mean() > 0.5
    assert (wrong | ~res.found).all()
    n = tb.Linf(1.0).norm(x_adv - x)
    assert torch.allclose(n[res.found], res.eps_adv[res.found], atol=1e-5)
    assert torch.all(res.eps_adv >= res.eps - 0.3 / 2 ** 10 - 1e-6)
    with pytest.raises(ValueError, match="direction"):
        ANPGD(tb.Linf(0.3), direction="up")
    with pytest.raises(ValueError, match="steps"):
        ANPGD(tb.Linf(0.3), steps=0)
    with pytest.raises(ValueError, match="eps_init"):
        atk.margin(digits_model, x, y, torch.ones(3))
