"""The ``wasserstein`` plugin module (entry point ``toolbox = wasserstein = toolbox_wasserstein.plugin``)."""

from __future__ import annotations

from pathlib import Path

import toolbox as tb
from toolbox.plugins import repro_dir as plugin_repro_dir

from .attack import WassersteinPGD
from .certify import LinearCertifier
from .defense import WassersteinAT
from .models import binarized
from .threat import Wasserstein


@tb.hookimpl
def toolbox_register(registry) -> None:
    registry.add_threat("wasserstein", Wasserstein)
    registry.add_attack("wasserstein-pgd", WassersteinPGD)
    registry.add_defense("wasserstein-at", WassersteinAT)
    registry.add_certifier("wasserstein-linear", LinearCertifier)
    registry.add_model("mnist-small-binarized", binarized)


def repro_dir() -> Path:
    """The folder holding this plugin's reproduction configs (``plugins/wasserstein/repro``)."""
    return plugin_repro_dir(__file__)


@tb.hookimpl
def toolbox_repro_configs() -> list[Path]:
    """``plugins/wasserstein/repro/*.toml``: the thesis's MNIST / CIFAR-10 settings and the
    MNIST CPU scale-down (``paper.quick``) that ``toolbox repro wasserstein --quick`` runs."""
    return sorted(repro_dir().glob("*.toml"))
