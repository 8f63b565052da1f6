"""Margin losses of the MMA paper (Ding et al., ICLR 2020), per example, maximised by attacks.

Both are ``loss(logits, y) -> (N,)`` with ``logits`` ``(N, K)`` and integer labels ``y``
``(N,)``; a negative value means the example is classified correctly.

* ``lm``  (logit margin):       ``max_{j != y} z_j - z_y``
* ``slm`` (soft logit margin):  ``logsumexp_{j != y} z_j - z_y``

``slm - log(K-1) <= lm <= slm`` (Prop. 2.3), and ``grad CE = (1 - softmax_y) * grad slm``
(Prop. 2.4), so sign-gradient PGD iterates are identical under CE and SLM.
"""

from __future__ import annotations

import torch


def _check(logits: torch.Tensor, y: torch.Tensor, name: str) -> None:
    if logits.dim() != 2 or logits.shape[1] < 2:
        raise ValueError(f"{name}: logits must have shape (N, K) with K >= 2, got {tuple(logits.shape)}")
    if y.shape != logits.shape[:1]:
        raise ValueError(f"{name}: y must have shape ({logits.shape[0]},), got {tuple(y.shape)}")


def lm(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Logit margin ``max_{j != y} z_j - z_y`` ``(N,)``; ``>= 0`` means misclassified."""
    _check(logits, y, "lm")
    zy = logits.gather(1, y[:, None]).squeeze(1)
    return logits.scatter(1, y[:, None], float("-inf")).amax(1) - zy


def slm(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Soft logit margin ``logsumexp_{j != y} z_j - z_y`` ``(N,)`` (an upper bound of ``lm``)."""
    _check(logits, y, "slm")
    zy = logits.gather(1, y[:, None]).squeeze(1)
    return torch.logsumexp(logits.scatter(1, y[:, None], float("-inf")), 1) - zy


LOSSES = {"lm": lm, "slm": slm}


def get(name: str):
    """``lm`` or ``slm`` by name (``KeyError`` listing both otherwise)."""
    try:
        return LOSSES[name]
    except KeyError:
        raise KeyError(f"unknown margin loss {name!r}; available: {sorted(LOSSES)}") from None
