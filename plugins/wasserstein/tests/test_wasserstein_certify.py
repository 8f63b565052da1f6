"""Conjugate Sinkhorn and the exact support function against the LP (checks 5.5 item 8),
and the linear-model certifier's soundness against the attack."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from toolbox_wasserstein import (
    LinearCertifier,
    Wasserstein,
    WassersteinPGD,
    conjugate_sinkhorn,
    wasserstein_support,
)
from toolbox_wasserstein.sinkhorn import local_plan_entries

import toolbox as tb


def _lp_support(x: torch.Tensor, c: torch.Tensor, eps: float, p: float, k: int = 5) -> float:
    """max Σ_ij Π_ij c_j  s.t.  Π 1 = x, <Π, C> <= eps, Π >= 0 (local k×k moves), by HiGHS."""
    from scipy.optimize import linprog

    xs, cs = x[0].numpy(), c[0].numpy()
    src, dst, cst = local_plan_entries((1, *xs.shape), k, p)
    obj = cs.flatten()[dst]
    a_eq = np.zeros((xs.size, len(obj)))
    a_eq[src, np.arange(len(obj))] = 1
    res = linprog(-np.asarray(obj), A_ub=cst[None], b_ub=[eps], A_eq=a_eq,
                  b_eq=xs.flatten(), bounds=(0, None), method="highs")
    assert res.status == 0
    return -res.fun


def _tiny(seed=0, n=3):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 6, 6, generator=g, dtype=torch.float64)
    x[x < 0.4] = 0
    x = x / x.flatten(1).sum(1).view(-1, 1, 1, 1)
    c = torch.randn(n, 1, 6, 6, generator=g, dtype=torch.float64)
    return x, c


@pytest.mark.parametrize("p", [1, 2])
def test_support_function_is_the_lp(p):
    x, c = _tiny(p)
    for eps in (0.0, 0.05, 0.3, 1.0):
        got, psi = wasserstein_support(x, c, eps, p=p)
        want = torch.tensor([_lp_support(x[i], c[i], eps, p) for i in range(3)], dtype=torch.float64)
        assert torch.allclose(got, want, atol=1e-8), (eps, got, want)
        assert (psi >= 0).all()
    # per-example radii; eps = 0 gives the centre's value c^T x; monotone in eps
    v = wasserstein_support(x, c, torch.tensor([0.0, 0.1, 0.5]), p=p)[0]
    assert v[0] == pytest.approx(float((x[0] * c[0]).sum()), abs=1e-9)
    a, b = wasserstein_support(x, c, 0.1, p=p)[0], wasserstein_support(x, c, 0.4, p=p)[0]
    assert (b >= a - 1e-12).all()


def test_conjugate_sinkhorn_upper_bounds_and_converges():
    x, c = _tiny(5)
    eps = 0.3
    exact = torch.tensor([_lp_support(x[i], c[i], eps, 2) for i in range(3)], dtype=torch.float64)
    gaps = []
    for reg in (1e-1, 1e-2, 1e-3):
        r = conjugate_sinkhorn(x, c, eps, reg=reg, iters=80)
        for h in r.history:  # every iterate's dual value is a valid upper bound
            assert (h >= exact - 1e-9).all()
        hs = torch.stack(r.history)
        assert (hs[1:] <= hs[:-1] + 1e-12).all()  # best-so-far: non-increasing
        assert (r.bound >= exact - 1e-9).all() and (r.bound <= r.entropic + 1e-12).all()
        gaps.append(float((r.entropic - exact).max()))
    assert gaps[0] > gaps[1] > gaps[2] and gaps[2] < 5e-3, gaps


def _linear_digits(digits_data):
    x, y = digits_data[0], digits_data[1]
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(150):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval()


@pytest.mark.slow
def test_linear_certifier_sound_against_attack(digits_data):
    model = _linear_digits(digits_data)
    x, y = digits_data[2][:60], digits_data[3][:60]
    with torch.no_grad():
        clean_ok = model(x).argmax(1) == y
    assert clean_ok.float().mean() > 0.85
    eps = 0.05
    cert = tb.certifier("wasserstein-linear", threat=Wasserstein(eps))(model, x, y)
    assert isinstance(cert.certified, torch.Tensor) and cert.margins.shape == (60, 10)
    assert 0.1 < cert.accuracy < float(clean_ok.float().mean())
    assert not cert.certified[~clean_ok].any()
    # the margins' lower bounds never exceed the clean margins (x itself is in the ball)
    with torch.no_grad():
        logits = model(x).double()
    clean_margin = logits.gather(1, y.view(-1, 1)) - logits
    mask = torch.ones_like(clean_margin, dtype=torch.bool)
    mask[torch.arange(60), y] = False
    assert (cert.margins.double()[mask] <= clean_margin[mask] + 1e-4).all()
    # soundness: a strong attack at that radius breaks no certified example
    atk = WassersteinPGD(Wasserstein(eps), steps=25, eps0=None)
    with torch.no_grad():
        xa = atk(model, x, y)
        broken = model(xa).argmax(1) != y
    assert broken.any()  # the attack does work on this model
    assert not (broken & cert.certified).any()
    # the conjugate-Sinkhorn route is sound too, and never certifies more than the exact one
    cs = LinearCertifier(Wasserstein(eps), method="sinkhorn", sinkhorn_iters=40)(model, x, y)
    assert not (cs.certified & ~cert.certified).any()
    assert (cs.margins <= cert.margins + 1e-4).all()


def test_linear_certifier_rejects_nonlinear_models(digits_model, digits_data):
    x, y = digits_data[2][:2], digits_data[3][:2]
    with pytest.raises(ValueError, match="model must be linear"):
        LinearCertifier(Wasserstein(0.1))(digits_model, x, y)
    with pytest.raises(ValueError, match="method"):
        LinearCertifier(Wasserstein(0.1), method="ibp")
    with pytest.raises(ValueError, match="Wasserstein"):
        LinearCertifier(tb.Linf(0.1))
    with pytest.raises(ValueError, match="c must have the shape"):
        wasserstein_support(torch.ones(1, 1, 4, 4), torch.ones(1, 1, 4, 5), 0.1)
