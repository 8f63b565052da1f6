"""The thesis's "binarize" MNIST baseline (ch. 5, Table 5.1): the input thresholded at 0.5."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["Binarize", "binarized"]


class Binarize(nn.Module):
    """``(x > threshold)`` as floats in the forward pass; the identity's gradient in the
    backward pass (straight-through), so gradient attacks still see a useful direction
    (with the true, zero, gradient every gradient attack would fail trivially).  Shape-preserving."""

    def __init__(self, threshold: float = 0.5) -> None:
        super().__init__()
        if not isinstance(threshold, (int, float)) or not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {threshold!r}")
        self.threshold = float(threshold)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hard = (x > self.threshold).to(x.dtype)
        return x + (hard - x).detach()


def binarized(name: str = "mnist-small", threshold: float = 0.5, **kw) -> nn.Module:
    """``nn.Sequential(Binarize(threshold), tb.models.create(name, **kw))``: model
    ``mnist-small-binarized`` (the thesis's binarized MNIST model)."""
    import toolbox as tb

    return nn.Sequential(Binarize(threshold), tb.models.create(name, **kw))
