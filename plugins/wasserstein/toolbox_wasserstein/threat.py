"""The Wasserstein threat model (thesis ch. 5, §5.1; Wong, Schmidt & Kolter 2019)."""

from __future__ import annotations

import math
from typing import Any

import torch

from toolbox.threat import ThreatModel, _col

from .sinkhorn import _check_images, _check_kernel, projected_sinkhorn, sinkhorn_distance

__all__ = ["Wasserstein"]


def _check_pos(v: Any, name: str, *, integer: bool = False) -> Any:
    ok = isinstance(v, int) if integer else isinstance(v, (int, float))
    if isinstance(v, bool) or not ok or not v > 0 or (not integer and not math.isfinite(v)):
        kind = "a positive int" if integer else "a positive finite number"
        raise ValueError(f"{name} must be {kind}, got {v!r}")
    return v


class Wasserstein(ThreatModel):
    """Wasserstein ball ``{x' : d_W(x/m, x'/m) <= eps}`` ∩ [0, 1]^d, with ``m`` the mass of ``x``.

    Images ``(N, C, H, W)`` are mass distributions (normalised to total mass 1 per example);
    mass moves within a channel, only inside the ``kernel_size × kernel_size`` window around
    its pixel, at cost ``||offset||_2^p`` (``p=1``: the thesis's 1-Wasserstein; ``p=2``, the
    default: squared Euclidean, as in the reference code and ART).  ``eps`` is in those cost
    units (pixels^p per unit mass; the thesis's MNIST radii are 0.1–2).

    * ``project``: projected Sinkhorn (thesis Algorithm 8) with entropy weight ``reg`` (the
      thesis's ``λ = 1/reg``: 1000 on MNIST, 3000 on CIFAR) for at most ``sinkhorn_iters``
      sweeps or until ``z`` changes by less than ``sinkhorn_tol`` of its largest entry per
      sweep (1e-4: about 3 % from the converged projection, in ~120 sweeps), then a finishing step that certifies membership (see
      :func:`~toolbox_wasserstein.projected_sinkhorn`), then rescaling by ``m`` and a clamp to
      [0, 1] as in the reference attack.  Before the clamp the point is in the ball exactly;
      the clamp can remove a little mass from pixels driven above 1.
    * ``ascent``: ``sign(grad)``, the ℓ∞ steepest ascent of the reference attack, so ``step``
      is ``project(x_adv + step_size * sign(grad))`` with ``step_size`` in pixel units
      (``default_step_size`` returns ``alpha``, 0.1 in the reference code).
    * ``norm(delta, x)`` / :meth:`distance`: the entropic Sinkhorn cost between ``x`` and
      ``x + delta``, each normalised by its own mass, with its own ``distance_reg`` (0.05)
      and ``distance_iters`` (1000, stopping early once the marginals match to 1e-7).
      Log-domain Sinkhorn converges slowly when the target is barely reachable with local
      moves, and a plan stopped early *under*-estimates the cost: on attacked 8x8 digits
      1000 sweeps come within about 1-5 % of the converged value (hence ``contains_rtol``);
      on easy pairs the value is within ~1e-4 of the exact LP cost.
    * ``random_init``: ``x`` itself (the reference attack starts there).

    The thesis's names are accepted too: ``lam`` (its λ, ``= 1 / reg``), ``kernel``
    (``kernel_size``) and ``iters`` (``sinkhorn_iters``), so ``Wasserstein(0.5, p=1,
    kernel=5, lam=1000)`` is ``Wasserstein(0.5, p=1, kernel_size=5, reg=1e-3)``.
    """

    name = "wasserstein"

    def __init__(self, eps: float | torch.Tensor, p: float = 2, kernel_size: int = 5,
                 reg: float = 1e-3, sinkhorn_iters: int = 400, *, sinkhorn_tol: float = 1e-4,
                 alpha: float = 0.1,
                 distance_reg: float = 0.05, distance_iters: int = 1000,
                 contains_rtol: float = 0.05, lam: float | None = None, kernel: int | None = None,
                 iters: int | None = None) -> None:
        super().__init__(eps)
        # the thesis's names: lam = 1 / reg (its λ), kernel = kernel_size, iters = sinkhorn_iters
        if lam is not None:
            if reg != 1e-3:
                raise ValueError("give either reg or lam (= 1 / reg), not both")
            reg = 1.0 / _check_pos(lam, "lam")
        if kernel is not None:
            if kernel_size != 5:
                raise ValueError("give either kernel_size or kernel, not both")
            kernel_size = kernel
        if iters is not None:
            if sinkhorn_iters != 400:
                raise ValueError("give either sinkhorn_iters or iters, not both")
            sinkhorn_iters = iters
        self.p = float(_check_pos(p, "p"))
        _check_kernel(kernel_size)
        self.kernel_size = kernel_size
        self.reg = float(_check_pos(reg, "reg"))
        self.sinkhorn_iters = _check_pos(sinkhorn_iters, "sinkhorn_iters", integer=True)
        self.sinkhorn_tol = float(_check_pos(sinkhorn_tol, "sinkhorn_tol"))
        self.alpha = float(_check_pos(alpha, "alpha"))
        self.distance_reg = float(_check_pos(distance_reg, "distance_reg"))
        self.distance_iters = _check_pos(distance_iters, "distance_iters", integer=True)
        if not isinstance(contains_rtol, (int, float)) or not contains_rtol >= 0:
            raise ValueError(f"contains_rtol must be a number >= 0, got {contains_rtol!r}")
        self.contains_rtol = float(contains_rtol)

    # -- geometry -------------------------------------------------------------------------
    def distance(self, x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``(N,)`` float64 Sinkhorn cost between ``x`` and ``x_adv`` ``(N, C, H, W)``, each
        normalised to mass 1 (cost units; see the class docstring)."""
        _check_images(x, "x")
        self._check_batch(x, x_adv)
        return sinkhorn_distance(x, x_adv, p=self.p, kernel_size=self.kernel_size,
                                 reg=self.distance_reg, iters=self.distance_iters)

    def norm(self, delta: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        """``(N,)`` Wasserstein size of ``delta`` around the centre ``x``: ``distance(x + delta,
        x)``.  A Wasserstein distance depends on the centre, so ``x`` is required."""
        if x is None:
            raise ValueError("x is required: Wasserstein.norm(delta, x) measures delta around "
                             "the centre x")
        return self.distance(x + delta.to(x), x)

    def project(self, x_adv: torch.Tensor, x: torch.Tensor, *, eps: float | torch.Tensor | None = None,
                state: dict | None = None) -> torch.Tensor:
        """``(N, C, H, W)``: ``x_adv`` projected onto the ball around ``x`` (radius ``eps``,
        default ``self.eps``; float or ``(N,)``) by projected Sinkhorn, then clamped to
        [0, 1].  ``state``: a dict carried between calls on the same ``x`` to warm-start the
        Sinkhorn iteration (see :func:`~toolbox_wasserstein.projected_sinkhorn`); attacks use
        it, with the same answer up to the convergence tolerance ``sinkhorn_tol``."""
        _check_images(x, "x")
        self._check_batch(x, x_adv)
        xd = x.double().clamp_min(0)
        m = xd.flatten(1).sum(1).clamp_min(1e-300).view(-1, 1, 1, 1)
        eps = self.eps if eps is None else eps
        eps = eps.to(xd) if isinstance(eps, torch.Tensor) else eps
        z, _ = projected_sinkhorn(xd / m, x_adv.double() / m, eps, p=self.p,
                                  kernel_size=self.kernel_size, reg=self.reg,
                                  iters=self.sinkhorn_iters, tol=self.sinkhorn_tol, state=state)
        return (z * m).clamp(0, 1).to(x.dtype)

    def ascent(self, grad, x_adv=None, generator=None):
        return grad.sign()

    def random_init(self, x, generator=None, *, box=True):
        self._check_batch(x)
        return x.clone()

    def step(self, x_adv, x, grad, step_size, *, loss_fn=None, generator=None):
        """``project(x_adv + step_size * sign(grad))``; ``step_size`` in pixel units."""
        self._check_batch(x, grad, "grad")
        return self.project(x_adv + _col(step_size, x_adv) * grad.sign(), x)

    def contains(self, x_adv: torch.Tensor, x: torch.Tensor, atol: float = 1e-6,
                 rtol: float | None = None, *, norms: torch.Tensor | None = None) -> torch.Tensor:
        """``(N,)`` bool: ``x_adv`` in [0, 1] and its Sinkhorn distance to ``x`` at most
        ``eps (1 + rtol) + atol``.  ``rtol`` defaults to ``contains_rtol`` (0.05): the
        entropic cost slightly over-estimates the exact one, and the [0, 1] clamp after the
        projection changes the mass a little.  ``norms``: the distances ``(N,)`` when the
        caller has them (``tb.evaluate`` computes them once for both questions)."""
        self._check_batch(x, x_adv)
        rtol = self.contains_rtol if rtol is None else rtol
        d = self.distance(x_adv, x) if norms is None else norms.to(x_adv.device, torch.float64)
        eps = self.eps.to(d) if isinstance(self.eps, torch.Tensor) else self.eps
        flat = x_adv.flatten(1)
        in_box = (flat >= -atol).all(1) & (flat <= 1 + atol).all(1)
        return (d <= eps * (1 + rtol) + atol) & in_box

    def default_step_size(self, steps: int) -> float:
        """The reference attack's fixed ℓ∞ step ``alpha`` (pixel units), whatever ``steps``."""
        return self.alpha


    def spec(self) -> dict[str, Any]:
        out = super().spec()
        out.update(p=self.p, kernel_size=self.kernel_size, reg=self.reg,
                   sinkhorn_iters=self.sinkhorn_iters, sinkhorn_tol=self.sinkhorn_tol)
        return out

    def __repr__(self) -> str:
        eps = self.eps if not isinstance(self.eps, torch.Tensor) else f"tensor{tuple(self.eps.shape)}"
        return (f"Wasserstein(eps={eps}, p={self.p:g}, kernel_size={self.kernel_size}, "
                f"reg={self.reg:g})")
