"""Conjugate Sinkhorn and certificates for linear models (thesis §5.1.6).

A dual-network certificate needs the support function of the perturbation set,
``max_{z ∈ B_W(x, eps)} cᵀz``.  The thesis solves its entropy-regularised version with the
*conjugate Sinkhorn* iteration (Algorithm 8 with the β-step replaced by ``β = λc``).  Its dual
value gives an upper bound for every iterate (:func:`conjugate_sinkhorn`); the exact value is
the minimum over one scalar of the LP dual, a convex piecewise-linear function of the cost
multiplier, which :func:`wasserstein_support` finds by bisection.

The thesis's negative result stands: through ReLU layers interval bounds are vacuous for a
Wasserstein ball (a small radius can move all of a pixel's mass), so the certifier
:class:`LinearCertifier` (``wasserstein-linear``) handles linear classifiers only — a
``Flatten`` followed by one ``Linear`` layer, or a bare ``Linear`` on flat inputs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from toolbox.certify import Certificate, Certifier

from .sinkhorn import (
    _TINY,
    _check_images,
    _check_kernel,
    _check_pair,
    _lse_fast,
    _neighbours,
    _plan_sums_fast,
    local_cost,
)
from .threat import Wasserstein

__all__ = ["ConjugateResult", "conjugate_sinkhorn", "wasserstein_support", "LinearCertifier"]


def _eps_vec(eps, n: int, like: torch.Tensor) -> torch.Tensor:
    if isinstance(eps, torch.Tensor):
        e = eps.to(like).reshape(-1)
        if e.numel() == 1:
            e = e.expand(n)
        if e.numel() != n:
            raise ValueError(f"eps must be a float or ({n},) tensor, got shape {tuple(eps.shape)}")
    else:
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps >= 0:
            raise ValueError(f"eps must be a number >= 0, got {eps!r}")
        e = torch.full((n,), float(eps), dtype=like.dtype, device=like.device)
    if not bool((e >= 0).all()):
        raise ValueError("eps must be >= 0")
    return e


def _dual_terms(x: torch.Tensor, c: torch.Tensor, k: int, cost: torch.Tensor, psi: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(Σ_i x_i max_o (c_{i+o} - ψ C_o), Σ_i x_i C_{o*(i)})`` per example: the value and
    the cost of the greedy plan (subgradient part) of the LP dual at ``ψ`` ``(N,)``."""
    nb = _neighbours(c, k)  # (N, C, kk, HW), -inf outside the image
    val = nb - psi.view(-1, 1, 1, 1) * cost.view(1, 1, -1, 1)
    best, arg = val.max(2)
    xf = x.flatten(2)
    return (xf * best).flatten(1).sum(1), (xf * cost[arg]).flatten(1).sum(1)


