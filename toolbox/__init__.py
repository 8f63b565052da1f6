"""toolbox: a small PyTorch kernel for adversarial robustness, extended by plugins.

>>> import toolbox as tb
>>> tm = tb.Linf(eps=0.3)
>>> atk = tb.attack("pgd", threat=tm, steps=50, step_size=0.01, restarts=5)
>>> report = tb.evaluate(model, test_data, attacks={"pgd50": atk}, n=1000)   # doctest: +SKIP
"""

from __future__ import annotations

__version__ = "0.1.0"

from . import losses  # noqa: E402
from .attacks import Attack, attack, attack_mode  # noqa: E402
from .certify import Certificate, Certifier, certifier  # noqa: E402
from .defense import Batch, Defense, defense  # noqa: E402
from .hookspecs import hookimpl, hookspec  # noqa: E402  (plugins import these first)
from .plugins import PluginLoadWarning, names, plugins  # noqa: E402
from .registry import DuplicateNameError, Registry, UnknownNameError  # noqa: E402
from .threat import L1, L2, Linf, LpBall, ThreatModel, threat  # noqa: E402

__all__ = [
    "__version__", "hookimpl", "hookspec", "Registry", "UnknownNameError", "DuplicateNameError",
    "ThreatModel", "LpBall", "Linf", "L2", "L1", "threat", "Attack", "attack", "attack_mode",
    "Defense", "Batch", "defense", "Certifier", "Certificate", "certifier", "names", "plugins",
    "PluginLoadWarning", "losses", "evaluate", "robustness_curve", "Trainer", "data", "models",
]

_LAZY = {
    "evaluate": ("toolbox.eval", "evaluate"),
    "robustness_curve": ("toolbox.eval", "robustness_curve"),
    "Trainer": ("toolbox.train", "Trainer"),
    "data": ("toolbox.data", None),
    "models": ("toolbox.models", None),
    "plot": ("toolbox.plot", None),
    "train": ("toolbox.train", None),
}


def __getattr__(name: str):
    """Import the heavier sub-modules (pandas, matplotlib, the Trainer) on first use."""
    if name in _LAZY:
        import importlib

        mod, attr = _LAZY[name]
        m = importlib.import_module(mod)
        value = m if attr is None else getattr(m, attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'toolbox' has no attribute {name!r}")
