"""The digest's correctness checks 5.5 items 3, 4, 6 and 7 for projected Sinkhorn: agreement
with the exact quadratic program as the entropy weight vanishes, the pixel-shift projection,
monotonicity in eps, and exact block ascent of the dual."""

from __future__ import annotations

import math

import pytest
import toolbox_wasserstein.sinkhorn as S
import torch
from toolbox_wasserstein import projected_sinkhorn, wasserstein_lp


def _pixel():
    x = torch.zeros(1, 1, 6, 6, dtype=torch.float64)
    x[0, 0, 2, 2] = 1
    return x, torch.roll(x, 1, dims=3)


def test_pixel_shift_projection():
    x, shifted = _pixel()  # d_W(x, shifted) = 1
    # eps >= 1: the shifted image is (nearly: entropic bias) its own projection
    z, c = projected_sinkhorn(x, shifted, 1.5, reg=1e-3, iters=3000, tol=1e-9)
    assert float((z - shifted).norm()) < 0.02 and float(c) <= 1.5
    # eps = 0.5: exactly half the mass moves, the exact cost is the radius
    z, c = projected_sinkhorn(x, shifted, 0.5, reg=1e-3, iters=3000, tol=1e-9)
    assert float(z[0, 0, 2, 2]) == pytest.approx(0.5, abs=1e-6)
    assert float(z[0, 0, 2, 3]) == pytest.approx(0.5, abs=1e-6)
    assert wasserstein_lp(x[0], z[0]) <= 0.5 + 1e-9


def test_projection_monotone_in_eps_while_the_constraint_binds(digits_data):
    x = digits_data[2][:4].double()
    x = x / x.flatten(1).sum(1).view(-1, 1, 1, 1)
    g = torch.Generator().manual_seed(0)
    w = x + 0.003 * torch.randn(x.shape, generator=g, dtype=torch.float64)
    dist, moved = [], []
    for eps in (1e-4, 0.01, 0.03, 0.1):
        z, cost = projected_sinkhorn(x, w, eps, reg=1e-3, iters=1000, tol=1e-8)
        assert torch.allclose(cost, torch.full_like(cost, eps), rtol=1e-6)  # binding
        dist.append((z - w).flatten(1).norm(dim=1))
        moved.append(float((z - x).abs().max()))
    for a, b in zip(dist, dist[1:], strict=False):
        assert (b <= a + 1e-12).all()
    # at a tiny radius the projection stays at the centre
    assert moved[0] < 0.05 * moved[-1]


def _dual(alpha, beta, psi, x, w, eps, lam, cost, k):
    """g(α, β, ψ) = -||β||²/(2λ) - ψ eps + αᵀx + βᵀw - Σ_ij exp(α_i - ψ C_ij - 1 + β_j)."""
    logk = -psi.view(-1, 1) * cost.view(1, -1) - 1
    (tot,) = S._plan_sums_fast(alpha, beta, logk, cost, k, (0,))
    return (-(beta ** 2).flatten(1).sum(1) / (2 * lam) - psi * eps + (alpha * x).flatten(1).sum(1)
            + (beta * w).flatten(1).sum(1) - tot)


def test_dual_ascent_is_monotone_over_the_alpha_and_beta_steps():
    g = torch.Generator().manual_seed(4)
    x = torch.rand(3, 1, 6, 6, generator=g, dtype=torch.float64) + 0.05  # all pixels hold mass
    x = x / x.flatten(1).sum(1).view(-1, 1, 1, 1)
    w = x + 0.01 * torch.randn(x.shape, generator=g, dtype=torch.float64)
    lam, eps, k = 1000.0, 0.05, 5
    cost = S.local_cost(k, 2)
    n = x[0].numel()
    alpha = torch.full_like(x, -math.log(n))
    beta = torch.full_like(x, -math.log(n))
    psi = torch.ones(3, dtype=torch.float64)
    for _ in range(40):
        logk = -psi.view(-1, 1) * cost.view(1, -1) - 1
        g0 = _dual(alpha, beta, psi, x, w, eps, lam, cost, k)
        alpha = x.log() - S._lse_fast(beta, logk, k)
        g1 = _dual(alpha, beta, psi, x, w, eps, lam, cost, k)
        wz = S.lambertw_exp(math.log(lam) + lam * w + S._lse_fast(alpha, logk, k))
        beta = lam * w - wz
        g2 = _dual(alpha, beta, psi, x, w, eps, lam, cost, k)
        tol = 1e-9 * g2.abs().clamp_min(1)
        assert (g1 >= g0 - tol).all() and (g2 >= g1 - tol).all()
        # the ψ step of Algorithm 8 (Newton with the feasibility line search)
        c1, c2 = S._plan_sums_fast(alpha, beta, logk, cost, k, (1, 2))
        delta = (c1 - eps) / -c2
        t = torch.ones_like(psi)
        while bool((psi - t * delta < 0).any()) and float(t.min()) > 1e-2:
            t = torch.where(psi - t * delta < 0, t / 2, t)
        psi = (psi - t * delta).clamp_min(0)
    # with the last sweep's K: after the α-step the plan's rows were x (the β-step then
    # moves them a little); after the β-step its columns are z = wz / λ exactly
    rows = (alpha + S._lse_fast(beta, logk, k)).exp()
    assert ((rows - x).abs().flatten(1).sum(1) < 0.05).all()
    cols = (beta + S._lse_fast(alpha, logk, k)).exp()
    assert torch.allclose(cols, wz / lam, rtol=1e-9)


