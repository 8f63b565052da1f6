"""Tests of the Wasserstein threat model: Lambert W, Sinkhorn distance vs the exact LP,
projected Sinkhorn invariants (mass, sign, exact transport cost, locality), and PGD through
the kernel's shared loop."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from toolbox_wasserstein import (
    Wasserstein,
    lambertw_exp,
    local_cost,
    projected_sinkhorn,
    sinkhorn_distance,
    wasserstein_lp,
)

import toolbox as tb


def _digits(digits_data, n=4):
    x = digits_data[2][:n].double()
    return x / x.flatten(1).sum(1).view(-1, 1, 1, 1)


def test_lambertw_matches_scipy():
    from scipy.special import lambertw

    s = torch.linspace(-30, 60, 181, dtype=torch.float64)
    w = lambertw_exp(s)
    ref = torch.tensor(lambertw(s.exp().numpy()).real)
    assert torch.allclose(w, ref, rtol=1e-10, atol=1e-300)
    big = torch.tensor([200.0, 700.0, 5000.0], dtype=torch.float64)  # exp(s) overflows
    wb = lambertw_exp(big)
    assert torch.all((wb + wb.log() - big).abs() < 1e-9)


def test_local_cost_values():
    c = local_cost(5, 2).view(5, 5)
    assert c[2, 2] == 0 and c[2, 3] == 1 and c[1, 1] == 2 and c[0, 0] == 8
    c1 = local_cost(3, 1).view(3, 3)
    assert c1[0, 0] == pytest.approx(math.sqrt(2)) and c1[1, 0] == 1


@pytest.mark.parametrize("p", [1, 2])
def test_pixel_shift_distance(p):
    x = torch.zeros(1, 1, 6, 6, dtype=torch.float64)
    x[0, 0, 2, 2] = 1
    right = torch.roll(x, 1, dims=3)
    diag = torch.roll(right, 1, dims=2)
    assert wasserstein_lp(x[0], right[0], p=p, kernel_size=5) == pytest.approx(1, abs=1e-8)
    assert wasserstein_lp(x[0], diag[0], p=p, kernel_size=5) == pytest.approx(2 ** (p / 2), abs=1e-8)
    # a 3-pixel move is outside a 5x5 window: unreachable
    far = torch.roll(x, 3, dims=3)
    assert wasserstein_lp(x[0], far[0], p=p, kernel_size=5) == math.inf
    d = sinkhorn_distance(torch.cat([x, x]), torch.cat([right, diag]), p=p, reg=0.05)
    assert torch.allclose(d, torch.tensor([1.0, 2 ** (p / 2)], dtype=torch.float64), atol=1e-6)


def test_sinkhorn_distance_tends_to_exact_lp():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 1, 5, 5, generator=g, dtype=torch.float64)
    y = torch.rand(3, 1, 5, 5, generator=g, dtype=torch.float64)
    x[x < 0.3] = 0  # some empty pixels
    exact = torch.tensor([wasserstein_lp(x[i], y[i], p=2, kernel_size=5) for i in range(3)],
                         dtype=torch.float64)
    assert torch.isfinite(exact).all() and (exact > 0.05).all()
    errs = []
    for reg in (1.0, 0.3, 0.1, 0.03):
        d = sinkhorn_distance(x, y, p=2, kernel_size=5, reg=reg, iters=30000, tol=1e-12)
        errs.append(float(((d - exact) / exact).abs().max()))
    assert all(b <= a + 1e-9 for a, b in zip(errs, errs[1:], strict=False)), errs
    assert errs[0] > 1e-2  # strong regularisation is visibly biased ...
    assert errs[-1] < 1e-6  # ... and the bias vanishes as reg -> 0
    # the threat model's distance (reg 0.05), run to convergence, agrees with the LP
    d = Wasserstein(1.0, kernel_size=5, distance_iters=20000).distance(y.float(), x.float())
    assert torch.allclose(d, exact, rtol=1e-3)


@pytest.mark.parametrize("eps", [0.05, 0.3, 1.0])
def test_projection_invariants(digits_data, eps):
    x = _digits(digits_data)
    g = torch.Generator().manual_seed(1)
    w = x + 0.01 * torch.randn(x.shape, generator=g, dtype=torch.float64)
    z, cost = projected_sinkhorn(x, w, eps, reg=1e-3, iters=300)
    assert torch.allclose(z.flatten(1).sum(1), torch.ones(4, dtype=torch.float64), atol=1e-10)
    assert (z >= 0).all()
    assert (cost <= eps * (1 + 1e-9)).all()
    for i in range(4):  # the exact transport cost (LP) never exceeds the certified plan's
        d = wasserstein_lp(x[i], z[i], p=2, kernel_size=5)
        assert d <= eps * (1 + 1e-6), (i, d)
    # the projection moves w: it is nearer to w than the centre x is
    assert ((z - w).flatten(1).norm(dim=1) < (x - w).flatten(1).norm(dim=1)).all()
    # locality: pixels with no mass of x in their 5x5 window get none
    reach = torch.nn.functional.max_pool2d((x > 0).double(), 5, stride=1, padding=2) > 0
    assert (z[~reach] == 0).all()


def test_projection_of_inside_point_changes_little(digits_data):
    x = _digits(digits_data)
    # move 5% of the mass one pixel to the right: exact cost <= 0.05, well inside eps = 0.5
    inside = 0.95 * x + 0.05 * torch.roll(x, 1, dims=3)
    assert all(wasserstein_lp(x[i], inside[i]) <= 0.05 + 1e-9 for i in range(4))
    scale = (inside - x).flatten(1).norm(dim=1)
    rel = {}
    for reg in (1e-3, 1e-4):
        z, _ = projected_sinkhorn(x, inside, 0.5, reg=reg, iters=2000)
        rel[reg] = (z - inside).flatten(1).norm(dim=1) / scale
    # the entropic term biases the answer (it spreads mass: about 60 % of the perturbation's
    # size at the thesis's reg = 1e-3 on 8x8 digits); the bias shrinks as reg -> 0
    assert (rel[1e-3] < 0.8).all() and (rel[1e-4] < 0.2).all(), rel
    assert (rel[1e-4] < 0.5 * rel[1e-3]).all(), rel
    # outside points are moved: the same shift with eps far below its cost
    z2, c2 = projected_sinkhorn(x, inside, 0.005, reg=1e-3, iters=400)
    assert ((z2 - inside).flatten(1).norm(dim=1) > 0.5 * scale).all()
    assert (c2 <= 0.005 * (1 + 1e-9)).all()


def test_threat_project_box_and_registry(digits_data):
    th = tb.threat("wasserstein", eps=0.3, sinkhorn_iters=100)
    assert isinstance(th, Wasserstein) and th.spec()["kernel_size"] == 5
    x = digits_data[2][:8]
    g = torch.Generator().manual_seed(2)
    xa = th.step(x, x, torch.randn(x.shape, generator=g), 0.1)
    assert xa.dtype == x.dtype and xa.shape == x.shape
    assert (xa >= 0).all() and (xa <= 1).all() and not torch.equal(xa, x)
    mass = xa.flatten(1).sum(1) / x.flatten(1).sum(1)
    assert ((mass > 0.9) & (mass <= 1 + 1e-5)).all()  # only the [0, 1] clamp can remove mass
    assert th.contains(xa, x).all()
    d = th.distance(xa, x)
    torch.testing.assert_close(th.norm(xa - x, x), d, rtol=1e-6, atol=1e-9)
    with pytest.raises(ValueError, match="x is required"):
        th.norm(xa - x)  # a Wasserstein size depends on the centre
    # contains reuses given norms (tb.evaluate computes them once): they decide the ball test
    assert th.contains(xa, x, norms=d).all()
    assert not th.contains(xa, x, norms=torch.full_like(d, 1.0)).any()
    assert (th.norm(xa - x, x) <= 0.3 * 1.05).all()
    assert th.contains(x, x).all() and torch.equal(th.random_init(x), x)
    far = torch.roll(x, 3, dims=3)  # a 3-pixel move: far outside the ball
    assert not th.contains(far, x).any()


def test_argument_checks(digits_data):
    with pytest.raises(ValueError, match="kernel_size"):
        Wasserstein(0.1, kernel_size=4)
    with pytest.raises(ValueError, match="reg"):
        Wasserstein(0.1, reg=0)
    with pytest.raises(ValueError, match="p must"):
        Wasserstein(0.1, p=-1)
    with pytest.raises(ValueError, match="sinkhorn_iters"):
        Wasserstein(0.1, sinkhorn_iters=2.5)
    # the thesis's names (lam = 1 / reg, kernel, iters) are the same threat model
    t = Wasserstein(0.1, p=1, kernel=7, lam=1000, iters=50)
    assert (t.reg, t.kernel_size, t.sinkhorn_iters) == (1e-3, 7, 50)
    assert t.spec() == Wasserstein(0.1, p=1, kernel_size=7, reg=1e-3, sinkhorn_iters=50).spec()
    with pytest.raises(ValueError, match="either reg or lam"):
        Wasserstein(0.1, reg=1e-2, lam=1000)
    with pytest.raises(ValueError, match="either kernel_size or kernel"):
        Wasserstein(0.1, kernel_size=3, kernel=7)
    with pytest.raises(ValueError, match="lam must"):
        Wasserstein(0.1, lam=-1)
    with pytest.raises(ValueError, match="kernel_size"):
        Wasserstein(0.1, kernel=4)
    th = Wasserstein(0.1)
    x = digits_data[2][:2]
    with pytest.raises(ValueError, match="x is required"):
        th.norm(torch.zeros_like(x))
    with pytest.raises(ValueError, match="x must be"):
        th.project(x.flatten(1), x.flatten(1))
    with pytest.raises(ValueError, match="x_adv"):
        th.project(x[:1], x)


def test_pgd_reduces_accuracy(digits_data, digits_model):
    x, y = digits_data[2][:48], digits_data[3][:48]
    with torch.no_grad():
        clean = (digits_model(x).argmax(1) == y).float().mean()
    accs = {}
    for eps in (0.02, 0.3):
        th = Wasserstein(eps, sinkhorn_iters=40)
        xa = tb.attack("pgd", threat=th, steps=5)(digits_model, x, y)
        assert th.contains(xa, x).all()
        with torch.no_grad():
            accs[eps] = float((digits_model(xa).argmax(1) == y).float().mean())
    assert clean >= 0.9
    assert accs[0.3] <= 0.3 and accs[0.3] < accs[0.02] <= clean


def test_projection_agrees_with_art(digits_data):
    """ART 1.20's projected Sinkhorn (numpy; test oracle only) on the same inputs.  ART's cost
    for its ``p=2`` is the Euclidean distance, i.e. ours at ``p=1``; its ``regularization`` is
    our ``1/reg``.  ART stops at a 1e-4 change of the dual, so the two differ a little."""
    import types

    art = pytest.importorskip("art.attacks.evasion")
    x = digits_data[2][:8].double()
    g = torch.Generator().manual_seed(0)
    w = (x + 0.1 * torch.randn(x.shape, generator=g, dtype=torch.float64)).clamp(0, 1)
    oracle = object.__new__(art.Wasserstein)
    oracle.regularization, oracle.kernel_size, oracle.projected_sinkhorn_max_iter = 1000.0, 5, 400
    oracle._estimator = types.SimpleNamespace(channels_first=True)
    cost = art.Wasserstein._compute_cost_matrix(2, 5)
    assert torch.allclose(torch.tensor(cost).flatten(), local_cost(5, 1))
    m = x.flatten(1).sum(1).view(-1, 1, 1, 1)
    for eps in (0.1, 0.5):
        za = torch.tensor(oracle._projected_sinkhorn(w.numpy(), x.numpy(), cost, np.full(8, eps)))
        z, _ = projected_sinkhorn(x / m, w / m, eps, p=1, reg=1e-3, iters=400)
        rel = (z * m - za).flatten(1).norm(dim=1) / (za - x).flatten(1).norm(dim=1)
        assert (rel < 0.3).all(), rel
        # ours keeps the mass exactly; ART's loses up to a few per cent
        assert torch.allclose((z * m).flatten(1).sum(1), m.flatten(), rtol=1e-9)


def test_evaluate_table(digits_data, digits_model):
    """``tb.evaluate`` runs the attack, checks membership (``contains``) and reads the
    per-example size (``norm`` without the centre, answered from the ``contains`` call)."""
    x, y = digits_data[2][:32], digits_data[3][:32]
    atk = tb.attack("pgd", threat=Wasserstein(0.3, sinkhorn_iters=40), steps=3)
    table = tb.evaluate(digits_model, (x, y), {"w-pgd": atk}, progress=False)
    assert float(table.loc["w-pgd", "accuracy"]) < float(table.loc["clean", "accuracy"]) - 0.5
    assert 0 < float(table.loc["w-pgd", "max_norm"]) <= 0.3 * 1.05


def test_per_example_eps(digits_data):
    x = digits_data[2][:4]
    eps = torch.tensor([0.01, 0.05, 0.3, 1.0])
    th = Wasserstein(eps, sinkhorn_iters=100)
    g = torch.Generator().manual_seed(2)
    xa = th.step(x, x, torch.randn(x.shape, generator=g), 0.1)
    d = th.distance(xa, x)
    assert th.contains(xa, x).all()
    assert (d[1:] > d[:-1]).all()  # a larger radius lets the same step move more mass
    assert not th.with_eps(eps / 10).contains(xa, x)[1:].any()
