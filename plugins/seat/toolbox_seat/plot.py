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
    """The linearity error (log scale) and ``lin_pgd_acc`` against training progress, one line per
    run: panels ``lin_err`` (g of the FGSM δ), ``lin_err_max`` (g maximised over the ball; only
    when some run has it) and PGD accuracy.

    ``runs``: label -> a DataFrame / list of records with columns ``lin_err`` and optionally
    ``lin_err_max``, ``lin_pgd_acc`` (a :class:`~toolbox_seat.LinearityMonitor`'s
    :meth:`dataframe` or a Trainer history).  ``x``: the column for the x axis (``epoch`` or
    ``step``).  ``path``: also save the figure (PNG unless the suffix says otherwise).  Returns the
    Figure (2 or 3 axes).
    """
    if not isinstance(runs, Mapping) or not runs:
        raise ValueError("runs must be a non-empty mapping label -> records")
    dfs = {}
    for label, rec in runs.items():
        df = rec if isinstance(rec, pd.DataFrame) else pd.DataFrame(list(rec))
        if "lin_err" not in df.columns:
            raise ValueError(f"run {label!r} has no 'lin_err' column (columns: {list(df.columns)})")
        dfs[label] = df
    with_max = any("lin_err_max" in df.columns for df in dfs.values())
    n = 3 if with_max else 2
    fig = Figure(figsize=(4.5 * n, 3.4))
    axes = [fig.add_subplot(1, n, i + 1) for i in range(n)]
    ax_g, ax_a = axes[0], axes[-1]
    ax_m = axes[1] if with_max else None
    for label, df in dfs.items():
        xs = df[x] if x in df.columns else pd.Series(range(len(df)))
        kw = {"marker": "o", "markersize": 3, "label": str(label)}
        (line,) = ax_g.plot(xs, df["lin_err"].clip(lower=1e-8), **kw)
        kw["color"] = line.get_color()
        if ax_m is not None and "lin_err_max" in df.columns:
            ax_m.plot(xs, df["lin_err_max"].clip(lower=1e-8), **kw)
        if "lin_pgd_acc" in df.columns:
            ax_a.plot(xs, df["lin_pgd_acc"], **kw)
    ax_g.set_yscale("log")
    ax_g.set_title("g(δ_FGSM; x) (held batch)", fontsize=9)
    if ax_m is not None:
        ax_m.set_yscale("log")
        ax_m.set_title("max over the ε-ball of g(δ; x) (held batch)", fontsize=9)
    ax_a.set_title("PGD accuracy (held batch)", fontsize=9)
    ax_a.set_ylim(-0.02, 1.02)
    for ax in axes:
        ax.set_xlabel(x, fontsize=8)
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    if path is not None:
        from toolbox.plot import save

        save(fig, path)
    return fig
