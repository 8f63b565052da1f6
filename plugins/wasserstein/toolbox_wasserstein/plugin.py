"""The ``wasserstein`` plugin module (entry point ``toolbox = wasserstein = toolbox_wasserstein.plugin``)."""

from __future__ import annotations

import toolbox as tb

from .attack import WassersteinPGD
from .threat import Wasserstein


@tb.hookimpl
def toolbox_register(registry) -> None:
    registry.add_threat("wasserstein", Wasserstein)
    registry.add_attack("wasserstein-pgd", WassersteinPGD)
