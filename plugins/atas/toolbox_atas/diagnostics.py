"""Per-example gradient-norm diagnostics for ATTA/ATAS: histograms, long-tail statistic, plot.

The ATAS paper's argument (Eq. 10, Table III) is that per-example input-gradient norms G_i
are long-tailed, so one step size cannot suit every example.  Its statistic is
``mean(G²) / mean(G)²`` (>= 1 by Cauchy-Schwarz; about 1.4 for PreActResNet-18 on CIFAR-10 at
eps 8/255).  :class:`GradNormStats` adds it to every epoch's history row, with quantiles of
G and of the step sizes, and keeps one histogram of G per epoch for :func:`plot_gradnorm`.
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np
import torch

import toolbox as tb

__all__ = ["GradNormStats", "long_tail", "plot_gradnorm"]


def long_tail(g: torch.Tensor) -> float:
    """``mean(g²) / mean(g)²`` of a 1-D tensor of nonnegative norms (nan when empty or all 0)."""
    g = g.detach().double().flatten()
    if g.numel() == 0:
        return float("nan")
    m = g.mean()
    return float((g.pow(2).mean() / m.pow(2)).item()) if m > 0 else float("nan")


class GradNormStats(tb.train.Callback):
    """History columns and histograms of the per-example gradient norms an ATTA/ATAS
    defense stores (``<prefix>gnorm``, ``<prefix>step``; see :mod:`toolbox_atas.defenses`).

    At each epoch end it adds to the history row:

    * ``gnorm_longtail``: ``mean(G²) / mean(G)²`` over the epoch's visits (from the batch logs
      ``train_gnorm`` and ``train_gnorm_sq``, so it is exact under DDP);
    * ``gnorm_p10``, ``gnorm_p50``, ``gnorm_p90``, ``gnorm_p99``, ``gnorm_max``: quantiles of
      the stored G_i (the last visit of every example visited so far);
    * ``step_p10``, ``step_p50``, ``step_p90``: quantiles of the stored step sizes (pixel units);
    * ``store_bytes_per_example``: the defense's state per example.

    :attr:`histograms` holds one ``{"epoch", "edges", "counts"}`` dict per epoch: ``bins``
    log-spaced bins of G over ``[lo, hi]`` (default: fixed from the first epoch's 0.1 % and
    99.9 % quantiles, widened by a factor 2 either way, so epochs share one axis; values
    outside go to the end bins).

    Args:
        bins: number of histogram bins.
        range: ``(lo, hi)`` > 0 for the bins, or ``None`` (see above).
        prefix: the defense's store prefix; default ``trainer.defense.prefix``.
    """

    order = 30

    def __init__(self, bins: int = 40, range: tuple[float, float] | None = None, prefix: str | None = None) -> None:
        if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
            raise ValueError(f"bins must be a positive integer, got {bins!r}")
        if range is not None:
            if len(range) != 2 or not 0 < float(range[0]) < float(range[1]):
                raise ValueError(f"range must be None or (lo, hi) with 0 < lo < hi, got {range!r}")
            range = (float(range[0]), float(range[1]))
        self.bins, self.range, self.prefix = bins, range, prefix
        self.histograms: list[dict[str, Any]] = []
        self._edges: list[float] | None = None

    def _prefix(self, trainer) -> str:
        if self.prefix is not None:
            return self.prefix
        p = getattr(trainer.defense, "prefix", None)
        if p is None:
            raise ValueError("GradNormStats needs an ATTA/ATAS defense (trainer.defense.prefix) or prefix=")
        return p

    def on_epoch_end(self, trainer, epoch, logs):
        from .defenses import store_bytes_per_example

        p = self._prefix(trainer)
        mg, mg2 = logs.get("train_gnorm"), logs.get("train_gnorm_sq")
        logs["gnorm_longtail"] = float(mg2 / mg**2) if mg and mg2 is not None and mg > 0 else float("nan")
        store = trainer.store
        if store is None or p + "gnorm" not in store:
            return
        seen = store.tensor(p + "gen") >= 0
        g = store.tensor(p + "gnorm")[seen].double().cpu()
        a = store.tensor(p + "step")[seen].double().cpu()
        if g.numel() == 0:
            return
        q = torch.quantile(g, torch.tensor([0.1, 0.5, 0.9, 0.99], dtype=torch.float64)).tolist()
        logs.update({"gnorm_p10": q[0], "gnorm_p50": q[1], "gnorm_p90": q[2], "gnorm_p99": q[3],
                     "gnorm_max": float(g.max())})
        qa = torch.quantile(a, torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)).tolist()
        logs.update({"step_p10": qa[0], "step_p50": qa[1], "step_p90": qa[2]})
        logs["store_bytes_per_example"] = store_bytes_per_example(store, p)
        if self._edges is None:
            if self.range is not None:
                lo, hi = self.range
            else:
                pos = g[g > 0]
                if pos.numel() == 0:
                    return
                lo = float(torch.quantile(pos, 0.001)) / 2
                hi = float(torch.quantile(pos, 0.999)) * 2
            self._edges = np.geomspace(lo, hi, self.bins + 1).tolist()
        edges = np.asarray(self._edges)
        vals = np.clip(g.numpy(), edges[0], edges[-1])
        counts, _ = np.histogram(vals, bins=edges)
        self.histograms.append({"epoch": int(epoch), "edges": list(self._edges), "counts": counts.tolist()})

    def state_dict(self) -> dict:
        return {"histograms": [dict(h) for h in self.histograms], "edges": self._edges}

    def load_state_dict(self, state: dict) -> None:
        self.histograms = [dict(h) for h in state.get("histograms", [])]
        self._edges = state.get("edges")

    def __repr__(self) -> str:
        return f"GradNormStats(bins={self.bins}, range={self.range}, prefix={self.prefix!r})"


def plot_gradnorm(stats: GradNormStats | list[dict[str, Any]], history: Any = None,
                  path: str | os.PathLike | None = None):
    """Figure: per-epoch histograms of the per-example gradient norm G (left, log x axis) and,
    with ``history`` (the Trainer's DataFrame), the long-tail statistic ``mean(G²)/mean(G)²``
    and the median step size per epoch (right).  Saved to ``path`` when given.

    ``stats``: a :class:`GradNormStats` after training, or its ``histograms`` list.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    hists = stats.histograms if isinstance(stats, GradNormStats) else list(stats)
    if not hists:
        raise ValueError("stats has no histograms (train with the GradNormStats callback first)")
    ncol = 2 if history is not None else 1
    fig, axes = plt.subplots(1, ncol, figsize=(5.5 * ncol, 3.8), squeeze=False)
    ax = axes[0, 0]
    cmap = plt.get_cmap("viridis")
    for k, h in enumerate(hists):
        edges = np.asarray(h["edges"])
        counts = np.asarray(h["counts"], dtype=float)
        ax.stairs(counts / max(counts.sum(), 1), edges, color=cmap(k / max(len(hists) - 1, 1)),
                  label=f"epoch {h['epoch']}")
    ax.set_xscale("log")
    ax.set_xlabel("per-example input-gradient norm ||∇x CE||₂")
    ax.set_ylabel("fraction of examples")
    ax.legend(fontsize=7, ncol=2)
    if history is not None:
        ax2 = axes[0, 1]
        ep = list(history["epoch"])
        lt = [float(v) for v in history.get("gnorm_longtail", [math.nan] * len(ep))]
        ax2.plot(ep, lt, "o-", color="C3", label="mean(G²)/mean(G)²")
        ax2.set_xlabel("epoch")
        ax2.set_ylabel("long-tail statistic", color="C3")
        if "train_step" in history:
            ax3 = ax2.twinx()
            ax3.plot(ep, [float(v) for v in history["train_step"]], "s--", color="C0", label="mean step")
            ax3.set_ylabel("mean step size (pixel units)", color="C0")
    fig.tight_layout()
    if path is not None:
        from toolbox.plot import save

        save(fig, path)
    return fig
