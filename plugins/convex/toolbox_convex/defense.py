"""The ``convex`` defense: robust cross-entropy on the dual objective (thesis ch. 3, eq. 3.13)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import toolbox as tb
from toolbox.defense import Batch, Defense
from toolbox.threat import as_threat

from .dual import margin_lower_bounds, threat_norm


def robust_cross_entropy(margins: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean ``CE(-J, y)`` for margin lower bounds ``margins`` ``(N, C)`` (0 at ``j = y``).

    An upper bound on the worst-case cross-entropy over the set (Wong & Kolter 2018, Thm. 2).
    """
    return F.cross_entropy(-margins, y)


class ConvexDefense(Defense):
    """Provable (certified) training: minimise the robust cross-entropy of the dual network.

    Args:
        eps: radius used when the Trainer has no eps schedule (``batch.eps`` wins when set).
        norm: ``"linf"`` or ``"l2"``.
        clean_weight: weight of the clean cross-entropy added to the robust one (0 = the
            thesis's pure robust loss).
        threat: a ``tb.Linf`` / ``tb.L2`` threat; when given it sets ``eps`` and ``norm``.
        projections: ``None`` (exact intermediate bounds) or ``r``, the number of random
            projections that estimate them (thesis §3.4.5; the paper trains with ``r = 50``,
            and ``r = 10`` already matches exact training on MNIST Small).  Drawn from the
            Trainer's generator (``batch.extra["generator"]``) when there is one.

    Logs ``robust_ce``, ``robust_err`` (fraction of the batch not certified) and ``clean_err``.
    """

    name = "convex"

    def __init__(self, eps: float = 0.1, norm: str = "linf", clean_weight: float = 0.0,
                 attack: Any = None, threat: Any = None, projections: int | None = None) -> None:
        super().__init__(attack)
        if threat is not None:
            thr = as_threat(threat)
            norm = threat_norm(thr)
            if isinstance(thr.eps, torch.Tensor):
                raise ValueError("threat: the convex defense needs a scalar eps")
            eps = float(thr.eps)
        if not float(eps) >= 0:
            raise ValueError(f"eps must be >= 0, got {eps}")
        if norm not in ("linf", "l2"):
            raise ValueError(f"norm must be 'linf' or 'l2', got {norm!r}")
        if not float(clean_weight) >= 0:
            raise ValueError(f"clean_weight must be >= 0, got {clean_weight}")
        if projections is not None and (isinstance(projections, bool) or int(projections) < 1):
            raise ValueError(f"projections must be None (exact) or an int >= 1, got {projections!r}")
        self.eps, self.norm, self.clean_weight = float(eps), norm, float(clean_weight)
        self.projections = None if projections is None else int(projections)
        #: the threat model it certifies against (``toolbox.defense.defense_threat`` reads it)
        self.threat = tb.Linf(self.eps) if norm == "linf" else tb.L2(self.eps)

    def spec(self) -> dict[str, Any]:
        out = {**super().spec(), "eps": self.eps, "norm": self.norm}
        if self.clean_weight:
            out["clean_weight"] = self.clean_weight
        if self.projections is not None:
            out["projections"] = self.projections
        return out

    def loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, Any]]:
        eps = self.eps if batch.eps is None else float(batch.eps)
        gen = (batch.extra or {}).get("generator") if self.projections is not None else None
        margins = margin_lower_bounds(model, batch.x, batch.y, eps, self.norm,
                                      projections=self.projections, generator=gen)
        robust = robust_cross_entropy(margins, batch.y)
        loss = robust
        logs: dict[str, Any] = {"robust_ce": robust.detach()}
        others = margins.detach().scatter(1, batch.y.view(-1, 1), float("inf"))
        logs["robust_err"] = (others.min(1).values <= 0).float().mean()
        if self.clean_weight > 0:
            logits = model(batch.x)
            loss = loss + self.clean_weight * F.cross_entropy(logits, batch.y)
        else:
            with torch.no_grad():
                logits = model(batch.x)
        logs["clean_err"] = (logits.argmax(1) != batch.y).float().mean().detach()
        return loss, logs
