"""The ``dual-network`` certifier (Wong & Kolter 2018, thesis ch. 3)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from toolbox.certify import Certificate, Certifier

from .dual import margin_lower_bounds, threat_norm


class DualNetworkCertifier(Certifier):
    """Certify with the dual network's lower bounds on the margins.

    ``certified[i]`` iff every margin bound ``J(e_y - e_j) > 0`` for ``j != y``; ``margins``
    ``(N, C)`` holds those bounds (0 at ``j = y``).  ``extra["min_margin"]`` ``(N,)`` is the
    smallest bound over ``j != y``.  Exact intermediate bounds (no random projection), so
    cost and memory grow with the number of hidden units times the batch.

    Args:
        threat: ``tb.Linf`` (ball ∩ [0, 1] box) or ``tb.L2`` (the ball alone).
        batch_size: examples per dual-network pass (memory control).
    """

    name = "dual-network"

    def __init__(self, threat: Any, batch_size: int = 64) -> None:
        super().__init__(threat)
        self.norm = threat_norm(self.threat)
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = int(batch_size)

    def certify(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Certificate:
        eps = self.threat.eps
        eps_t = torch.as_tensor(eps, dtype=x.dtype, device=x.device)
        if eps_t.dim() == 0:
            eps_t = eps_t.expand(x.shape[0])
        parts = []
        with torch.no_grad():
            for s in range(0, x.shape[0], self.batch_size):
                sl = slice(s, s + self.batch_size)
                parts.append(margin_lower_bounds(model, x[sl], y[sl], eps_t[sl], self.norm))
        margins = torch.cat(parts) if parts else x.new_zeros(0, 0)
        others = margins.scatter(1, y.view(-1, 1), float("inf"))
        min_margin = others.min(1).values
        return Certificate(certified=min_margin > 0, margins=margins,
                           extra={"min_margin": min_margin})

    def spec(self) -> dict[str, Any]:
        return {**super().spec(), "batch_size": self.batch_size}