def _exact_projection(x: torch.Tensor, w: torch.Tensor, eps: float, p: float, k: int):
    """The unregularised projection (thesis eq. 5.3) of one ``(1, H, W)`` image by SLSQP over
    the window entries of the plan: ``min ½||w - Πᵀ1||²`` s.t. ``Π >= 0``, ``Π1 = x``,
    ``<Π, C> <= eps``.  Returns ``(z, objective)``."""
    import numpy as np
    from scipy.optimize import minimize

    src, dst, cost = S.local_plan_entries(tuple(x.shape), k, p)
    xs, ws = x.flatten().numpy(), w.flatten().numpy()
    n, nv = xs.size, cost.size
    rows = np.zeros((n, nv))
    rows[src, np.arange(nv)] = 1
    cols = np.zeros((n, nv))
    cols[dst, np.arange(nv)] = 1
    has = xs > 0
    start = np.where(src == dst, xs[src], 0.0)  # the identity plan: feasible
    res = minimize(lambda v: 0.5 * np.sum((cols @ v - ws) ** 2), start,
                   jac=lambda v: cols.T @ (cols @ v - ws), method="SLSQP",
                   bounds=[(0, None) if has[s] else (0, 0) for s in src],
                   constraints=[{"type": "eq", "fun": lambda v: rows[has] @ v - xs[has],
                                 "jac": lambda v: rows[has]},
                                {"type": "ineq", "fun": lambda v: eps - cost @ v,
                                 "jac": lambda v: -cost[None]}],
                   options={"ftol": 1e-15, "maxiter": 2000})
    assert res.success, res.message
    return torch.tensor(cols @ res.x).view_as(x), float(res.fun)


def test_projection_tends_to_the_exact_quadratic_program():
    """Check 3: as the entropy weight ``reg = 1/λ`` shrinks, projected Sinkhorn's answer
    approaches the exact projection; the exact objective is never above the (feasible)
    Sinkhorn point's, and both are inside the ball by the exact LP."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 1, 4, 4, generator=g, dtype=torch.float64)
    x[x < 0.25] = 0  # some empty pixels
    x = x / x.sum()
    w = x + 0.03 * torch.randn(x.shape, generator=g, dtype=torch.float64)
    eps = 0.1
    zq, fq = _exact_projection(x[0], w[0], eps, p=1, k=3)
    assert wasserstein_lp(x[0], zq.clamp_min(0), p=1, kernel_size=3) <= eps + 1e-6
    assert 0.5 * float(((w - x) ** 2).sum()) > fq + 1e-4  # the constraint binds: w is outside
    dist = []
    for reg in (1e-1, 1e-2, 1e-3):
        z, cost = projected_sinkhorn(x, w, eps, p=1, kernel_size=3, reg=reg, iters=1000, tol=1e-10)
        assert float(cost) <= eps * (1 + 1e-9)
        assert wasserstein_lp(x[0], z[0], p=1, kernel_size=3) <= eps + 1e-9
        assert fq <= 0.5 * float(((w - z) ** 2).sum()) + 1e-12
        dist.append(float((z[0] - zq).norm()))
    assert dist[0] > dist[1] > dist[2], dist
    assert dist[2] < 0.25 * dist[1] and dist[2] < 0.05 * float((w - x).norm()), dist
