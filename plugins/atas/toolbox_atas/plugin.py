"""The ``toolbox`` entry point of toolbox-atas: registrations and reproduction configs."""

from __future__ import annotations

from pathlib import Path

import toolbox as tb

from .defenses import ATAS, ATTA
from .diagnostics import GradNormStats


def repro_dir() -> Path:
    """The folder holding this plugin's reproduction configs (``plugins/atas/repro``)."""
    here = Path(__file__).resolve().parent
    for cand in (here.parent / "repro", here / "repro"):
        if cand.is_dir():
            return cand
    return here.parent / "repro"


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
