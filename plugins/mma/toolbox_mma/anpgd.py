"""AN-PGD: adaptive-norm PGD with a bisection for the decision boundary (MMA, Alg. 1).

Per example: PGD at the example's radius ``eps_init`` (SLM loss, step ``2.5 eps_init / K``,
random start), the direction ``u = delta / ||delta||`` of its result, then a fixed number of
bisection steps along ``x + eta u`` for the zero crossing of the margin loss over
``eta in [0, eps_max]``.  Everything runs batched with per-example radii (no Python loop over
examples).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from toolbox.attacks import Attack
from toolbox.attacks.base import Signed, attack_mode, iterate, misclassified

from . import losses as mlosses


@dataclass
class MarginSearch:
    """Result of :meth:`ANPGD.margin` for a batch of ``N`` examples.

    ``x_adv`` ``(N, ...)``: the paper's output ``x + eps u`` at the last bisection midpoint
    (clamped to [0, 1]); ``eps`` ``(N,)``: that midpoint, the margin estimate ε* in the threat
    model's norm (within ``eps_max / 2**bisection_steps`` of the crossing along ``u``);
    ``found`` ``(N,)`` bool: a point classified wrongly (margin loss >= 0) was seen;
    ``eps_adv`` ``(N,)``: the smallest radius seen to be adversarial (``eps_max`` when none);
    ``x_min_adv`` ``(N, ...)``: the point at ``eps_adv`` where found, else the PGD output.
    """

    x_adv: torch.Tensor
    eps: torch.Tensor
    found: torch.Tensor
    eps_adv: torch.Tensor
    x_min_adv: torch.Tensor


def bisect(fn, eta0: torch.Tensor, eps_max: torch.Tensor, steps: int = 10,
           m0: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The authors' bisection for the zero crossing of ``fn(eta) -> (N,)`` on ``[0, eps_max]``.

    ``fn(eta)`` is the margin loss at radius ``eta`` ``(N,)`` (negative = still correct).
    Starting from ``lo = 0``, ``hi = eps_max``, ``eta = eta0`` (``m0 = fn(eta0)`` if given):
    ``steps`` times, move ``lo`` up to ``eta`` when ``fn(eta) < 0``, else ``hi`` down to
    ``eta``, and set ``eta = (lo + hi) / 2``.  Returns ``(eta, lo, hi, found)``: the last
    midpoint (the paper's ε*, always in ``[lo, hi]``), the final bracket, and whether any
    evaluated point was adversarial.  ``fn`` is called ``steps + 1`` times (``steps`` with m0).
    """
    eta = torch.minimum(eta0, eps_max).clone()
    lo = torch.zeros_like(eta)
    hi = eps_max.clone().to(eta.dtype)
    m = fn(eta) if m0 is None else m0
    found = torch.zeros_like(eta, dtype=torch.bool)
    for _ in range(int(steps)):
        adv = m >= 0
        found |= adv
        lo = torch.where(adv, lo, torch.maximum(lo, eta))
        hi = torch.where(adv, torch.minimum(hi, eta), hi)
        eta = (lo + hi) / 2
        m = fn(eta)
    adv = m >= 0
    found |= adv
    hi = torch.where(adv, torch.minimum(hi, eta), hi)
    lo = torch.where(adv, lo, torch.maximum(lo, eta))
    return eta, lo, hi, found


def _vec(v, n: int, like: torch.Tensor, name: str) -> torch.Tensor:
    if isinstance(v, torch.Tensor):
        t = v.detach().to(like.device, torch.float32).reshape(-1)
        if t.numel() == 1:
            t = t.expand(n)
        if t.shape[0] != n:
            raise ValueError(f"{name} has {t.shape[0]} entries but x has {n} examples")
    else:
        t = torch.full((n,), float(v), device=like.device, dtype=torch.float32)
    if not bool(torch.isfinite(t).all()) or bool((t < 0).any()):
        raise ValueError(f"{name} must be finite and >= 0, got {v!r}")
    return t.clone()


