"""Builtin attacks, registered through the same ``toolbox_register`` hook as any plugin.

===========  ============================================================
``fgsm``     one signed step (optionally from a random start)
``pgd``      projected gradient descent with restarts, targeted mode
``apgd``     Auto-PGD with any loss
``apgd-ce``  APGD on cross-entropy
``apgd-dlr`` APGD on the DLR loss
``apgd-t``   targeted APGD on the targeted DLR loss (9 target classes)
===========  ============================================================
"""

from __future__ import annotations

from functools import partial
from typing import Any

from ..hookspecs import hookimpl
from .apgd import APGD, APGDRule
from .base import Attack, Signed, attack_mode, iterate
from .fgsm import FGSM
from .pgd import PGD

__all__ = ["Attack", "FGSM", "PGD", "APGD", "APGDRule", "Signed", "attack_mode", "iterate", "attack"]


def _variant(cls: type, doc: str, **fixed: Any):
    f = partial(cls, **fixed)
    f.__doc__ = doc
    return f


def attack(name: str, /, threat: Any = None, **kwargs: Any) -> Attack:
    """Build a registered attack: ``tb.attack("pgd", threat=tb.Linf(0.3), steps=50)``.

    ``threat`` may be a ThreatModel, a ``("linf", 0.3)`` pair or a ``{"name":..., "eps":...}``
    dict.  Unknown names raise a ``KeyError`` listing the available attacks.
    """
    from ..plugins import registry
    from ..threat import as_threat

    factory = registry().get("attack", name)
    if threat is None:
        raise ValueError(f"attack {name!r} needs threat=, e.g. threat=tb.Linf(eps=0.3)")
    return factory(as_threat(threat), **kwargs)


@hookimpl
def toolbox_register(registry) -> None:
    registry.add_attack("fgsm", FGSM)
    registry.add_attack("pgd", PGD)
    registry.add_attack("apgd", APGD)
    registry.add_attack("apgd-ce", _variant(APGD, "APGD on the cross-entropy loss.", loss="ce"))
    registry.add_attack("apgd-dlr", _variant(APGD, "APGD on the DLR loss.", loss="dlr"))
    registry.add_attack("apgd-t", _variant(
        APGD, "Targeted APGD on the targeted DLR loss against the 9 most likely wrong classes.",
        loss="dlr", targeted=True))
