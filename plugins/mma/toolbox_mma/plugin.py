"""The ``toolbox`` entry point of toolbox-mma: registrations and reproduction configs."""

from __future__ import annotations

from pathlib import Path

import toolbox as tb
from toolbox.plugins import repro_dir as plugin_repro_dir

from .anpgd import ANPGD
from .defenses import MMA, PGDLS
from .losses import lm, slm
from .margins import BestMargin, MarginTracker


def repro_dir() -> Path:
    """The folder holding this plugin's reproduction configs (``plugins/mma/repro``)."""
    return plugin_repro_dir(__file__)


@tb.hookimpl
def toolbox_register(registry) -> None:
    registry.add_loss("lm", lm)
    registry.add_loss("slm", slm)
    registry.add_attack("an-pgd", ANPGD)
    registry.add_defense("mma", MMA)
    registry.add_defense("pgdls", PGDLS)
    registry.add_callback("mma-margins", MarginTracker)
    registry.add_callback("mma-best-margin", BestMargin)


@tb.hookimpl
def toolbox_repro_configs() -> list[Path]:
    """``plugins/mma/repro/*.toml``: the paper's MNIST/CIFAR-10 settings and the CPU scale-down."""
    return sorted(repro_dir().glob("*.toml"))
