"""toolbox-wasserstein: the Wasserstein threat model (Wong, Schmidt & Kolter 2019; Wong's
thesis, chapter 5, §5.1–5.2).

Registers threat model ``wasserstein`` (:class:`Wasserstein`): projection onto the Wasserstein
ball by projected Sinkhorn iterations with local (k×k) transport plans, an entropic Sinkhorn
distance as its ``norm``, and the ℓ∞ sign step of the reference attack as its ascent, so
``tb.attack("pgd", threat=Wasserstein(...))`` runs on the kernel's shared loop.  Also the
growing-radius attack ``wasserstein-pgd`` (:class:`WassersteinPGD`), adaptive-radius
adversarial training ``wasserstein-at`` (:class:`WassersteinAT`), the conjugate-Sinkhorn /
exact support function and the linear-model certifier ``wasserstein-linear``, and plots.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .attack import RadiusSearch, WassersteinPGD, accuracy_vs_eps, plot_accuracy_vs_eps  # noqa: E402
from .certify import (  # noqa: E402
    ConjugateResult,
    LinearCertifier,
    conjugate_sinkhorn,
    wasserstein_support,
)
from .defense import WassersteinAT  # noqa: E402
from .plot import perturbation_grid  # noqa: E402
from .sinkhorn import (  # noqa: E402
    lambertw_exp,
    local_cost,
    projected_sinkhorn,
    sinkhorn_distance,
    wasserstein_lp,
)
from .threat import Wasserstein  # noqa: E402

__all__ = ["__version__", "Wasserstein", "WassersteinPGD", "WassersteinAT", "RadiusSearch",
           "LinearCertifier", "ConjugateResult", "accuracy_vs_eps", "plot_accuracy_vs_eps",
           "perturbation_grid", "conjugate_sinkhorn", "wasserstein_support", "lambertw_exp",
           "local_cost", "projected_sinkhorn", "sinkhorn_distance", "wasserstein_lp"]
