"""ATLAS: adversarial training via local stability (CE at the adversary x', a Jacobian
Frobenius-norm penalty at x' estimated by random projections, and KL(p(x') || p(x)))."""

from .attacks import FGSMKL, MultiTargeted, target_margin
from .defense import ATLAS, atlas_loss, fgsm_rs_attack, kl_adv_clean
from .jacobian import jacobian_frobenius, jacobian_norm_sq
from .monitor import JacobianMonitor, plot_co_monitor

__version__ = "0.2.0"

__all__ = ["ATLAS", "FGSMKL", "JacobianMonitor", "MultiTargeted", "target_margin", "atlas_loss", "fgsm_rs_attack", "jacobian_frobenius",
           "jacobian_norm_sq", "kl_adv_clean", "plot_co_monitor"]
