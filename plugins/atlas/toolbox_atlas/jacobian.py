"""Squared Frobenius norm of the logit Jacobian, ``‖∂f(x)/∂x‖²_F``, per example.

Random projections (Hoffman, Roberts & Yaida 2019): for ``v`` uniform on the unit sphere of
``R^C``, ``E[vvᵀ] = I/C``, so ``C·‖vᵀJ‖²`` is an unbiased estimate of ``‖J‖²_F``; ``vᵀJ`` is one
backward pass of ``Σ_b v_b·f(x_b)``, whatever ``C``.  With ``create_graph=True`` (double
backprop) the estimate is differentiable w.r.t. the model's weights, so it can be a training
penalty.  ``exact=True`` uses the ``C`` one-hot vectors instead (``C`` backward passes; exact).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

__all__ = ["jacobian_norm_sq", "jacobian_frobenius", "random_unit_vectors"]


def random_unit_vectors(n: int, c: int, *, device=None, dtype=None,
                        generator: torch.Generator | None = None) -> torch.Tensor:
    """``(n, c)`` rows drawn uniformly on the unit sphere of ``R^c`` (normalised Gaussians)."""
    v = torch.randn(n, c, device=device, dtype=dtype, generator=generator)
    return v / v.norm(dim=1, keepdim=True).clamp_min(1e-12)


def jacobian_norm_sq(x: torch.Tensor, logits: torch.Tensor, *, n_proj: int = 1, exact: bool = False,
                     create_graph: bool = True, generator: torch.Generator | None = None,
                     half: bool = False) -> torch.Tensor:
    """Per-example ``‖J(x)‖²_F`` (estimate) from an existing forward pass.

    Args:
        x: ``(N, ...)`` inputs with ``requires_grad=True`` (a leaf or not) from which
            ``logits`` were computed.
        logits: ``(N, C)`` logits ``f(x)`` (example ``b``'s row depends only on ``x[b]``, true
            for models in eval mode or without batch-norm; with batch-norm in training mode the
            cross-example terms are ignored, as in Hoffman et al.'s code).
        n_proj: number of random projections averaged (each one backward pass); ignored with
            ``exact``.
        exact: use the ``C`` one-hot basis vectors: the exact squared Frobenius norm.
        create_graph: keep the graph (double backprop) so the result can be differentiated
            w.r.t. the weights; ``False`` for monitoring (cheaper, detached result).
        generator: random source of the projection vectors.
        half: multiply by 1/2 as Hoffman et al.'s reference code does (rescales the weight).

    Returns:
        ``(N,)`` tensor, units of (logit / input-unit)²; the batch mean of the random version
        is an unbiased estimate of the batch mean of ``‖J‖²_F``.
    """
    if not isinstance(x, torch.Tensor) or not x.requires_grad:
        raise ValueError("x must be a tensor with requires_grad=True from which logits were computed")
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or logits.shape[0] != x.shape[0]:
        raise ValueError(f"logits must be (N, C) with N = x.shape[0] = {x.shape[0]}, got "
                         f"{tuple(logits.shape) if isinstance(logits, torch.Tensor) else logits!r}")
    if isinstance(n_proj, bool) or not isinstance(n_proj, int) or n_proj < 1:
        raise ValueError(f"n_proj must be an int >= 1, got {n_proj!r}")
    n, c = logits.shape
    if exact:
        vs = [torch.zeros_like(logits).index_fill_(1, torch.tensor([k], device=logits.device), 1.0)
              for k in range(c)]
        scale = 1.0
    else:
        vs = [random_unit_vectors(n, c, device=logits.device, dtype=logits.dtype, generator=generator)
              for _ in range(n_proj)]
        scale = c / n_proj
    total = logits.new_zeros(n)
    for i, v in enumerate(vs):
        keep = create_graph or i < len(vs) - 1
        (jv,) = torch.autograd.grad((logits * v).sum(), x, retain_graph=keep, create_graph=create_graph)
        total = total + jv.flatten(1).pow(2).sum(1)
    out = scale * total
    if half:
        out = 0.5 * out
    return out if create_graph else out.detach()


def jacobian_frobenius(model: nn.Module | Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, *,
                       n_proj: int = 1, exact: bool = False, create_graph: bool = False,
                       generator: torch.Generator | None = None, half: bool = False) -> torch.Tensor:
    """Per-example ``‖∂f(x)/∂x‖²_F`` of ``model`` at ``x`` ``(N, ...)``; returns ``(N,)``.

    Runs its own forward pass on a detached copy of ``x`` (the model's current mode is kept).
    See :func:`jacobian_norm_sq` for the arguments; ``create_graph`` defaults to ``False`` here
    (a measurement).
    """
    if not isinstance(x, torch.Tensor) or x.dim() < 2:
        raise ValueError(f"x must be an (N, ...) tensor, got {x!r}")
    xx = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        logits = model(xx)
        return jacobian_norm_sq(xx, logits, n_proj=n_proj, exact=exact, create_graph=create_graph,
                                generator=generator, half=half)
