"""Per-norm evaluation like the thesis's Tables 5.2–5.3: robust accuracy per attack, per norm
(the per-example worst case over that norm's attacks) and over all attacks (the per-example
worst case over every norm), all from one :func:`toolbox.evaluate` call."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd
import torch

import toolbox as tb

from .attack import as_union
from .defenses import norm_attacks
from .foolbox_adapter import FOOLBOX_SUITE, foolbox_attacks

__all__ = ["norm_suite", "union_report", "ALL"]

#: row name of the all-attacks (all-norms) worst case
ALL = "all attacks"


def norm_suite(threat: Any, *, steps: int | Sequence[int] = (100, 200, 100), step_size: Any = None,
               restarts: int = 10, extra: bool = False, foolbox: bool = False,
               foolbox_kwargs: Mapping[str, Mapping[str, Any]] | None = None,
               seed: int | None = None) -> dict[str, dict[str, tb.Attack]]:
    """The evaluation attacks per norm: ``{norm: {attack name: Attack}}``.

    Per component of ``threat`` (a Union or a list of threat models, e.g. the thesis MNIST
    radii ``[tb.Linf(0.3), tb.L2(1.5), tb.L1(12)]``) one kernel PGD (``steps`` and ``step_size``
    one for all norms or one per norm; defaults: the thesis test iterations 100/200/100 and
    ``2.5 eps/steps``) with ``restarts`` random restarts (thesis: 10).  ``extra`` adds FGSM
    (ℓ∞) and APGD-CE (ℓ∞ and ℓ2).  ``foolbox=True`` adds the thesis's foolbox attacks of each
    norm (:data:`~toolbox_union.FOOLBOX_SUITE`, named ``"fb-<method>"``, each with
    ``restarts`` except Boundary; needs the optional ``foolbox==3.3.4`` when run);
    ``foolbox_kwargs``: per foolbox method, constructor arguments (e.g. ``{"boundary":
    {"steps": 1000}}``).
    """
    u = as_union(threat)
    pgds = norm_attacks(u, steps=steps, step_size=step_size, restarts=restarts, seed=seed)
    out: dict[str, dict[str, tb.Attack]] = {}
    for t, (group, pgd) in zip(u.threats, pgds.items(), strict=True):
        g = {"pgd": pgd}
        if extra and t.name == "linf":
            g["fgsm"] = tb.attack("fgsm", threat=t, seed=seed)
        if extra and t.name in ("linf", "l2"):
            g["apgd-ce"] = tb.attack("apgd-ce", threat=t, seed=seed)
        if foolbox and t.name in FOOLBOX_SUITE:
            g.update(foolbox_attacks(t, restarts=restarts, attack_kwargs=foolbox_kwargs, seed=seed))
        out[group] = g
    return out


def union_report(model: torch.nn.Module, data: Any, suite: Mapping[str, Mapping[str, tb.Attack]], *,
                 n: int | None = None, batch_size: int = 250, seed: int = 0,
                 progress: bool | None = False, **kw: Any) -> pd.DataFrame:
    """Robust accuracy per attack, per norm and over all norms.

    Args:
        model: images ``(N, C, H, W)`` in [0, 1] -> logits.
        data: anything :func:`toolbox.evaluate` accepts.
        suite: ``{norm group: {attack name: Attack}}`` (e.g. :func:`norm_suite`); groups and
            attack names may not contain ``"/"``.
        n, batch_size, seed, progress, kw: passed to :func:`toolbox.evaluate`.

    Returns:
        A DataFrame indexed by row name with columns ``group`` (norm group, ``""`` for clean and
        all), ``kind`` (``clean`` / ``attack`` / ``norm`` / ``all``) and ``accuracy`` (fraction),
        ``correct``, ``n``.  Rows: ``"clean"``; ``"<group>/<attack>"`` per attack; ``"<group>"``
        per norm (per-example worst case over the group's attacks, clean included); ``"all
        attacks"`` (worst case over every attack).  ``attrs["per_example"]`` holds the boolean
        per-example table, ``attrs["evaluate"]`` the underlying :func:`toolbox.evaluate` report.
    """
    if not isinstance(suite, Mapping) or not suite:
        raise ValueError(f"suite must be a non-empty dict {{norm: {{name: Attack}}}}, got {suite!r}")
    flat: dict[str, tb.Attack] = {}
    for g, atks in suite.items():
        if not isinstance(atks, Mapping) or not atks:
            raise ValueError(f"suite[{g!r}] must be a non-empty dict of attacks, got {atks!r}")
        for name, a in atks.items():
            if "/" in str(g) or "/" in str(name):
                raise ValueError(f"suite names may not contain '/': {g!r}/{name!r}")
            flat[f"{g}/{name}"] = a
    rep = tb.evaluate(model, data, flat, n=n, batch_size=batch_size, seed=seed, per_example=True,
                      progress=progress, **kw)
    pe = rep.attrs["per_example"]
    total = len(pe)
    rows = []

    def row(name: str, group: str, kind: str, ok: Any) -> None:
        c = int(ok.sum())
        rows.append({"name": name, "group": group, "kind": kind, "accuracy": c / max(total, 1),
                     "correct": c, "n": total})

    clean = pe["clean_correct"].astype(bool)
    row("clean", "", "clean", clean)
    all_ok = clean.copy()
    for g, atks in suite.items():
        g_ok = clean.copy()
        for name in atks:
            col = pe[f"{g}/{name}"].astype(bool) & clean
            row(f"{g}/{name}", str(g), "attack", col)
            g_ok &= col
        row(str(g), str(g), "norm", g_ok)
        all_ok &= g_ok
    row(ALL, "", "all", all_ok)
    out = pd.DataFrame(rows).set_index("name")
    out.attrs["per_example"] = pe
    out.attrs["evaluate"] = rep
    out.attrs["warnings"] = rep.attrs.get("warnings", [])
    return out
