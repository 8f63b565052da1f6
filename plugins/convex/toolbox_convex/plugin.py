"""The ``convex`` plugin module (entry point ``toolbox = convex = toolbox_convex.plugin``)."""

from __future__ import annotations

import toolbox as tb

from .certifier import DualNetworkCertifier
from .defense import ConvexDefense
from .models import wide


@tb.hookimpl
def toolbox_register(registry) -> None:
    registry.add_certifier("dual-network", DualNetworkCertifier)
    registry.add_defense("convex", ConvexDefense)
    registry.add_model("convex-wide", wide,
                       doc="Wide(k) of Wong et al. 2018: conv4k-4x4-s2, conv8k-4x4-s2, fc128k, fc10")
