"""The ``union`` plugin module (entry point ``toolbox = union = toolbox_union.plugin``)."""

from __future__ import annotations

from pathlib import Path

import toolbox as tb
from toolbox.plugins import repro_dir as plugin_repro_dir

from .attack import MSD
from .defenses import MSDDefense, PGDAug, WorstPGD
from .foolbox_adapter import FoolboxAttack
from .threat import union


def repro_dir() -> Path:
    """The folder holding this plugin's reproduction configs (``plugins/union/repro``)."""
    return plugin_repro_dir(__file__)


@tb.hookimpl
def toolbox_register(registry) -> None:
    registry.add_threat("union", union)
    registry.add_attack("msd", MSD)
    registry.add_attack("foolbox", FoolboxAttack)
    registry.add_defense("worst-pgd", WorstPGD)
    registry.add_defense("pgd-aug", PGDAug)
    registry.add_defense("msd", MSDDefense)


@tb.hookimpl
def toolbox_repro_configs() -> list[Path]:
    """``plugins/union/repro/*.toml``: the thesis MNIST / CIFAR-10 settings and the CPU
    scale-down (``paper.quick``) that ``toolbox repro union --quick`` runs."""
    return sorted(repro_dir().glob("*.toml"))
