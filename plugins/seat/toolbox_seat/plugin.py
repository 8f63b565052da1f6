"""Entry point of the ``toolbox-seat`` distribution (group ``toolbox``, name ``seat``)."""

from __future__ import annotations

from pathlib import Path

import toolbox as tb
from toolbox.plugins import repro_dir as plugin_repro_dir

from .attack import SEATAttack
from .callbacks import LinearityMonitor
from .defense import SEAT


@tb.hookimpl
def toolbox_register(registry):
    registry.add("attack", "seat", SEATAttack)
    registry.add("defense", "seat", SEAT)
    registry.add("callback", "linearity-monitor", LinearityMonitor)


def repro_dir() -> Path:
    """The folder holding the reproduction configs: ``plugins/seat/repro`` in a source checkout
    (editable install), else ``toolbox_seat/repro`` if it was installed as package data."""
    return plugin_repro_dir(__file__)


@tb.hookimpl
def toolbox_repro_configs():
    """``plugins/seat/repro/*.toml``: the paper's CIFAR-10 settings and the MNIST CPU scale-down."""
    return sorted(repro_dir().glob("*.toml"))
