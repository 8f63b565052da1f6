"""toolbox-atas: ATAS (adaptive step size, Huang et al. 2023) and ATTA (Zheng et al. 2020).

Single-step adversarial training that starts each example's FGSM step from the perturbation
its previous visit produced, kept in the Trainer's per-example store; ATAS also adapts the
step per example to a running average of its input-gradient norm.  Registered through the
``toolbox`` entry point: defenses ``atta`` and ``atas``, callback ``atas-gradnorm``.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .defenses import ATAS, ATTA, GRAD_SCALES, store_bytes_per_example  # noqa: E402
from .diagnostics import GradNormStats, long_tail, plot_gradnorm  # noqa: E402

__all__ = ["ATAS", "ATTA", "GRAD_SCALES", "GradNormStats", "long_tail", "plot_gradnorm",
           "store_bytes_per_example", "__version__"]
