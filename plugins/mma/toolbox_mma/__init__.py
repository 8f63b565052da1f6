"""toolbox-mma: MMA training (Ding et al., ICLR 2020), max-margin adversarial training.

Registered through the ``toolbox`` entry point: losses ``lm`` and ``slm``, attack ``an-pgd``
(adaptive-norm PGD + bisection, a minimal-margin estimator), defenses ``mma`` (OMMA with
``clean_weight=0``) and ``pgdls`` (PGD with a linear eps ramp), callback ``mma-margins``.
"""

from __future__ import annotations

from .anpgd import ANPGD, MarginSearch, bisect
from .defenses import MMA, PGDLS, STORE_KEY
from .losses import lm, slm
from .margins import (
           BestMargin,
           MarginTracker,
           avg_accuracies,
           grid_report,
           margin_report,
           margins,
           plot_margins,
)

__version__ = "0.1.0"

__all__ = ["ANPGD", "BestMargin", "MMA", "PGDLS", "STORE_KEY", "MarginSearch", "MarginTracker", "avg_accuracies",
           "bisect", "grid_report", "lm", "margin_report", "margins", "plot_margins", "slm", "__version__"]
