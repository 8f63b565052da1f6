"""toolbox-fastat: fast adversarial training and its two failure modes (thesis ch. 4).

Registers through the ``toolbox`` entry point:

* defenses ``fgsm-rs``, ``fgsm-zero``, ``rfgsm``, ``free``, ``pgd-at``, ``trades`` (all take
  ``attack=``, ``mixup=``, ``cutout=``);
* attacks ``rfgsm`` (R+FGSM) and ``trades-kl`` (TRADES' KL maximiser);
* callback ``robust-error-tracker`` (per-epoch robust test error);
* reproduction configs under ``plugins/fastat/repro`` (``toolbox repro fastat [--quick]``).

Tools: :mod:`toolbox_fastat.overfit` (catastrophic-overfitting experiment, robust-overfitting
bookkeeping, plots) and :mod:`toolbox_fastat.augment` (mixup, cutout).
"""

from __future__ import annotations

__version__ = "0.1.0"

from .attacks import RFGSM, TradesKL, kl_to_clean  # noqa: E402
from .augment import InsideCutout, cutout, draw_mixup, mixed_ce, with_mixed_loss  # noqa: E402
from .defenses import (  # noqa: E402
    FGSMRS,
    PGDAT,
    TRADES,
    FastDefense,
    FGSMZero,
    Free,
    RFGSMDefense,
    free_epochs,
    trades_loss,
)

__all__ = [
    "__version__", "RFGSM", "TradesKL", "kl_to_clean", "InsideCutout", "cutout", "draw_mixup",
    "mixed_ce", "with_mixed_loss", "FastDefense", "FGSMRS", "FGSMZero", "RFGSMDefense", "PGDAT",
    "Free", "TRADES", "free_epochs", "trades_loss",
]