def wasserstein_support(x: torch.Tensor, c: torch.Tensor, eps: float | torch.Tensor, *, p: float = 2,
                        kernel_size: int = 5, iters: int = 60) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact ``max_{z ∈ B_W(x, eps)} cᵀz`` for the local-plan Wasserstein ball.

    ``x`` ``(N, C, H, W)``: the centre, non-negative with mass 1 per example; ``c``: the
    linear objective, same shape; ``eps`` float or ``(N,)`` in cost units.  By LP duality the
    value is ``min_{ψ >= 0} h(ψ)`` with ``h(ψ) = ψ eps + Σ_i x_i max_o (c_{i+o} - ψ C_o)``
    (convex, piecewise linear); ``ψ`` is found by bisection on the sign of ``h``'s
    subgradient ``eps - Σ_i x_i C_{o*(i)}`` (``iters`` halvings).  Every ``h(ψ)`` is an upper
    bound; returns ``(value (N,), psi (N,))`` float64 with the value the smaller of the two
    bracket ends (exact to float rounding: tested against the LP).
    """
    _check_images(x, "x")
    _check_images(c, "c")
    _check_kernel(kernel_size)
    if c.shape != x.shape:
        raise ValueError(f"c must have the shape of x {tuple(x.shape)}, got {tuple(c.shape)}")
    x, c = x.double(), c.double()
    n, k = x.shape[0], kernel_size
    e = _eps_vec(eps, n, x)
    cost = local_cost(k, p, device=x.device)
    cmin = float(cost[cost > 0].min()) if bool((cost > 0).any()) else 1.0
    span = (c.flatten(1).amax(1) - c.flatten(1).amin(1)).clamp_min(0)
    lo = torch.zeros(n, dtype=x.dtype, device=x.device)
    hi = span / cmin + 1.0  # beyond it every source keeps its mass: the subgradient is eps > 0
    for _ in range(iters):
        mid = (lo + hi) / 2
        _, spent = _dual_terms(x, c, k, cost, mid)
        up = e - spent >= 0  # subgradient >= 0: the minimum is at or left of mid
        hi = torch.where(up, mid, hi)
        lo = torch.where(up, lo, mid)
    v_lo = _dual_terms(x, c, k, cost, lo)[0] + lo * e
    v_hi = _dual_terms(x, c, k, cost, hi)[0] + hi * e
    return torch.minimum(v_lo, v_hi), torch.where(v_lo <= v_hi, lo, hi)


@dataclass
class ConjugateResult:
    """Result of :func:`conjugate_sinkhorn`: per-example ``(N,)`` float64 upper bounds on
    ``max_{z ∈ B_W} cᵀz``: ``entropic`` (the thesis's ``-g/λ``), ``bound`` (the LP dual at the
    same ψ, never larger), ``psi`` (the multiplier, in the unscaled units of :func:`wasserstein_support`),
    and ``history`` (``entropic`` after each sweep, a list of ``(N,)`` tensors)."""

    bound: torch.Tensor
    entropic: torch.Tensor
    psi: torch.Tensor
    history: list


def conjugate_sinkhorn(x: torch.Tensor, c: torch.Tensor, eps: float | torch.Tensor, *, p: float = 2,
                       kernel_size: int = 5, reg: float = 1e-3, iters: int = 100) -> ConjugateResult:
    """The thesis's conjugate Sinkhorn iteration (§5.1.6) for ``max_{z ∈ B_W(x, eps)} cᵀz``.

    Block ascent on ``g(α, ψ) = -ψ eps + αᵀx - Σ_ij exp(α_i - ψ C_ij - 1 + β_j)`` with the
    fixed ``β = c / reg`` (``λ = 1/reg``).  With β fixed the α-step is exact, so the
    iteration is a search over the scalar ψ: the α-step at ψ gives the plan, whose cost
    ``<Π, C>`` against ``eps`` is the sign of the dual's derivative in ψ.  The thesis takes
    Newton steps on ψ with α held fixed; with ``c / reg`` large (``reg = 1e-3``) those
    steps crawl (ψ moves by ~0.1 per sweep and must reach ~1/reg), so ψ is bisected here
    (``iters`` halvings of a bracket that surely holds the optimum).  Weak duality (the entropy of a plan is <= 0) makes ``-g/λ`` (maximised over α)
    an upper bound on the support value for every ψ; it exceeds the exact value by at most
    ``reg`` × (the entropy of ``x`` + log k²) and tends to it as ``reg -> 0``.  ``x``
    ``(N, C, H, W)`` mass 1 per example, ``c`` same shape, ``eps`` float or ``(N,)``.
    """
    _check_pair(x, c, "c", kernel_size, reg)
    x, c = x.double(), c.double()
    n, k = x.shape[0], kernel_size
    lam = 1.0 / reg
    e = _eps_vec(eps, n, x)
    cost = local_cost(k, p, device=x.device)
    lx = x.log()
    ent = (x * lx.clamp_min(-1e300)).nan_to_num(0.0).flatten(1).sum(1)  # Σ x log x (0 log 0 = 0)
    beta = lam * c
    psi = torch.ones(n, dtype=x.dtype, device=x.device)

    def upper(psi_s: torch.Tensor) -> torch.Tensor:  # -reg * max_α g(α, ψ_s)
        logk = -psi_s.view(-1, 1) * cost.view(1, -1)
        lse = _lse_fast(beta, logk, k)
        xs = (x * lse).nan_to_num(0.0).flatten(1).sum(1)
        return reg * (psi_s * e - ent + xs)

    cmin = float(cost[cost > 0].min()) if bool((cost > 0).any()) else 1.0
    span = (c.flatten(1).amax(1) - c.flatten(1).amin(1)).clamp_min(0)
    lo = torch.zeros(n, dtype=x.dtype, device=x.device)
    hi = lam * (span / cmin + 1.0) + 50.0
    best = upper(lo)
    hist = []
    for _ in range(iters):
        psi = (lo + hi) / 2
        logk = -psi.view(-1, 1) * cost.view(1, -1) - 1
        alpha = lx - _lse_fast(beta, logk, k)  # the exact α-step at this ψ
        (c1,) = _plan_sums_fast(alpha, beta, logk, cost, k, (1,))
        over = c1 > e  # dG/dψ = eps - <Π, C> < 0: the optimum ψ is larger
        lo = torch.where(over, psi, lo)
        hi = torch.where(over, hi, psi)
        best = torch.minimum(best, upper(psi))
        hist.append(best)
    entropic = best
    psi_u = psi / lam
    bound = _dual_terms(x, c, k, cost, psi_u)[0] + psi_u * e
    return ConjugateResult(bound=torch.minimum(bound, entropic), entropic=entropic, psi=psi_u,
                           history=hist)


def _linear_layer(model: nn.Module) -> nn.Linear:
    if isinstance(model, nn.Linear):
        return model
    if isinstance(model, nn.Sequential):
        mods = [m for m in model if not isinstance(m, (nn.Flatten, nn.Identity))]
        if len(mods) == 1 and isinstance(mods[0], nn.Linear):
            return mods[0]
    raise ValueError(
        "model must be linear (nn.Linear, or nn.Sequential(nn.Flatten(), nn.Linear(...))): a "
        "Wasserstein certificate through ReLU layers is out of reach (thesis §5.1.6), got "
        f"{type(model).__name__}")


class LinearCertifier(Certifier):
    """``wasserstein-linear``: exact certificates for linear classifiers against the
    mass-preserving Wasserstein ball of a :class:`~toolbox_wasserstein.Wasserstein` threat.

    For ``logits = W x + b`` and an image ``x`` of mass ``m``, the lower bound on the margin
    ``z_y - z_j`` over the ball is ``b_y - b_j - m max_{z ∈ B_W(x/m, eps)} (w_j - w_y)ᵀz``
    (:func:`wasserstein_support`, exact), and the example is certified when every margin is
    positive.  ``method="sinkhorn"`` uses the conjugate-Sinkhorn bound instead (always
    looser; the thesis's route).  The [0, 1] box is not used (a superset, so still sound).
    ``extra``: ``{"method": ...}``.
    """

    name = "wasserstein-linear"

    def __init__(self, threat, *, method: str = "exact", sinkhorn_iters: int = 100) -> None:
        super().__init__(threat)
        if not isinstance(self.threat, Wasserstein):
            raise ValueError(f"threat must be a Wasserstein threat model, got {type(self.threat).__name__}")
        if method not in ("exact", "sinkhorn"):
            raise ValueError(f"method must be 'exact' or 'sinkhorn', got {method!r}")
        self.method, self.sinkhorn_iters = method, int(sinkhorn_iters)

    def certify(self, model, x, y):
        lin = _linear_layer(model)
        n, ncls = x.shape[0], lin.out_features
        w = lin.weight.detach().double().view(ncls, *x.shape[1:])
        b = (lin.bias.detach().double() if lin.bias is not None
             else torch.zeros(ncls, dtype=torch.float64, device=x.device))
        xd = x.double().clamp_min(0)
        m = xd.flatten(1).sum(1)
        xn = xd / m.clamp_min(_TINY).view(-1, 1, 1, 1)
        th = self.threat
        eps = th.eps
        e = _eps_vec(eps, n, xd)
        # one support problem per (example, class): objective w_j - w_y
        cobj = (w.unsqueeze(0) - w[y].unsqueeze(1)).reshape(n * ncls, *x.shape[1:])
        xr = xn.repeat_interleave(ncls, 0)
        er = e.repeat_interleave(ncls)
        if self.method == "exact":
            sup, _ = wasserstein_support(xr, cobj, er, p=th.p, kernel_size=th.kernel_size)
        else:
            sup = conjugate_sinkhorn(xr, cobj, er, p=th.p, kernel_size=th.kernel_size, reg=th.reg,
                                     iters=self.sinkhorn_iters).bound
        sup = sup.view(n, ncls)
        margins = (b[y].view(-1, 1) - b.view(1, -1)) - m.view(-1, 1) * sup
        margins[torch.arange(n), y] = math.inf
        certified = (margins > 0).all(1)
        return Certificate(certified=certified.cpu(), margins=margins.float(),
                           extra={"method": self.method})