class ANPGD(Attack):
    """Adaptive-norm PGD (MMA Alg. 1): a minimal-margin estimator and attack.

    ``threat``'s radius is ``eps_max``, the end of the bisection interval: every output lies in
    that ball ∩ [0, 1].  ``eps_init`` (float, ``(N,)`` tensor or None = ``eps_max``) is the PGD
    radius (the MMA defense passes each example's stored margin).  ``steps`` PGD steps of
    ``step_scale * eps_init / steps`` on ``loss`` (``"slm"`` by default; any registered loss
    name), random start; then ``bisection_steps`` bisection steps on ``bisection_loss``
    (``"slm"`` for training as in the paper, ``"lm"`` for the exact decision boundary, as the
    authors' test-time estimator).  ``direction="norm"`` uses ``u = delta/||delta||`` (paper);
    ``"eps"`` uses ``delta / eps_init`` (the authors' code).

    ``attack(model, x, y)`` returns, per example, the smallest-radius adversarial point the
    bisection saw (the PGD output where none was found); :meth:`margin` returns the margins.
    Cost: ``steps`` forward+backward passes and ``bisection_steps + 1`` forward passes.
    """

    name = "an-pgd"

    def __init__(self, threat, steps: int = 40, eps_init: float | torch.Tensor | None = None, *,
                 step_scale: float = 2.5, bisection_steps: int = 10, loss: str = "slm",
                 bisection_loss: str = "slm", direction: str = "norm", random_start: bool = True,
                 seed: int | None = None, mode: str = "eval") -> None:
        super().__init__(threat, seed=seed, mode=mode)
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be a positive int, got {steps!r}")
        if isinstance(bisection_steps, bool) or not isinstance(bisection_steps, int) or bisection_steps < 0:
            raise ValueError(f"bisection_steps must be an int >= 0, got {bisection_steps!r}")
        if not (isinstance(step_scale, (int, float)) and step_scale > 0):
            raise ValueError(f"step_scale must be > 0, got {step_scale!r}")
        if direction not in ("norm", "eps"):
            raise ValueError(f"direction must be 'norm' or 'eps', got {direction!r}")
        if eps_init is not None and not isinstance(eps_init, torch.Tensor) and not eps_init > 0:
            raise ValueError(f"eps_init must be > 0 or None, got {eps_init!r}")
        from toolbox.losses import get as get_loss
        def resolve(v):
            return mlosses.LOSSES[v] if isinstance(v, str) and v in mlosses.LOSSES else get_loss(v)

        self._loss, self._bloss = resolve(loss), resolve(bisection_loss)
        self.steps, self.bisection_steps = steps, bisection_steps
        self.step_scale, self.direction = float(step_scale), direction
        self.loss, self.bisection_loss = loss, bisection_loss
        self.eps_init = eps_init
        self.random_start = bool(random_start)

    # -- core ----------------------------------------------------------------------------------
    def _search(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps_init, generator) -> MarginSearch:
        n = x.shape[0]
        eps_max = _vec(self.threat.eps, n, x, "threat eps (eps_max)")
        e0 = eps_max.clone() if eps_init is None else _vec(eps_init, n, x, "eps_init")
        e0 = torch.minimum(e0, eps_max).clamp_min(1e-12)
        tm = self.threat.with_eps(e0)
        x0 = tm.random_init(x, generator) if self.random_start else x
        x1, _, _ = iterate(model, x, y, x0, steps=self.steps, rule=Signed(tm, self.step_scale * e0 / self.steps),
                           loss=self._loss, success=misclassified, keep_best=False, generator=generator)
        delta = x1 - x
        shape = (-1,) + (1,) * (x.dim() - 1)
        if self.direction == "norm":
            nrm = self.threat.norm(delta).to(torch.float32)
            u = delta / nrm.clamp_min(1e-12).view(shape).to(x.dtype)
            eta0 = nrm
        else:
            u = delta / e0.view(shape).to(x.dtype)
            eta0 = e0

        def at(eta: torch.Tensor) -> torch.Tensor:
            return (x + eta.view(shape).to(x.dtype) * u).clamp(0, 1)

        def fn(eta: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                return self._bloss(model(at(eta)), y).float()

        eta, _, hi, found = bisect(fn, eta0, eps_max, self.bisection_steps)
        with torch.no_grad():
            x_min = torch.where(found.view(shape), at(hi), x1)
            x_adv = at(eta)
            # the box clamp and float rounding must not leave the eps_max ball
            x_min = self.threat.project(x_min, x)
            x_adv = self.threat.project(x_adv, x)
        return MarginSearch(x_adv.detach(), eta.detach(), found, torch.where(found, hi, eps_max), x_min.detach())

    def perturb(self, model, x, y, *, generator=None):
        return self._search(model, x, y, self.eps_init, generator).x_min_adv

    def margin(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps_init=None, *,
               generator: torch.Generator | None = None) -> MarginSearch:
        """Search the margin of every example of ``x`` ``(N, ...)`` in [0, 1] with labels ``y``.

        ``eps_init``: the PGD radius per example (float or ``(N,)``; default the attack's
        ``eps_init``, else ``eps_max``).  Runs in :func:`attack_mode` (eval mode, frozen
        parameters, restored afterwards).  Returns a :class:`MarginSearch`.
        """
        from toolbox._checks import check_images, check_labels
        check_images(x, "x")
        check_labels(y, x.shape[0], "y")
        gen = generator if generator is not None else self.make_generator(x.device)
        with attack_mode(model, self.mode):
            return self._search(model, x.detach(), y.detach(),
                                self.eps_init if eps_init is None else eps_init, gen)
