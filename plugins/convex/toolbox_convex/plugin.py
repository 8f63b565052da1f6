"""The ``convex`` plugin module (entry point ``toolbox = convex = toolbox_convex.plugin``)."""

from __future__ import annotations

from pathlib import Path

import toolbox as tb
from toolbox.plugins import repro_dir

from .certifier import DualNetworkCertifier
from .defense import ConvexDefense
from .models import small, wide


@tb.hookimpl
def toolbox_register(registry) -> None:
    registry.add_certifier("dual-network", DualNetworkCertifier)
    registry.add_defense("convex", ConvexDefense)
    registry.add_model("convex-small", small,
                       doc="Small of Wong et al. 2018: conv16-4x4-s2, conv32-4x4-s2, fc100, fc10 (image_size)")
    registry.add_model("convex-wide", wide,
                       doc="Wide(k) of Wong et al. 2018: conv4k-4x4-s2, conv8k-4x4-s2, fc128k, fc10")


@tb.hookimpl
def toolbox_repro_configs() -> list[Path]:
    """``plugins/convex/repro/*.toml``: the MNIST CPU scale-down (``paper.quick``) and the
    paper's MNIST / CIFAR-10 settings (GPU), each with its exact ``certified`` row
    (``[eval.certifiers]``) among the ``[paper.expect]`` figures: ``toolbox repro convex``."""
    return sorted(repro_dir(__file__).glob("*.toml"))
