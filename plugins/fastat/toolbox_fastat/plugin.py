"""The ``fastat`` plugin module (entry point ``toolbox = fastat = toolbox_fastat.plugin``)."""

from __future__ import annotations

from pathlib import Path

import toolbox as tb
from toolbox.plugins import repro_dir as plugin_repro_dir

from .attacks import RFGSM, TradesKL
from .defenses import FGSMRS, PGDAT, TRADES, FGSMZero, Free, RFGSMDefense
from .overfit import RobustErrorTracker


def repro_dir() -> Path:
    """The folder holding this plugin's reproduction configs (``plugins/fastat/repro``)."""
    return plugin_repro_dir(__file__)


@tb.hookimpl
def toolbox_register(registry) -> None:
    registry.add_attack("rfgsm", RFGSM)
    registry.add_attack("trades-kl", TradesKL)
    registry.add_defense("fgsm-rs", FGSMRS)
    registry.add_defense("fgsm-zero", FGSMZero)
    registry.add_defense("rfgsm", RFGSMDefense)
    registry.add_defense("free", Free)
    registry.add_defense("pgd-at", PGDAT)
    registry.add_defense("trades", TRADES)
    registry.add_callback("robust-error-tracker", RobustErrorTracker)


@tb.hookimpl
def toolbox_repro_configs() -> list[Path]:
    """``plugins/fastat/repro/*.toml``: the paper's MNIST and CIFAR-10 settings and the CPU
    scale-down (``paper.quick``) that ``toolbox repro fastat --quick`` runs."""
    return sorted(repro_dir().glob("*.toml"))
