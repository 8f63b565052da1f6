"""The local-linearity error ``g(δ; x)`` of SEAT (Eq. 4 / C.1) and the max-margin loss.

``g(δ; x) = | ℓ(x + δ) − ℓ(x) − δᵀ ∇ₓℓ(x) |``: how far the loss is from its first-order Taylor
expansion at ``x``, evaluated at the perturbation ``δ``.  It is zero for a loss that is linear in
the input and grows as ``‖δ‖²`` (times the curvature) for a smooth one; catastrophic overfitting
of FGSM training shows up as an abrupt jump of it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["REDUCTIONS", "local_linearity_error", "linearity_error", "linear_residual", "reduce_residual",
           "max_margin"]

#: ``none``: per example ``|r_i|`` ``(N,)``; ``mean``: ``mean_i |r_i|`` (the paper's expectation
#: of per-example errors); ``batch``: ``|mean_i r_i|`` (the official code: the absolute value of
#: the batch mean); ``sum``: ``sum_i |r_i|``.
REDUCTIONS = ("none", "mean", "batch", "sum")


def _check_reduction(reduction: str) -> str:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    return reduction


def reduce_residual(r: torch.Tensor, reduction: str = "none") -> torch.Tensor:
    """Turn signed per-example residuals ``r`` ``(N,)`` into the linearity error.

    ``none`` -> ``|r|`` ``(N,)``; ``mean`` -> ``mean |r|``; ``batch`` -> ``|mean r|``;
    ``sum`` -> ``sum |r|`` (scalars).  See :data:`REDUCTIONS`.
    """
    _check_reduction(reduction)
    if r.dim() != 1:
        raise ValueError(f"r must be a 1-d tensor of per-example residuals, got shape {tuple(r.shape)}")
    if reduction == "none":
        return r.abs()
    if reduction == "mean":
        return r.abs().mean()
    if reduction == "batch":
        return r.mean().abs()
    return r.abs().sum()


def linear_residual(loss_adv: torch.Tensor, loss_clean: torch.Tensor, delta: torch.Tensor,
                    grad_clean: torch.Tensor) -> torch.Tensor:
    """Signed residual ``r_i = ℓ_i(x+δ) − ℓ_i(x) − δ_iᵀ ∇ℓ_i(x)`` ``(N,)``.

    ``loss_adv``, ``loss_clean``: per-example losses ``(N,)``; ``delta`` and ``grad_clean``:
    ``(N, ...)`` like the input.  Differentiable in every argument that carries a graph (callers
    detach ``grad_clean`` for the code's "no double backprop" variant).
    """
    if delta.shape != grad_clean.shape:
        raise ValueError(f"delta {tuple(delta.shape)} and grad_clean {tuple(grad_clean.shape)} must have one shape")
    n = delta.shape[0]
    if loss_adv.shape != (n,) or loss_clean.shape != (n,):
        raise ValueError(f"loss_adv {tuple(loss_adv.shape)} and loss_clean {tuple(loss_clean.shape)} must be "
                         f"per-example losses of shape ({n},)")
    lin = (delta * grad_clean).flatten(1).sum(1)
    return loss_adv - loss_clean - lin


def local_linearity_error(f: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, delta: torch.Tensor, *,
                          reduction: str = "none", create_graph: bool = False) -> torch.Tensor:
    """``g(δ; x) = |f(x+δ) − f(x) − δᵀ∇f(x)|`` for any per-example function ``f``.

    Args:
        f: maps a batch ``(N, ...)`` to per-example values ``(N,)`` (a loss); example ``i``'s value
            must depend on example ``i`` only (true for a model in eval mode), so the gradient of
            ``f(x).sum()`` holds the per-example gradients.
        x: points ``(N, ...)`` (any float dtype; no [0, 1] requirement here).
        delta: perturbations ``(N, ...)``, same shape as ``x``.
        reduction: see :data:`REDUCTIONS` (``"none"``: ``(N,)``; otherwise a scalar).
        create_graph: keep the graph of ``∇f(x)`` so the result can be differentiated through the
            first-order term too (double backprop).  Default: ``∇f(x)`` is a constant, as in the
            official code; the result is still differentiable in ``delta`` and through ``f``.

    Returns the error in the units of ``f`` (nats for a cross-entropy loss).
    """
    if not isinstance(x, torch.Tensor) or not isinstance(delta, torch.Tensor):
        raise ValueError("x and delta must be tensors")
    if x.shape != delta.shape:
        raise ValueError(f"delta must have the shape of x {tuple(x.shape)}, got {tuple(delta.shape)}")
    if x.dim() < 1 or x.shape[0] == 0:
        raise ValueError(f"x must be a non-empty batch (N, ...), got shape {tuple(x.shape)}")
    _check_reduction(reduction)
    with torch.enable_grad():
        xc = x.detach().requires_grad_(True)
        fx = f(xc)
        if fx.shape != (x.shape[0],):
            raise ValueError(f"f must return per-example values of shape ({x.shape[0]},), got {tuple(fx.shape)}")
        (gx,) = torch.autograd.grad(fx.sum(), xc, create_graph=create_graph)
        if not create_graph:
            gx = gx.detach()
        fxd = f(x.detach() + delta)
        r = linear_residual(fxd, fx, delta, gx)
    return reduce_residual(r, reduction)


def linearity_error(model: nn.Module, x: torch.Tensor, y: torch.Tensor, delta: torch.Tensor, *,
                    reduction: str = "none", loss: str | Callable = "ce",
                    create_graph: bool = False) -> torch.Tensor:
    """The SEAT linearity error of ``model``'s loss at ``x`` ``(N, ...)`` with labels ``y`` ``(N,)``
    for perturbations ``delta`` ``(N, ...)``.

    ``loss``: ``"ce"`` (cross-entropy, as in the paper and code), ``"mm"`` / ``"mm-prob"``
    (:func:`max_margin` on logits / softmax probabilities) or a callable
    ``loss(logits, y) -> (N,)``.  ``reduction``: see :data:`REDUCTIONS`.  The model is used in
    whatever mode it is in; wrap the call in ``toolbox.attack_mode(model)`` to measure it in eval
    mode without touching parameter gradients.  Returns ``(N,)`` or a scalar, in nats for CE.
    """
    if not isinstance(y, torch.Tensor) or y.shape != (x.shape[0],):
        raise ValueError(f"y must be a tensor of shape ({x.shape[0]},), got "
                         f"{tuple(y.shape) if isinstance(y, torch.Tensor) else y!r}")
    lf = attack_loss(loss)
    return local_linearity_error(lambda z: lf(model(z), y), x, delta, reduction=reduction,
                                 create_graph=create_graph)


def max_margin(logits: torch.Tensor, y: torch.Tensor, *, probs: bool = False) -> torch.Tensor:
    """Max-margin loss ``ℓ_MM = max_{k≠y} z_k − z_y`` per example ``(N,)``.

    ``logits`` ``(N, C)``, ``y`` ``(N,)``.  ``probs=True`` applies it to ``softmax(z)`` (the
    official code's variant; values in [−1, 1]).  Negative exactly when the example is
    classified correctly (with a unique maximum); any number of classes ``C >= 2``.
    """
    if logits.dim() != 2 or logits.shape[1] < 2:
        raise ValueError(f"logits must have shape (N, C) with C >= 2, got {tuple(logits.shape)}")
    z = logits.softmax(1) if probs else logits
    zy = z.gather(1, y[:, None]).squeeze(1)
    other = z.scatter(1, y[:, None], float("-inf")).amax(1)
    return other - zy


def _ce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, y, reduction="none")


def _mm(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return max_margin(logits, y)


def _mm_prob(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return max_margin(logits, y, probs=True)


ATTACK_LOSSES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "mm": _mm, "mm-prob": _mm_prob, "ce": _ce,
}


def attack_loss(name: str | Callable) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Per-example loss ``(logits, y) -> (N,)`` by name (``mm``, ``mm-prob``, ``ce``) or a callable."""
    if callable(name):
        return name
    if name not in ATTACK_LOSSES:
        raise ValueError(f"loss must be one of {tuple(ATTACK_LOSSES)} or a callable, got {name!r}")
    return ATTACK_LOSSES[name]
