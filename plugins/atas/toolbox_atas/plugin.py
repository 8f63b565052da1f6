"""The ``toolbox`` entry point of toolbox-atas: registrations and reproduction configs."""

from __future__ import annotations

from pathlib import Path

import toolbox as tb
from toolbox.plugins import repro_dir as plugin_repro_dir

from .defenses import ATAS, ATTA
from .diagnostics import GradNormStats


def repro_dir() -> Path:
    """The folder holding this plugin's reproduction configs (``plugins/atas/repro``)."""
    return plugin_repro_dir(__file__)


@tb.hookimpl
def toolbox_register(registry) -> None:
    registry.add_defense("atta", ATTA)
    registry.add_defense("atas", ATAS)
    registry.add_callback("atas-gradnorm", GradNormStats)


@tb.hookimpl
def toolbox_repro_configs() -> list[Path]:
    """``plugins/atas/repro/*.toml``: the paper's CIFAR-10 PreActResNet-18 settings (GPU) and
    the MNIST CPU scale-downs (``paper.quick``) that ``toolbox repro atas --quick`` runs."""
    return sorted(repro_dir().glob("*.toml"))
