"""The Certifier interface: provable lower bounds for the same ThreatModel the attacks use.

A certifier answers, per example, whether no point of ``threat``'s ball around ``x`` can
change the prediction from ``y``.  Attacks give an upper bound on robust accuracy; a
certifier gives a lower bound; :func:`toolbox.evaluate` reports both side by side.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ._checks import check_images, check_labels, check_logits
from .attacks.base import attack_mode
from .threat import ThreatModel, as_threat


@dataclass
class Certificate:
    """Per-example result of a certifier.

    ``certified`` ``(N,)`` bool; ``margins`` ``(N, C)`` lower bounds on ``z_y - z_j`` over the
    ball (``+inf`` or 0 at ``j = y``), or ``None`` when the method gives only flags;
    ``extra`` method-specific diagnostics.
    """

    certified: torch.Tensor
    margins: torch.Tensor | None = None
    extra: dict[str, Any] | None = None

    @property
    def accuracy(self) -> float:
        return self.certified.float().mean().item() if self.certified.numel() else float("nan")


class Certifier:
    """Base class: ``cert = certifier(model, x, y)``.  Subclasses implement :meth:`certify`.

    The model is put in eval mode with frozen parameters for the duration (the same context
    manager as attacks).  A certifier must be sound: ``certified[i]`` implies that every point
    of the ball ∩ box around ``x[i]`` is classified as ``y[i]``.  Each certifier's own tests
    must check this against strong attacks (no certified example may be broken), and
    :func:`toolbox.evaluate` places certified rows beside attack rows so it stays visible.
    """

    name: str = "certifier"

    def __init__(self, threat: ThreatModel) -> None:
        self.threat = as_threat(threat)

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Certificate:
        check_images(x, "x")
        with attack_mode(model), torch.no_grad():
            logits = check_logits(model(x[:1]), 1)
        check_labels(y, x.shape[0], "y", num_classes=logits.shape[1])
        with attack_mode(model):
            return self.certify(model, x, y)

    def certify(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Certificate:
        raise NotImplementedError

    def spec(self) -> dict[str, Any]:
        return {"certifier": self.name, **self.threat.spec()}


def certifier(name: str, /, threat: Any = None, **kwargs: Any) -> Certifier:
    """Build a registered certifier: ``tb.certifier("dual-network", threat=tb.Linf(0.1))``."""
    from .plugins import registry

    factory = registry().get("certifier", name)
    if threat is None:
        raise ValueError(f"certifier {name!r} needs threat=, e.g. threat=tb.Linf(eps=0.1)")
    return factory(as_threat(threat), **kwargs)
