"""The ``convex`` plugin module (entry point ``toolbox = convex = toolbox_convex.plugin``)."""

from __future__ import annotations

import toolbox as tb

from .certifier import DualNetworkCertifier
from .defense import ConvexDefense


@tb.hookimpl
def toolbox_register(registry) -> None:
    registry.add_certifier("dual-network", DualNetworkCertifier)
    registry.add_defense("convex", ConvexDefense)
