"""toolbox-union: adversarial robustness to a union of threat models (thesis ch. 5, §5.3–5.4;
Maini, Wong & Kolter 2020).

Registers through the ``toolbox`` entry point:

* threat model ``union`` (:class:`Union`: membership in any ball, exact projection onto the
  union, and the MSD step as its ``step``);
* attack ``msd`` (multi steepest descent on the kernel's shared loop) and attack ``foolbox``
  (a foolbox 3 attack projected into a threat model; foolbox is optional);
* defenses ``worst-pgd`` (Adv_max), ``pgd-aug`` (Adv_avg) and ``msd`` (MSD adversarial training);
* reproduction configs under ``plugins/union/repro`` (``toolbox repro union [--quick]``).

Evaluation per norm: :func:`norm_suite` and :func:`union_report` (per attack, per norm and
"all attacks", each the per-example worst case); the thesis's foolbox attacks through the optional
adapter :class:`FoolboxAttack` (attack ``foolbox``; ``norm_suite(..., foolbox=True)``).
"""

from __future__ import annotations

__version__ = "0.1.0"

from .attack import MNIST_MSD_STEPS, MNIST_THREATS, MSD, as_union  # noqa: E402
from .defenses import MSDDefense, PGDAug, UnionDefense, WorstPGD, norm_attacks  # noqa: E402
from .evaluation import ALL, norm_suite, union_report  # noqa: E402
from .foolbox_adapter import FOOLBOX_ATTACKS, FOOLBOX_SUITE, FoolboxAttack, foolbox_attacks  # noqa: E402
from .threat import Union, union  # noqa: E402

__all__ = [
    "__version__", "Union", "union", "MSD", "as_union", "MNIST_THREATS", "MNIST_MSD_STEPS",
    "UnionDefense", "WorstPGD", "PGDAug", "MSDDefense", "norm_attacks", "norm_suite",
    "union_report", "ALL", "FoolboxAttack", "FOOLBOX_ATTACKS", "FOOLBOX_SUITE", "foolbox_attacks",
]
