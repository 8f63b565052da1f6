"""The SEAT attack (Eq. 9): one signed step of size ε from a random vertex of the ℓ∞ ball on
``ℓ_MM + λ·g``."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

import toolbox as tb

from .linearity import REDUCTIONS, attack_loss, linear_residual, reduce_residual

__all__ = ["SEATAttack", "SEATStep", "seat_perturb", "random_vertex", "clean_loss_and_grad", "max_linearity_error"]


def _col(v: float | torch.Tensor, like: torch.Tensor) -> float | torch.Tensor:
    if isinstance(v, torch.Tensor):
        return v.to(like.dtype).view((-1,) + (1,) * (like.dim() - 1))
    return v


def random_vertex(x: torch.Tensor, eps: float | torch.Tensor,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """``δ₀ = ε·sign(U − 0.5)``, ``U ~ U[0, 1)`` per pixel: a random vertex of the ℓ∞ ball,
    shape of ``x`` ``(N, ...)``; ``eps`` a float or per-example ``(N,)`` tensor.  Not clipped to
    the [0, 1] box (the caller clips ``x + δ₀``)."""
    u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return torch.where(u < 0.5, -1.0, 1.0).to(x.dtype) * _col(eps, x)


def clean_loss_and_grad(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                        retain_graph: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-example clean cross-entropy ``(N,)`` and its input gradient ``(N, ...)``.

    With ``retain_graph=True`` the returned loss keeps its graph (so parameter gradients can
    later flow through it: the defense's shared clean pass); otherwise both are detached.
    """
    with torch.enable_grad():
        xc = x.detach().requires_grad_(True)
        lc = F.cross_entropy(model(xc), y, reduction="none")
        (gc,) = torch.autograd.grad(lc.sum(), xc, retain_graph=retain_graph)
    return (lc if retain_graph else lc.detach()), gc.detach()


def _project(x: torch.Tensor, x_new: torch.Tensor, eps: float | torch.Tensor) -> torch.Tensor:
    """``x_new`` projected onto the ℓ∞ ball of radius ``eps`` around ``x``, then into [0, 1]."""
    e = _col(eps, x)
    d = torch.max(torch.min(x_new - x, e), -e) if isinstance(e, torch.Tensor) else (x_new - x).clamp(-e, e)
    return (x + d).clamp(0, 1)


