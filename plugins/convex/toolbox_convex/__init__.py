"""toolbox-convex: provable defenses with the dual network (Wong & Kolter 2018; thesis ch. 3).

Registers through the ``toolbox`` entry point:

* certifier ``dual-network`` (:class:`DualNetworkCertifier`): lower bounds on the margins
  ``z_y - z_j`` over an ℓ∞ (∩ [0, 1] box) or ℓ2 ball, exact intermediate bounds;
* defense ``convex`` (:class:`ConvexDefense`): robust cross-entropy on the dual objective,
  with exact or random-projection intermediate bounds (``projections=``).

Robust cascades: :func:`train_cascade` and :class:`Cascade` (:mod:`toolbox_convex.cascade`).

The bound itself is :func:`dual_bounds` / :func:`margin_lower_bounds` in
:mod:`toolbox_convex.dual`, differentiable in the model's parameters;
:func:`certified_radius` bisects on eps for the largest certified radius.

Dual layers (:mod:`toolbox_convex.layers`): Linear, Conv2d, Flatten, eval-mode BatchNorm,
ReLU and :class:`Residual` blocks are built in; :func:`register_dual_layer` adds others.
"""

from __future__ import annotations

__version__ = "0.2.0"

from .cascade import Cascade, self_certified, train_cascade  # noqa: E402
from .certifier import DualNetworkCertifier  # noqa: E402
from .defense import ConvexDefense, robust_cross_entropy  # noqa: E402
from .dual import (  # noqa: E402
    DualNetwork,
    certified_radius,
    dual_bounds,
    margin_lower_bounds,
    optimized_margin_bounds,
)
from .layers import (  # noqa: E402
    AffineDual,
    DualLayer,
    Residual,
    register_dual_layer,
    registered_dual_layers,
)

__all__ = [
    "AffineDual",
    "Cascade",
    "ConvexDefense",
    "DualNetwork",
    "DualLayer",
    "DualNetworkCertifier",
    "Residual",
    "certified_radius",
    "dual_bounds",
    "margin_lower_bounds",
    "optimized_margin_bounds",
    "register_dual_layer",
    "registered_dual_layers",
    "robust_cross_entropy",
    "self_certified",
    "train_cascade",
]
