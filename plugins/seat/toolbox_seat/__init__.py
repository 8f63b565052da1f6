"""toolbox-seat: SEAT, stable and efficient adversarial training through local linearisation
(the ``seat`` attack and defense, the linearity error ``g`` and a CO-diagnostics callback)."""

from __future__ import annotations

__version__ = "0.1.0"

from .attack import (
                        SEATAttack,
                        SEATStep,
                        clean_loss_and_grad,
                        max_linearity_error,
                        random_vertex,
                        seat_perturb,
)
from .callbacks import LinearityMonitor, measure_linearity
from .defense import SEAT, flood
from .linearity import (
                        REDUCTIONS,
                        attack_loss,
                        linear_residual,
                        linearity_error,
                        local_linearity_error,
                        max_margin,
                        reduce_residual,
)

__all__ = ["__version__", "SEATAttack", "SEATStep", "seat_perturb", "random_vertex", "clean_loss_and_grad",
           "max_linearity_error", "SEAT", "flood", "LinearityMonitor", "measure_linearity", "REDUCTIONS", "attack_loss",
           "linear_residual", "linearity_error", "local_linearity_error", "max_margin", "reduce_residual"]
