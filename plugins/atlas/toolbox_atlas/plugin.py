"""Entry point of the ``toolbox-atlas`` distribution (group ``toolbox``, name ``atlas``)."""

from __future__ import annotations

from pathlib import Path

import toolbox as tb
from toolbox.plugins import repro_dir as plugin_repro_dir

from .attacks import FGSMKL, MultiTargeted
from .defense import ATLAS
from .monitor import JacobianMonitor


@tb.hookimpl
def toolbox_register(registry):
    registry.add("defense", "atlas", ATLAS)
    registry.add("callback", "jacobian-monitor", JacobianMonitor)
    registry.add("attack", "multi-targeted", MultiTargeted)
    registry.add("attack", "fgsm-kl", FGSMKL)
    # the guided LR schedule is the kernel's callback "guided-lr" (toolbox/train/guided.py)


def repro_dir() -> Path:
    """``plugins/atlas/repro`` in a source checkout, else ``toolbox_atlas/repro``."""
    return plugin_repro_dir(__file__)


@tb.hookimpl
def toolbox_repro_configs():
    """``plugins/atlas/repro/*.toml``: MNIST Table 1, the MNIST CPU scale-down, CIFAR-10."""
    return sorted(repro_dir().glob("*.toml"))
