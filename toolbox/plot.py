"""Plots: robustness curves and training curves.

Figures are built with ``matplotlib.figure.Figure`` directly, never through ``pyplot``: no
window opens, no global figure list grows, and it works on any backend (Agg or none).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from ._io import atomic_write

__all__ = ["robustness_curve", "training_curves", "save"]


def robustness_curve(df: pd.DataFrame, ax: Axes | None = None, label: str | None = None) -> Figure:
    """Accuracy against eps from :func:`toolbox.robustness_curve`'s DataFrame.

    ``df`` needs columns ``eps`` and ``accuracy`` (fractions in [0, 1]); a
    ``certified_accuracy`` column is drawn dashed beside it.  ``ax``: draw into these axes (to
    overlay several curves); otherwise a new figure.  ``label``: legend entry (default the
    attack's name from ``df.attrs``).  Returns the Figure.
    """
    if not isinstance(df, pd.DataFrame):
        raise ValueError(f"df must be a pandas DataFrame, got {type(df).__name__}")
    missing = [c for c in ("eps", "accuracy") if c not in df.columns]
    if missing:
        raise ValueError(f"df must have columns 'eps' and 'accuracy', missing {missing}")
    if ax is None:
        fig = Figure(figsize=(5, 3.6))
        ax = fig.add_subplot(1, 1, 1)
    else:
        fig = ax.get_figure()
    d = df.sort_values("eps")
    name = label if label is not None else str(df.attrs.get("attack", "attack"))
    (line,) = ax.plot(d["eps"], d["accuracy"], marker="o", label=name)
    if "certified_accuracy" in d.columns:
        ax.plot(d["eps"], d["certified_accuracy"], marker="s", linestyle="--", color=line.get_color(),
                label=f"{name} (certified)")
    threat = df.attrs.get("threat")
    ax.set_xlabel(f"eps ({threat})" if threat else "eps")
    ax.set_ylabel("accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _numeric(series: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series)


def training_curves(history: Any, path: str | os.PathLike | None = None,
                    columns: Sequence[str] | None = None) -> Figure:
    """Every numeric column of a Trainer history against epoch, one small panel each.

    ``history``: the DataFrame of ``Trainer.fit`` (or a list of row dicts); its ``epoch``
    column (0-based) gives the x axis as epochs completed (``epoch + 1``), otherwise the row
    number.  ``columns``: the columns to draw (default every numeric column but ``epoch``).
    ``path``: also save the figure there (format from the suffix, PNG without one).
    Returns the Figure.
    """
    df = history if isinstance(history, pd.DataFrame) else pd.DataFrame(list(history))
    if columns is None:
        cols = [c for c in df.columns if c != "epoch" and _numeric(df[c])]
    else:
        cols = list(columns)
        unknown = [c for c in cols if c not in df.columns]
        if unknown:
            raise ValueError(f"columns {unknown} are not in the history (it has {list(df.columns)})")
        bad = [c for c in cols if not _numeric(df[c])]
        if bad:
            raise ValueError(f"columns {bad} are not numeric")
    x = (df["epoch"] + 1) if "epoch" in df.columns else pd.Series(range(1, len(df) + 1))
    k = max(len(cols), 1)
    ncols = min(3, k)
    nrows = math.ceil(k / ncols)
    fig = Figure(figsize=(3.2 * ncols, 2.4 * nrows))
    if not cols:
        ax = fig.add_subplot(1, 1, 1)
        ax.text(0.5, 0.5, "no numeric columns yet", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
    for i, c in enumerate(cols):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        ax.plot(x, df[c], marker="o", markersize=3)
        ax.set_title(str(c), fontsize=9)
        ax.set_xlabel("epoch", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(True, alpha=0.3)
    fig.tight_layout()
    if path is not None:
        save(fig, path)
    return fig


def save(fig: Figure, path: str | os.PathLike, *, dpi: int = 120) -> Path:
    """Write ``fig`` to ``path`` (parent folders created; format from the suffix, PNG without
    one), atomically: a temporary file in the same folder, then ``os.replace``.  Returns the path."""
    if not isinstance(fig, Figure):
        raise ValueError(f"fig must be a matplotlib Figure, got {type(fig).__name__}")
    if not isinstance(path, (str, os.PathLike)) or not str(path):
        raise ValueError(f"path must be a file path, got {path!r}")
    out = Path(path)
    fmt = out.suffix[1:].lower() or "png"
    return atomic_write(out, lambda tmp: fig.savefig(tmp, format=fmt, dpi=dpi), suffix=f".{fmt}")
