"""Plot of the catastrophic-overfitting diagnostic: linearity error and PGD accuracy."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import pandas as pd
from matplotlib.figure import Figure

__all__ = ["linearity_curves"]


def linearity_curves(runs: Mapping[str, Any], path: str | os.PathLike | None = None, *,
                     x: str = "epoch") -> Figure:
    """Two panels: the linearity error ``lin_err`` (log scale) and ``lin_pgd_acc`` against
    training progress, one line per run.

    ``runs``: label -> a DataFrame / list of records with columns ``lin_err`` and optionally
    ``lin_pgd_acc`` (a :class:`~toolbox_seat.LinearityMonitor`'s :meth:`dataframe` or a Trainer
    history).  ``x``: the column for the x axis (``epoch`` or ``step``).  ``path``: also save the
    figure (PNG unless the suffix says otherwise).  Returns the Figure.
    """
    if not isinstance(runs, Mapping) or not runs:
        raise ValueError("runs must be a non-empty mapping label -> records")
    fig = Figure(figsize=(9, 3.4))
    ax_g, ax_a = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    for label, rec in runs.items():
        df = rec if isinstance(rec, pd.DataFrame) else pd.DataFrame(list(rec))
        if "lin_err" not in df.columns:
            raise ValueError(f"run {label!r} has no 'lin_err' column (columns: {list(df.columns)})")
        xs = df[x] if x in df.columns else pd.Series(range(len(df)))
        (line,) = ax_g.plot(xs, df["lin_err"].clip(lower=1e-8), marker="o", markersize=3, label=str(label))
        if "lin_pgd_acc" in df.columns:
            ax_a.plot(xs, df["lin_pgd_acc"], marker="o", markersize=3, color=line.get_color(), label=str(label))
    ax_g.set_yscale("log")
    ax_g.set_title("linearity error g(δ_FGSM; x) (held batch)", fontsize=9)
    ax_a.set_title("PGD accuracy (held batch)", fontsize=9)
    ax_a.set_ylim(-0.02, 1.02)
    for ax in (ax_g, ax_a):
        ax.set_xlabel(x, fontsize=8)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    if path is not None:
        from toolbox.plot import save

        save(fig, path)
    return fig
