"""Margin tracking during training and the paper's evaluation arithmetic.

* :func:`avg_accuracies`: AvgAcc and AvgRobAcc over an eps grid (MMA §4).
* :func:`margin_report`: minimal-perturbation statistics (mean / quartiles, Tables 2-3) from
  AN-PGD margins.
* :func:`grid_report`: clean and robust accuracy over an eps grid with AvgAcc / AvgRobAcc.
* :class:`MarginTracker`: per-epoch distribution of the stored per-example margins on a
  fixed set of training indices; :func:`plot_margins` draws it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

import toolbox as tb
from toolbox.train.callbacks import Callback

from .defenses import STORE_KEY


def avg_accuracies(clean: float, robust: Sequence[float]) -> tuple[float, float]:
    """``(AvgAcc, AvgRobAcc)`` from the clean accuracy and the robust accuracies over a grid.

    ``AvgRobAcc = mean(robust)`` and ``AvgAcc = (clean + sum(robust)) / (len(robust) + 1)``,
    in the units given (percent or fractions).
    """
    robust = [float(r) for r in robust]
    if not robust:
        raise ValueError("robust must hold at least one robust accuracy")
    vals = [float(clean), *robust]
    if not all(np.isfinite(vals)):
        raise ValueError(f"accuracies must be finite, got clean={clean!r}, robust={robust!r}")
    return (sum(vals) / len(vals), sum(robust) / len(robust))


def _batches(data: Any, n: int | None, batch_size: int):
    if isinstance(data, (tuple, list)) and len(data) >= 2 and isinstance(data[0], torch.Tensor):
        x, y = data[0], data[1]
        if n is not None:
            x, y = x[:n], y[:n]
        for i in range(0, x.shape[0], batch_size):
            yield x[i:i + batch_size], y[i:i + batch_size]
        return
    xs = data.x if hasattr(data, "x") else None
    if xs is None:
        raise ValueError("data must be an (x, y) tuple of tensors or a toolbox Dataset")
    m = len(data) if n is None else min(n, len(data))
    for i in range(0, m, batch_size):
        items = [data[j] for j in range(i, min(i + batch_size, m))]
        yield torch.stack([it[0] for it in items]), torch.stack([torch.as_tensor(it[1]) for it in items])


def margins(model: nn.Module, data: Any, attack: Any, *, n: int | None = None,
            batch_size: int = 250, device: str | torch.device = "cpu") -> torch.Tensor:
    """Per-example margin estimates ``(N,)`` (norm units) from ``attack.margin`` (AN-PGD).

    Misclassified clean examples get margin 0; examples whose search found no crossing get
    ``eps_max`` (a lower bound of their true margin).  ``data``: ``(x, y)`` tensors or a toolbox
    Dataset; the first ``n`` examples.
    """
    if not callable(getattr(attack, "margin", None)):
        raise ValueError(f"attack must provide margin() (e.g. tb.attack('an-pgd', ...)), got {attack!r}")
    out = []
    for x, y in _batches(data, n, batch_size):
        x, y = x.to(device).float(), y.to(device).long()
        with torch.no_grad():
            was = model.training
            model.eval()
            wrong = model(x).argmax(1) != y
            model.train(was)
        res = attack.margin(model, x, y)
        m = torch.where(res.found, res.eps_adv, res.eps)
        out.append(torch.where(wrong, torch.zeros_like(m), m).cpu())
    return torch.cat(out) if out else torch.zeros(0)


def margin_report(model: nn.Module, data: Any, attack: Any, *, n: int | None = None,
                  batch_size: int = 250, device: str | torch.device = "cpu") -> dict[str, float]:
    """Minimal-perturbation statistics as in the paper's Tables 2-3: ``mean``, ``q25``,
    ``median``, ``q75`` of :func:`margins`, plus ``clean`` (accuracy, a fraction) and ``n``."""
    m = margins(model, data, attack, n=n, batch_size=batch_size, device=device).double()
    if m.numel() == 0:
        raise ValueError("data holds no examples")
    q = torch.quantile(m, torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64))
    return {"mean": float(m.mean()), "q25": float(q[0]), "median": float(q[1]), "q75": float(q[2]),
            "clean": float((m > 0).double().mean()), "n": int(m.numel())}


def grid_report(model: nn.Module, data: Any, attack: Any, eps_grid: Sequence[float], *,
                n: int | None = None, batch_size: int = 250, device: str | None = None,
                seed: int = 0) -> pd.DataFrame:
    """Clean and robust accuracy (percent) of ``attack.with_eps(e)`` for every ``e`` in
    ``eps_grid``, with AvgAcc and AvgRobAcc, as one DataFrame row (the paper's table layout:
    columns ``clean``, ``AvgAcc``, ``AvgRobAcc``, then one column per eps)."""
    import toolbox as tb

    if not eps_grid:
        raise ValueError("eps_grid must hold at least one radius")
    attacks = {f"{float(e):g}": attack.with_eps(float(e)) for e in eps_grid}
    rep = tb.evaluate(model, data, attacks, n=n, batch_size=batch_size, device=device, seed=seed)
    acc = rep.set_index(rep.columns[0] if "attack" not in rep.columns else "attack")["accuracy"] \
        if "attack" in rep.columns else rep["accuracy"]
    clean = 100 * float(acc["clean"])
    rob = [100 * float(acc[k]) for k in attacks]
    a, r = avg_accuracies(clean, rob)
    return pd.DataFrame([{"clean": clean, "AvgAcc": a, "AvgRobAcc": r, **dict(zip(attacks, rob, strict=True))}])


class MarginTracker(Callback):
    """Record the distribution of the stored MMA margins on fixed training indices per epoch.

    ``indices``: dataset indices to follow (default: ``n`` drawn with ``seed`` from the
    training set at fit start).  At each epoch end the row gets ``margin_mean``,
    ``margin_q25``, ``margin_median``, ``margin_q75`` and ``margin_small`` (fraction below
    ``small`` = 0.05 * d_max by default); ``self.records`` keeps the raw margins per epoch
    (``(epoch, tensor (n,))``) for :func:`plot_margins`.  ``plot``: a PNG path (relative to
    the run dir) redrawn each epoch, or None.
    """

    order = 10

    def __init__(self, indices: Sequence[int] | torch.Tensor | None = None, *, n: int = 500, seed: int = 0,
                 small: float | None = None, plot: str | None = "margins.png") -> None:
        self.indices = None if indices is None else torch.as_tensor(indices, dtype=torch.long).reshape(-1)
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n!r}")
        self.n, self.seed, self.small, self.plot = int(n), int(seed), small, plot
        self.records: list[tuple[int, torch.Tensor]] = []

    def on_fit_start(self, trainer):
        if self.indices is None:
            data = trainer.train_data
            idx = getattr(data, "indices", None)
            idx = torch.arange(len(data)) if idx is None else torch.as_tensor(idx)
            g = torch.Generator().manual_seed(self.seed)
            self.indices = idx[torch.randperm(idx.numel(), generator=g)[: self.n]].long()

    def on_epoch_end(self, trainer, epoch, logs):
        store = trainer.store
        if store is None or STORE_KEY not in store:
            return
        m = store.tensor(STORE_KEY)[self.indices.to(store.device)].detach().float().cpu()
        self.records.append((int(epoch), m))
        d_max = getattr(trainer.defense, "d_max", float(m.max()) if m.numel() else 1.0)
        small = 0.05 * d_max if self.small is None else self.small
        q = torch.quantile(m, torch.tensor([0.25, 0.5, 0.75]))
        logs.update(margin_mean=float(m.mean()), margin_q25=float(q[0]), margin_median=float(q[1]),
                    margin_q75=float(q[2]), margin_small=float((m < small).float().mean()))
        if self.plot and trainer.run_dir is not None and getattr(trainer, "is_main_process", True):
            import matplotlib.pyplot as plt

            fig = plot_margins(self)
            tb.plot.save(fig, os.path.join(trainer.run_dir, self.plot), dpi=100)
            plt.close(fig)

    def state_dict(self):
        return {"indices": self.indices, "epochs": [e for e, _ in self.records],
                "margins": [m for _, m in self.records]}

    def load_state_dict(self, state):
        self.indices = state["indices"]
        self.records = list(zip(state["epochs"], state["margins"], strict=True))


def plot_margins(tracker: MarginTracker | Sequence[tuple[int, torch.Tensor]], ax=None):
    """Histograms of the tracked margins, one line per epoch (darker = later); returns the Figure."""
    import matplotlib

    if ax is None:
        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 3.5))
    else:
        fig = ax.figure
    recs = tracker.records if isinstance(tracker, MarginTracker) else list(tracker)
    if recs:
        hi = max(float(m.max()) for _, m in recs) or 1.0
        bins = np.linspace(0, hi * 1.0001, 31)
        cmap = matplotlib.colormaps["viridis"]
        for k, (e, m) in enumerate(recs):
            h, _ = np.histogram(m.numpy(), bins=bins)
            ax.plot(0.5 * (bins[1:] + bins[:-1]), h / max(1, m.numel()),
                    color=cmap(k / max(1, len(recs) - 1)), label=f"epoch {e + 1}")
        ax.legend(fontsize=7)
    ax.set_xlabel("stored margin ε (norm units)")
    ax.set_ylabel("fraction of tracked examples")
    ax.set_title("MMA per-example margins")
    return fig


class BestMargin(Callback):
    """The paper's checkpoint selection (App. C): after every epoch, the mean AN-PGD margin
    of the first ``n`` validation examples (misclassified = 0); keep the weights of the epoch
    with the largest mean and (``restore=True``) load them at the end of the fit.

    ``attack``: a margin estimator (default: ``an-pgd`` at the defense's norm with
    ``eps_max`` = the defense's, PGD radius ``eps_test`` (default d_max / 1.5, the code's
    0.3 for d_max 0.45), ``steps`` steps, LM bisection).  Adds ``val_margin_mean`` and
    ``val_margin_best`` to the history row; ``best_epoch`` / ``best_value`` afterwards.
    Needs ``val_data`` in ``Trainer.fit``.
    """

    order = 20

    def __init__(self, attack: Any = None, *, n: int = 500, eps_test: float | None = None,
                 steps: int = 20, restore: bool = True, batch_size: int = 250) -> None:
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n!r}")
        self.attack, self.n, self.eps_test, self.steps = attack, int(n), eps_test, int(steps)
        self.restore, self.batch_size = bool(restore), int(batch_size)
        self.best_value = float("-inf")
        self.best_epoch = -1
        self.best_state: dict[str, torch.Tensor] | None = None

    def _attack(self, trainer):
        if self.attack is not None:
            return self.attack
        from .anpgd import ANPGD

        d = trainer.defense
        if not hasattr(d, "d_max"):
            raise ValueError("BestMargin needs attack= unless the defense is mma")
        eps_test = self.eps_test if self.eps_test is not None else d.d_max / 1.5
        self.attack = ANPGD(d.threat.with_eps(d.eps_max), steps=self.steps, eps_init=eps_test,
                            bisection_loss="lm", seed=0)
        return self.attack

    def on_epoch_end(self, trainer, epoch, logs):
        if trainer.val_data is None:
            raise ValueError("BestMargin needs val_data= in Trainer.fit")
        m = margins(trainer.model, trainer.val_data, self._attack(trainer), n=self.n,
                    batch_size=self.batch_size, device=trainer.device)
        value = float(m.mean())
        if value > self.best_value:
            self.best_value, self.best_epoch = value, int(epoch)
            self.best_state = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
        logs.update(val_margin_mean=value, val_margin_best=self.best_value)

    def on_fit_end(self, trainer):
        if self.restore and self.best_state is not None:
            trainer.model.load_state_dict(self.best_state)

    def state_dict(self):
        return {"best_value": self.best_value, "best_epoch": self.best_epoch,
                "best_state": self.best_state or {}}

    def load_state_dict(self, state):
        self.best_value, self.best_epoch = float(state["best_value"]), int(state["best_epoch"])
        self.best_state = state["best_state"] or None
