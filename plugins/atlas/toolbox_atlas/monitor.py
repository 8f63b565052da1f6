"""Catastrophic-overfitting monitor: ``‖J(x')‖²_F`` at the one-step adversary, per epoch, beside
PGD validation accuracy (paper Fig. 11: at CO the Jacobian estimate rises steeply while PGD
validation accuracy drops by more than 10 points)."""

from __future__ import annotations

import os
from typing import Any

import torch

import toolbox as tb
from toolbox.train.callbacks import Callback

from .defense import fgsm_rs_attack
from .jacobian import jacobian_frobenius

__all__ = ["JacobianMonitor", "plot_co_monitor"]


def _first(data: Any, n: int | None, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` examples of a toolbox Dataset or an ``(x, y)`` pair, as float tensors."""
    if isinstance(data, (tuple, list)) and len(data) == 2:
        x, y = data
        return x[:n].float(), y[:n]
    if data is None or not hasattr(data, "__getitem__"):
        raise ValueError(f"{name} must be a dataset or an (x, y) pair, got {data!r}")
    m = len(data) if n is None else min(n, len(data))
    items = [data[i] for i in range(m)]
    return torch.stack([it[0] for it in items]).float(), torch.stack([torch.as_tensor(it[1]) for it in items])


class JacobianMonitor(Callback):
    """Adds ``jac_adv`` (mean exact ``‖J(x')‖²_F`` on a held training batch, ``x'`` one-step
    FGSM-RS at the full ε with a fixed seed, model in eval mode) and ``val_pgd_acc`` (PGD accuracy
    on the validation data, in [0, 1]) to each epoch's history row.

    Args:
        n: held training examples (the first ``n`` of the Trainer's ``train_data`` or ``data``).
        threat: the threat model (default: the defense's attack's threat).
        val_attack: validation attack (default PGD-20, step ``ε/30``, random start); when the row
            already has ``val_robust_acc`` (a :class:`~toolbox.train.callbacks.RobustEarlyStopping`
            ran first) and ``val_attack`` is None, that value is reused as ``val_pgd_acc``.
        n_val: validation examples for the PGD accuracy.
        data, val_data: override the Trainer's training / validation data.
        n_proj: ``None`` = exact (one-hot basis); else random projections.
        seed: seed of the adversary's start and the projections.

    The default validation attack's step ``ε/30`` is 0.01 at ε = 0.3 (the paper's MNIST validation
    attack).
    """

    order = 25

    def __init__(self, n: int = 256, *, threat: Any = None, val_attack: Any = None, n_val: int = 500,
                 data: Any = None, val_data: Any = None, n_proj: int | None = None, seed: int = 0) -> None:
        for name, v in (("n", n), ("n_val", n_val)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an int >= 1, got {v!r}")
        if val_attack is not None and not isinstance(val_attack, tb.Attack):
            raise ValueError(f"val_attack must be a toolbox Attack or None, got {val_attack!r}")
        self.n, self.n_val, self.threat, self.val_attack = n, n_val, threat, val_attack
        self.data, self.val_data, self.n_proj, self.seed = data, val_data, n_proj, int(seed)

    def on_fit_start(self, trainer):
        thr = self.threat
        if thr is None:
            atk = getattr(trainer.defense, "attack", None)
            if atk is None:
                raise ValueError("JacobianMonitor needs threat= (the defense has no attack)")
            thr = atk.threat
        self._threat = tb.threat(thr) if isinstance(thr, str) else thr
        x, y = _first(self.data if self.data is not None else trainer.train_data, self.n, "data")
        self._x, self._y = x.to(trainer.device), y.to(trainer.device)
        self._adv = fgsm_rs_attack(self._threat, mode="eval")
        vd = self.val_data if self.val_data is not None else getattr(trainer, "val_data", None)
        self._vx = self._vy = None
        if vd is not None:
            vx, vy = _first(vd, self.n_val, "val_data")
            self._vx, self._vy = vx.to(trainer.device), vy.to(trainer.device)
        eps = float(self._threat.eps)
        self._pgd = self.val_attack or tb.attack("pgd", threat=self._threat, steps=20, step_size=eps / 30,
                                                 random_start=True)

    def _gen(self, device) -> torch.Generator:
        g = torch.Generator(device=device)
        g.manual_seed(self.seed)
        return g

    def measure(self, model: torch.nn.Module, device: Any) -> float:
        """Mean ``‖J(x')‖²_F`` over the held batch (model put in eval mode, then restored)."""
        was = model.training
        model.eval()
        try:
            x_adv = self._adv(model, self._x, self._y, generator=self._gen(device), check=False)
            kw = {"exact": True} if self.n_proj is None else {"n_proj": self.n_proj, "generator": self._gen(device)}
            return float(jacobian_frobenius(model, x_adv, **kw).mean())
        finally:
            model.train(was)

    def on_epoch_end(self, trainer, epoch, logs):
        model = getattr(trainer.model, "module", trainer.model)
        logs["jac_adv"] = self.measure(model, trainer.device)
        if self.val_attack is None and "val_robust_acc" in logs:
            logs["val_pgd_acc"] = float(logs["val_robust_acc"])
        elif self._vx is not None:
            was = model.training
            model.eval()
            try:
                xa = self._pgd(model, self._vx, self._vy, generator=self._gen(trainer.device), check=False)
                with torch.no_grad():
                    logs["val_pgd_acc"] = float((model(xa).argmax(1) == self._vy).float().mean())
            finally:
                model.train(was)


def plot_co_monitor(history: Any, path: str | os.PathLike | None = None, *, title: str | None = None):
    """Plot ``jac_adv`` (log scale, left axis) and ``val_pgd_acc`` (right axis) per epoch.

    ``history``: the DataFrame of ``Trainer.fit`` (or a list of row dicts) with a
    :class:`JacobianMonitor`'s columns.  Returns the matplotlib Figure; saved to ``path`` if given.
    """
    import matplotlib

    if path is not None:
        matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import pandas as pd

    df = history if isinstance(history, pd.DataFrame) else pd.DataFrame(list(history))
    for col in ("epoch", "jac_adv"):
        if col not in df.columns:
            raise ValueError(f"history has no {col!r} column (add a JacobianMonitor callback); columns: {list(df.columns)}")
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    ep = df["epoch"] + 1
    ax.plot(ep, df["jac_adv"], "o-", color="tab:red", label="‖J(x′)‖²_F")
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("‖J(x′)‖²_F (held train batch)", color="tab:red")
    if "val_pgd_acc" in df.columns:
        ax2 = ax.twinx()
        ax2.plot(ep, 100 * df["val_pgd_acc"], "s--", color="tab:blue")
        ax2.set_ylabel("PGD validation accuracy (%)", color="tab:blue")
        ax2.set_ylim(0, 100)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    if path is not None:
        tb.plot.save(fig, path, dpi=120)
    return fig