def max_linearity_error(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float | torch.Tensor, *,
                        steps: int = 10, step_size: float | None = None, starts: tuple | list = (),
                        restarts: int = 1, generator: torch.Generator | None = None,
                        clean: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The local linearity measure ``γ(ε; x) = max_{‖δ‖∞ ≤ ε, x+δ ∈ [0,1]} g(δ; x)`` (the maximised
    form of SEAT's linearity error, as in Qin et al. 2019's LLR, whose name SEAT's code uses),
    estimated per example.

    ``g`` is the cross-entropy linearity error about ``x`` (:func:`~toolbox_seat.linearity_error`).
    The estimate is the per-example maximum of ``g`` over the given ``starts`` (adversarial
    points ``(N, ...)`` inside the ball, e.g. the FGSM and PGD points) and over every iterate of
    ``restarts`` signed-gradient ascents on ``g`` itself, each from a random vertex of the ball
    (``steps`` steps of size ``step_size``, default ε/4, projected onto ball ∩ [0, 1]).  A lower
    bound on γ: more steps or restarts can only raise it.

    Args:
        model: logits ``(N, C)``; used in its current mode (call it under
            ``toolbox.attack_mode(model)``), parameters untouched.
        x: clean images ``(N, ...)`` in [0, 1]; ``y``: labels ``(N,)``.
        eps: ℓ∞ radius (float or ``(N,)``), pixel units.
        steps: ascent steps per restart (0: random vertices and ``starts`` only).
        restarts: number of random-vertex ascents.
        clean: ``(CE(x) (N,), ∇ₓCE(x) (N, ...))`` if already computed.

    Returns ``(γ (N,) in nats, the maximising points (N, ...))``, detached.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be an int >= 0, got {steps!r}")
    if isinstance(restarts, bool) or not isinstance(restarts, int) or restarts < 0:
        raise ValueError(f"restarts must be an int >= 0, got {restarts!r}")
    if not starts and restarts == 0:
        raise ValueError("max_linearity_error needs starts or restarts >= 1")
    lc, gc = clean if clean is not None else clean_loss_and_grad(model, x, y)
    lc, gc = lc.detach(), gc.detach()
    alpha = _col(eps, x) / 4 if step_size is None else step_size
    x = x.detach()

    def g_and_grad(xp: torch.Tensor, need_grad: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        with torch.enable_grad():
            xv = xp.detach().clone().requires_grad_(need_grad)
            r = linear_residual(F.cross_entropy(model(xv), y, reduction="none"), lc, xv - x, gc).abs()
            grad = torch.autograd.grad(r.sum(), xv)[0] if need_grad else None
        return r.detach(), grad

    best, best_x = None, None

    def keep(g: torch.Tensor, xp: torch.Tensor) -> None:
        nonlocal best, best_x
        if best is None:
            best, best_x = g.clone(), xp.detach().clone()
            return
        better = g > best
        best = torch.where(better, g, best)
        best_x = torch.where(better.view((-1,) + (1,) * (x.dim() - 1)), xp.detach(), best_x)

    for s in starts:
        if s.shape != x.shape:
            raise ValueError(f"every start must have the shape of x {tuple(x.shape)}, got {tuple(s.shape)}")
        keep(g_and_grad(s, False)[0], s)
    for _ in range(restarts):
        xp = (x + random_vertex(x, eps, generator)).clamp(0, 1)
        for _ in range(steps):
            g, grad = g_and_grad(xp, True)
            keep(g, xp)
            xp = _project(x, xp + _col(alpha, x) * grad.sign(), eps)
        keep(g_and_grad(xp, False)[0], xp)
    return best, best_x


@dataclass
class SEATStep:
    """What one SEAT step produced (all detached).

    ``x_adv`` ``(N, ...)`` the adversarial examples in ball ∩ [0, 1]; ``delta_pre`` the
    perturbation before the final [0, 1] clip, ``clip(δ_s + α·sign(∇), −ε, ε)``; ``x_start`` the
    clipped random-vertex start ``clip(x + δ₀, 0, 1)``; ``grad`` the input gradient of the
    objective at ``x_start``; ``objective`` its value there; ``grad_evals`` the number of input
    gradient passes (1 without the linearity term, 2 with it, 1 when the clean pass was given).
    """

    x_adv: torch.Tensor
    delta_pre: torch.Tensor
    x_start: torch.Tensor
    grad: torch.Tensor
    objective: torch.Tensor
    grad_evals: int


def seat_perturb(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float | torch.Tensor, *,
                 lam: float = 0.5, loss: str = "mm", reduction: str = "mean",
                 step_size: float | torch.Tensor | None = None, generator: torch.Generator | None = None,
                 clean: tuple[torch.Tensor, torch.Tensor] | None = None,
                 start: torch.Tensor | None = None) -> SEATStep:
    """One SEAT step: ``δ* = clip(δ_s + α·sign(∇_δ[ℓ_att(x+δ_s) + λ·g(δ_s; x)]), −ε, ε)``, then
    ``x + δ*`` clipped to [0, 1], with ``δ_s = clip(x + δ₀, 0, 1) − x`` from a random vertex ``δ₀``.

    Args:
        model: logits ``(N, C)`` of images ``(N, ...)``; used in its current mode, parameters
            untouched (only input gradients are taken).
        x: clean images ``(N, ...)`` in [0, 1]; ``y`` labels ``(N,)``.
        eps: ℓ∞ radius (float or ``(N,)``), in [0, 1] pixel units.
        lam: weight λ ≥ 0 of the linearity error in the attack objective (0: no clean pass).
        loss: attack loss ``"mm"`` (max-margin on logits, the paper's Eq. 9), ``"mm-prob"``
            (on softmax probabilities, the official code) or ``"ce"``.
        reduction: how g enters the objective: ``"mean"`` (per-example |r|, the paper) or
            ``"batch"`` (|batch mean of r|, the code).
        step_size: α, default ``eps``.
        generator: for the random vertex.
        clean: ``(ℓ(x) (N,), ∇ₓℓ(x) (N, ...))`` when the caller already has them (reuse of the
            defense's clean pass); computed here otherwise.
        start: ``δ₀`` to use instead of a random vertex (tests).

    The residual's first-order term ``δᵀ∇ℓ(x)`` is differentiated in δ (its gradient is the
    constant ``∇ℓ(x)``), i.e. the exact gradient of g; the official code detaches it.
    """
    if reduction not in ("mean", "batch"):
        raise ValueError(f"reduction must be 'mean' or 'batch', got {reduction!r}")
    if lam < 0:
        raise ValueError(f"lam must be >= 0, got {lam}")
    lf = attack_loss(loss)
    alpha = eps if step_size is None else step_size
    d0 = random_vertex(x, eps, generator) if start is None else start
    x_start = (x + d0).clamp(0, 1).detach()
    evals = 1
    if lam > 0 and clean is None:
        clean = clean_loss_and_grad(model, x, y)
        evals += 1
    with torch.enable_grad():
        xs = x_start.clone().requires_grad_(True)
        logits = model(xs)
        att = lf(logits, y)
        if lam > 0:
            lc, gc = clean
            r = linear_residual(F.cross_entropy(logits, y, reduction="none"), lc.detach(), xs - x, gc.detach())
            if reduction == "mean":
                obj = att.sum() + lam * r.abs().sum()
            else:
                obj = att.mean() + lam * reduce_residual(r, "batch")
        else:
            obj = att.sum()
        (grad,) = torch.autograd.grad(obj, xs)
    e = _col(eps, x)
    delta_pre = torch.max(torch.min(x_start - x + _col(alpha, x) * grad.sign(), e), -e) \
        if isinstance(e, torch.Tensor) else (x_start - x + _col(alpha, x) * grad.sign()).clamp(-e, e)
    x_adv = (x + delta_pre).clamp(0, 1)
    return SEATStep(x_adv.detach(), delta_pre.detach(), x_start, grad.detach(), obj.detach(), evals)


class SEATAttack(tb.Attack):
    """SEAT's inner maximisation (Eq. 9) as a registered attack, ``tb.attack("seat", ...)``.

    One signed-gradient step of size ``step_size`` (default ε) from a random vertex of the ℓ∞
    ball (``x + ε·sign(U − 0.5)``, clipped to [0, 1]) on ``ℓ_att + lam·g(δ; x)``, then projected
    into ball ∩ [0, 1].  Cost: 2 forward + 2 input-gradient passes with ``lam > 0``, 1 + 1 with
    ``lam = 0``.

    Args:
        threat: ``tb.Linf(eps)`` (only ℓ∞: the random vertex and the sign step are ℓ∞ objects).
        lam: λ ≥ 0 (the paper's best is 0.5; the official code hard-codes 0.6).
        loss: ``"mm"`` (max-margin on logits, as the paper writes Eq. 9; default), ``"mm-prob"``
            (max-margin on softmax probabilities, the official code) or ``"ce"``.
        reduction: ``"mean"`` (paper: per-example |residual|) or ``"batch"`` (code: |batch mean|).
        step_size: α (default ε).
        seed, mode: see :class:`toolbox.Attack`.
    """

    name = "seat"

    def __init__(self, threat, lam: float = 0.5, *, loss: str = "mm", reduction: str = "mean",
                 step_size: float | None = None, seed: int | None = None, mode: str = "eval") -> None:
        super().__init__(threat, seed=seed, mode=mode)
        if not isinstance(self.threat, tb.Linf):
            raise ValueError(f"threat must be tb.Linf for the seat attack, got {self.threat!r}")
        if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not lam >= 0:
            raise ValueError(f"lam must be a number >= 0, got {lam!r}")
        attack_loss(loss)
        if reduction not in ("mean", "batch"):
            raise ValueError(f"reduction must be 'mean' or 'batch' (of {REDUCTIONS}), got {reduction!r}")
        if step_size is not None and (isinstance(step_size, bool) or not isinstance(step_size, (int, float))
                                      or not step_size > 0):
            raise ValueError(f"step_size must be a positive number or None, got {step_size!r}")
        self.lam, self.loss, self.reduction = float(lam), loss, reduction
        self.step_size = None if step_size is None else float(step_size)

    def step(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
             generator: torch.Generator | None = None,
             clean: tuple[torch.Tensor, torch.Tensor] | None = None) -> SEATStep:
        """The full :class:`SEATStep` record (no argument checks, no mode switch); used by the
        defense to share its clean pass and by tests to see ``delta_pre``."""
        return seat_perturb(model, x, y, self.threat.eps, lam=self.lam, loss=self.loss,
                            reduction=self.reduction, step_size=self.step_size, generator=generator,
                            clean=clean)

    def perturb(self, model, x, y, *, generator=None, **_):
        return self.step(model, x, y, generator=generator).x_adv
