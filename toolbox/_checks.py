"""Argument checks shared by the kernel.  Every failure is a ``ValueError`` naming the argument
and the offending value, as the design contract requires."""

from __future__ import annotations

import math
import numbers
from typing import Any

import torch


def check_eps(eps: Any, name: str = "eps") -> float | torch.Tensor:
    """A finite, non-negative radius: a float, or a 1-D tensor of per-example radii ``(N,)``."""
    if isinstance(eps, torch.Tensor):
        if eps.dtype == torch.bool or eps.is_complex():
            raise ValueError(f"{name} must hold real radii, got a tensor of dtype {eps.dtype}")
        eps = eps.detach()
        if not eps.is_floating_point():
            eps = eps.to(torch.get_default_dtype())
        if eps.dim() == 0:
            eps = float(eps)
        else:
            if eps.dim() != 1:
                raise ValueError(f"{name} tensor must be 1-D (one radius per example), got shape {tuple(eps.shape)}")
            if not torch.isfinite(eps).all() or (eps < 0).any():
                bad = eps[~torch.isfinite(eps) | (eps < 0)][0].item()
                raise ValueError(f"{name} must be finite and >= 0, got {bad}")
            return eps
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real):
        raise ValueError(f"{name} must be a number or a 1-D tensor, got {eps!r}")
    eps = float(eps)
    if not math.isfinite(eps) or eps < 0:
        raise ValueError(f"{name} must be finite and >= 0, got {eps}")
    return eps


def check_positive(value: Any, name: str, *, allow_zero: bool = False, integer: bool = False) -> Any:
    """A finite number ``> 0`` (``>= 0`` with ``allow_zero``); with ``integer`` an integer.

    numpy scalars are accepted and returned as plain ``int``/``float`` (JSON-friendly specs);
    ``bool``, strings, tensors and integer-valued floats for ``integer`` are rejected.
    """
    ok_type = numbers.Integral if integer else numbers.Real
    if isinstance(value, bool) or not isinstance(value, ok_type):
        kind = "an integer" if integer else "a number"
        raise ValueError(f"{name} must be {kind}, got {value!r}")
    value = int(value) if integer else (value if isinstance(value, int) else float(value))
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be finite and {bound}, got {value}")
    return value


def check_images(x: Any, name: str = "x") -> torch.Tensor:
    """A floating tensor ``(N, ...)`` with values in [0, 1] and no NaN."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating tensor with values in [0, 1], got dtype {x.dtype}")
    if x.dim() < 2:
        raise ValueError(f"{name} must have a batch dimension, shape (N, ...), got shape {tuple(x.shape)}")
    if x.numel() == 0:
        return x
    lo_t, hi_t = torch.aminmax(x.detach())  # one pass; NaN propagates into both
    lo, hi = torch.stack([lo_t, hi_t]).tolist()  # one device sync
    if math.isnan(lo) or math.isnan(hi):
        raise ValueError(f"{name} contains NaN")
    if lo < 0 or hi > 1:
        raise ValueError(f"{name} must lie in [0, 1] (normalisation belongs inside the model), got range [{lo:.4g}, {hi:.4g}]")
    return x


def check_labels(y: Any, n: int, name: str = "y", num_classes: int | None = None) -> torch.Tensor:
    """Integer class indices ``(N,)`` matching the batch size ``n``."""
    if not isinstance(y, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of class indices, got {type(y).__name__}")
    if y.dtype.is_floating_point or y.dtype == torch.bool or y.is_complex():
        raise ValueError(f"{name} must hold integer class indices, got dtype {y.dtype}")
    if y.dim() != 1 or y.shape[0] != n:
        raise ValueError(f"{name} must have shape ({n},) to match x, got shape {tuple(y.shape)}")
    if y.numel():
        lo, hi = int(y.min()), int(y.max())
        if lo < 0 or (num_classes is not None and hi >= num_classes):
            top = f"{num_classes - 1}" if num_classes is not None else "num_classes-1"
            raise ValueError(f"{name} holds labels outside [0, {top}]: min {lo}, max {hi}")
    return y


def check_logits(logits: Any, n: int, name: str = "model output") -> torch.Tensor:
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or logits.shape[0] != n:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(f"{name} must be logits of shape ({n}, num_classes), got {shape}")
    return logits


def check_choice(value: Any, name: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return value
