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
    smallest bound over ``j != y``.  By default the intermediate bounds are exact, so cost
    and memory grow with the number of hidden units times the batch.

    Args:
        threat: ``tb.Linf`` (ball ∩ [0, 1] box) or ``tb.L2`` (the ball alone).
        batch_size: examples per dual-network pass (memory control).
        projections: ``None`` (default, sound) or ``r``: estimate the intermediate bounds with
            ``r`` random projections (median estimator).  Linear instead of quadratic cost in
            the width, but the flags are then *estimates*, not certificates (the thesis trains
            with projections and certifies exactly); meant for speed comparisons and for
            monitoring during training.
        seed: seed of the projections (``None``: the global generator).

    A :class:`~toolbox_convex.cascade.Cascade` is refused: its per-stage certificates are not a
    certificate of the composite classifier (use ``Cascade.certify``).
    """

    name = "dual-network"

    def __init__(self, threat: Any, batch_size: int = 64, projections: int | None = None,
                 seed: int | None = 0) -> None:
        super().__init__(threat)
        self.norm = threat_norm(self.threat)
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if projections is not None and (isinstance(projections, bool) or int(projections) < 1):
            raise ValueError(f"projections must be None (exact) or an int >= 1, got {projections!r}")
        self.batch_size = int(batch_size)
        self.projections = None if projections is None else int(projections)
        self.seed = seed

    def certify(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Certificate:
        from .cascade import Cascade

        if isinstance(model, Cascade):
            raise ValueError("model: a Cascade's per-stage certificates do not certify the composite "
                             "classifier (a perturbed input can be routed to another stage); score "
                             "it with Cascade.certify(x, y), the paper's cascade figure")
        eps = self.threat.eps
        eps_t = torch.as_tensor(eps, dtype=x.dtype, device=x.device)
        if eps_t.dim() == 0:
            eps_t = eps_t.expand(x.shape[0])
        parts = []
        gen = None
        if self.projections is not None and self.seed is not None:
            gen = torch.Generator(device=x.device).manual_seed(int(self.seed))
        with torch.no_grad():
            for s in range(0, x.shape[0], self.batch_size):
                sl = slice(s, s + self.batch_size)
                parts.append(margin_lower_bounds(model, x[sl], y[sl], eps_t[sl], self.norm,
                                                 projections=self.projections, generator=gen))
        margins = torch.cat(parts) if parts else x.new_zeros(0, 0)
        others = margins.scatter(1, y.view(-1, 1), float("inf"))
        min_margin = others.min(1).values
        return Certificate(certified=min_margin > 0, margins=margins,
                           extra={"min_margin": min_margin})

    def spec(self) -> dict[str, Any]:
        out = {**super().spec(), "batch_size": self.batch_size}
        if self.projections is not None:
            out.update(projections=self.projections, seed=self.seed)
        return out
