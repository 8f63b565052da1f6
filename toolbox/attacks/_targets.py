"""Loss/success pairs for untargeted and targeted attacks, shared by the gradient attacks."""

from __future__ import annotations

from collections.abc import Callable

import torch

from .. import losses
from .._checks import check_choice

TARGET_RULES = ("random", "next-likely", "least-likely")


def objective(loss: str | Callable, targeted: bool):
    """``(loss_fn, success_fn)`` taking ``(logits, yy)``: ``yy`` is ``y`` ``(N,)`` untargeted, and
    ``(N, 2)`` = (true label, target) when targeted."""
    fn = losses.get(loss)
    if not targeted:
        return fn, lambda logits, y: logits.argmax(1) != y
    if fn is losses.dlr:
        def lt(logits, yy):
            return losses.dlr_targeted(logits, yy[:, 0], yy[:, 1])
    else:
        def lt(logits, yy):
            return -fn(logits, yy[:, 1])
    return lt, lambda logits, yy: logits.argmax(1) == yy[:, 1]


def pick_targets(logits: torch.Tensor, y: torch.Tensor, rule: str,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """Target labels ``(N,)`` different from ``y``: a random other class, the most likely
    wrong class, or the least likely class under ``logits`` ``(N, C)``."""
    check_choice(rule, "target", TARGET_RULES)
    c = logits.shape[1]
    if rule == "random":
        r = torch.randint(1, c, y.shape, generator=generator, device=y.device)
        return (y + r) % c
    masked = logits.scatter(1, y[:, None], float("-inf") if rule == "next-likely" else float("inf"))
    return masked.argmax(1) if rule == "next-likely" else masked.argmin(1)


def ranked_target(logits: torch.Tensor, rank: int) -> torch.Tensor:
    """The class with the ``rank``-th largest logit (rank 1 = the top class) ``(N,)``."""
    return logits.sort(1, descending=True).indices[:, rank - 1]


def attack_labels(model, x: torch.Tensor, y: torch.Tensor, *, targeted: bool, target: torch.Tensor | None,
                  target_rule: str, generator: torch.Generator | None = None) -> torch.Tensor:
    """The label argument ``yy`` of :func:`objective`'s functions: ``y`` ``(N,)`` untargeted;
    ``(N, 2)`` = (true label, target) when targeted, with ``target`` chosen by ``target_rule``
    from the model's logits on ``x`` when not given."""
    if not targeted:
        return y
    if target is None:
        with torch.no_grad():
            target = pick_targets(model(x), y, target_rule, generator)
    return torch.stack([y, target], 1)
