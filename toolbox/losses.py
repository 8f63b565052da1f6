"""Per-example attack losses ``loss(logits, y) -> (N,)``; attacks maximise them.

Targeted variants take the target labels as ``y`` and are maximised too (they return the
negated distance to the target).  Registered as kind ``"loss"``; plugins add their own
(``lm``/``slm`` in the MMA plugin, for instance).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from .hookspecs import hookimpl

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def ce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy ``(N,)``."""
    return F.cross_entropy(logits, y, reduction="none")


def _other_max(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Largest logit among the classes other than ``y`` ``(N,)``."""
    return logits.scatter(1, y[:, None], float("-inf")).amax(1)


def cw(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Carlini-Wagner margin ``max_{j != y} z_j - z_y`` ``(N,)``; positive = misclassified."""
    return _other_max(logits, y) - logits.gather(1, y[:, None]).squeeze(1)


def dlr(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Difference of logits ratio (Croce & Hein 2020), shift- and scale-invariant ``(N,)``:
    ``-(z_y - max_{j != y} z_j) / (z_π1 - z_π3 + 1e-12)`` with ``π`` sorting logits descending."""
    if logits.shape[1] < 3:
        raise ValueError(f"the dlr loss needs at least 3 classes, got logits of shape {tuple(logits.shape)}")
    s = logits.sort(1, descending=True).values
    return -(logits.gather(1, y[:, None]).squeeze(1) - _other_max(logits, y)) / (s[:, 0] - s[:, 2] + 1e-12)


def ce_targeted(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Negative cross-entropy to the target class ``(N,)`` (maximise to reach the target)."""
    return -F.cross_entropy(logits, target, reduction="none")


def dlr_targeted(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Targeted DLR ``-(z_y - z_t) / (z_π1 - (z_π3 + z_π4)/2 + 1e-12)`` ``(N,)`` (needs 4 classes)."""
    if logits.shape[1] < 4:
        raise ValueError(f"the targeted dlr loss needs at least 4 classes, got {logits.shape[1]}")
    s = logits.sort(1, descending=True).values
    zy = logits.gather(1, y[:, None]).squeeze(1)
    zt = logits.gather(1, target[:, None]).squeeze(1)
    return -(zy - zt) / (s[:, 0] - 0.5 * (s[:, 2] + s[:, 3]) + 1e-12)


BUILTIN: dict[str, LossFn] = {"ce": ce, "cw": cw, "dlr": dlr}


def get(name_or_fn: str | LossFn) -> LossFn:
    """A loss by registered name, or a callable passed through."""
    if callable(name_or_fn):
        return name_or_fn
    from .plugins import registry

    return registry().get("loss", name_or_fn)


@hookimpl
def toolbox_register(registry) -> None:
    for n, fn in BUILTIN.items():
        registry.add_loss(n, fn)
