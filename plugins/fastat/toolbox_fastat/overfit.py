"""Catastrophic and robust overfitting: experiment helper, bookkeeping, plots (thesis §4.1-4.3).

* **Catastrophic overfitting (CO)** — a fast (single-step) model suddenly loses its robustness
  to multi-step attacks on the *training* data.  :func:`co_experiment` trains with the
  kernel's :class:`toolbox.train.callbacks.CODetector` (PGD-5, step eps/4, on one fixed
  training batch; a drop of more than 0.2 or an FGSM-PGD gap rolls back to the last good
  weights) and returns the per-check log.
* **Robust overfitting** — robust *test* error rises late in training under the training
  adversary.  :class:`RobustErrorTracker` logs it per epoch; :func:`robust_overfitting_summary`
  gives best / final (mean ± std of the last 5 epochs) / diff; :func:`validation_split` holds
  out 1,000 training examples for early stopping with the kernel's ``RobustEarlyStopping``.
* Plots: :func:`plot_robust_error` (per-epoch curve, best and final marked) and
  :func:`plot_perturbation_histogram` (``|delta| / eps``: near 1 for a healthy model, inside the
  ball after CO).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

import toolbox as tb
from toolbox.train.callbacks import Callback, CODetector

__all__ = ["robust_overfitting_summary", "best_epoch", "validation_split", "RobustErrorTracker",
           "COResult", "co_experiment", "perturbation_ratios", "plot_robust_error",
           "plot_perturbation_histogram"]


# ------------------------------------------------------------------------------ bookkeeping
def robust_overfitting_summary(errors: Sequence[float], last: int = 5) -> dict[str, float]:
    """Best / final / diff of a per-epoch robust test error curve (Rice et al., Table 4.10).

    ``errors``: one robust error per epoch (any unit: fractions or percent, NaN not allowed).
    Returns ``best`` (the minimum), ``best_epoch`` (0-based index of the first minimum),
    ``final`` and ``final_std`` (mean and population standard deviation of the last ``last``
    epochs, or of all when fewer), ``diff`` (``final - best``, >= 0) and ``epochs``.
    """
    e = np.asarray(list(errors), dtype=float)
    if e.ndim != 1 or e.size == 0:
        raise ValueError(f"errors must be a non-empty sequence of numbers, got {errors!r}")
    if not np.isfinite(e).all():
        raise ValueError(f"errors must be finite, got {e.tolist()}")
    if isinstance(last, bool) or not isinstance(last, int) or last < 1:
        raise ValueError(f"last must be a positive integer, got {last!r}")
    tail = e[-last:]
    best_i = int(np.argmin(e))
    final = float(tail.mean())
    return {"best": float(e[best_i]), "best_epoch": best_i, "final": final,
            "final_std": float(tail.std()), "diff": final - float(e[best_i]), "epochs": int(e.size)}


def best_epoch(scores: Sequence[float]) -> int:
    """The epoch early stopping picks: index of the first maximum of ``scores`` (validation
    robust accuracy per epoch).  NaN scores never win."""
    s = np.asarray(list(scores), dtype=float)
    if s.ndim != 1 or s.size == 0:
        raise ValueError(f"scores must be a non-empty sequence of numbers, got {scores!r}")
    if np.isnan(s).all():
        raise ValueError("scores are all NaN")
    return int(np.nanargmax(s))


def validation_split(train: Any, n_val: int = 1000, seed: int = 0) -> tuple[Any, Any]:
    """Hold out ``n_val`` training examples (seeded random permutation; Rice et al. use 1,000):
    ``(train_rest, val)``, disjoint, both keeping the original dataset indices
    (:func:`toolbox.data.split`)."""
    return tb.data.split(train, n_val, seed=seed)


def _take(data: Any, n: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(data, (tuple, list)):
        x, y = data[0], data[1]
    elif hasattr(data, "x") and hasattr(data, "y"):
        x, y = data.x, data.y
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
    else:
        raise ValueError(f"data must be a toolbox Dataset or an (x, y) pair, got {type(data).__name__}")
    if n is not None:
        x, y = x[:n], y[:n]
    return x, y


class RobustErrorTracker(Callback):
    """Per-epoch robust test error (the robust-overfitting curve).

    After every epoch, evaluates the model on the first ``n`` examples of ``data`` (a dataset
    or an ``(x, y)`` pair; default the Trainer's ``val_data``) under ``attack`` (default: the
    defense's own adversary, as the thesis measures robust overfitting with the training
    attack) and adds ``test_clean_err`` and ``test_robust_err`` (fractions in [0, 1]) to the
    epoch's history row.  :meth:`summary` gives :func:`robust_overfitting_summary` of the
    errors so far.  The attack's random starts are seeded with ``seed`` each epoch.
    """

    order = 15

    def __init__(self, attack: Any = None, data: Any = None, n: int | None = 1000, *,
                 batch_size: int = 250, seed: int = 0, prefix: str = "test") -> None:
        if attack is not None and not isinstance(attack, tb.Attack):
            raise ValueError(f"attack must be a toolbox Attack or None, got {attack!r}")
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
            raise ValueError(f"n must be a positive integer or None, got {n!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.attack, self.data, self.n = attack, data, n
        self.batch_size, self.seed, self.prefix = batch_size, int(seed), str(prefix)
        self.errors: list[float] = []
        self.clean_errors: list[float] = []

    def on_fit_start(self, trainer):
        data = self.data if self.data is not None else getattr(trainer, "val_data", None)
        if data is None:
            raise ValueError("RobustErrorTracker needs data= (test data) or fit(val_data=...)")
        x, y = _take(data, self.n)
        self._x, self._y = x.to(trainer.device), y.to(trainer.device)
        atk = self.attack
        if atk is None:
            atk = getattr(trainer.defense, "attack", None)
            if atk is None:
                raise ValueError("RobustErrorTracker needs attack= (the defense has none)")
        self._attack = atk

    def measure(self, model: nn.Module) -> tuple[float, float]:
        """``(clean error, robust error)`` in [0, 1] on the fixed examples."""
        was = model.training
        model.eval()
        g = torch.Generator(device=self._x.device).manual_seed(self.seed)
        wrong_clean = wrong_rob = 0
        try:
            for i in range(0, self._x.shape[0], self.batch_size):
                x, y = self._x[i:i + self.batch_size], self._y[i:i + self.batch_size]
                with torch.no_grad():
                    ok = model(x).argmax(1) == y
                x_adv = self._attack(model, x, y, generator=g, check=False)
                with torch.no_grad():
                    rob = (model(x_adv).argmax(1) == y) & ok
                wrong_clean += int((~ok).sum())
                wrong_rob += int((~rob).sum())
        finally:
            model.train(was)
        n = self._x.shape[0]
        return wrong_clean / n, wrong_rob / n

    def on_epoch_end(self, trainer, epoch, logs):
        model = getattr(trainer.model, "module", trainer.model)
        clean, rob = self.measure(model)
        self.clean_errors.append(clean)
        self.errors.append(rob)
        logs[f"{self.prefix}_clean_err"], logs[f"{self.prefix}_robust_err"] = clean, rob

    def summary(self, last: int = 5) -> dict[str, float]:
        """:func:`robust_overfitting_summary` of the robust errors logged so far."""
        return robust_overfitting_summary(self.errors, last)

    def state_dict(self) -> dict:
        return {"errors": list(self.errors), "clean_errors": list(self.clean_errors)}

    def load_state_dict(self, state: dict) -> None:
        self.errors = [float(v) for v in state.get("errors", [])]
        self.clean_errors = [float(v) for v in state.get("clean_errors", [])]

    def __repr__(self) -> str:
        return f"RobustErrorTracker(attack={self.attack!r}, n={self.n})"


# ------------------------------------------------------------------------------ CO experiment
@dataclass
class COResult:
    """What :func:`co_experiment` returns: the Trainer's ``history`` (one row per epoch, with
    ``co_pgd_acc``/``co_fgsm_acc``/``co_event``), ``checks`` (a DataFrame: ``step``,
    ``pgd_acc``, ``fgsm_acc`` for every detector check, the first at step 0), ``events`` (the
    detector's events; empty when it never fired), the ``detector`` and the ``trainer``."""

    history: Any
    checks: Any
    events: list[dict] = field(default_factory=list)
    detector: Any = None
    trainer: Any = None

    @property
    def collapsed(self) -> bool:
        """Whether the detector fired."""
        return bool(self.events)


def co_experiment(model: nn.Module, defense: Any, train_data: Any, epochs: int, *,
                  optimizer: Any = None, lr_schedule: Any = None, batch_size: int = 100,
                  seed: int = 0, detect: bool = True, every: str | int = "epoch",
                  check_batch: int | None = None, threshold: float = 0.2,
                  gap_threshold: float | None = 0.5, action: str = "stop",
                  callbacks: Sequence[Callback] = (), device: str = "cpu", **trainer_kw: Any) -> COResult:
    """Train ``model`` with ``defense`` while logging PGD-5 on a fixed training batch.

    The log comes from the kernel's ``CODetector`` (PGD-5 with step eps/4 and FGSM, on
    ``check_batch`` training examples fixed at fit start — default one batch of
    ``batch_size`` — every ``every`` = ``"epoch"`` or number of steps).  With ``detect=True``
    a drop of the PGD accuracy by more than ``threshold`` (the paper's rule) or an FGSM-PGD
    gap above ``gap_threshold`` rolls back to the last good weights and, with
    ``action="stop"``, stops; ``detect=False`` only logs (to watch a collapse happen).

    ``optimizer``/``lr_schedule`` and ``trainer_kw`` go to :class:`toolbox.Trainer`.
    Returns a :class:`COResult`.
    """
    import pandas as pd

    if detect:
        det = CODetector(every=every, threshold=threshold, gap_threshold=gap_threshold, action=action,
                         batch=check_batch, seed=seed)
    else:
        det = CODetector(every=every, threshold=1.0, gap_threshold=None, action="continue",
                         batch=check_batch, seed=seed)
    trainer = tb.Trainer(model, defense, optimizer=optimizer, lr_schedule=lr_schedule,
                         callbacks=[det, *callbacks], batch_size=batch_size, seed=seed, device=device,
                         **trainer_kw)
    history = trainer.fit(train_data, epochs=epochs)
    checks = pd.DataFrame(det.checks, columns=["step", "pgd_acc", "fgsm_acc"])
    return COResult(history, checks, list(det.events), det, trainer)


def perturbation_ratios(model: nn.Module, attack: Any, x: torch.Tensor, y: torch.Tensor, *,
                        reduce: str = "mean", generator: torch.Generator | None = None) -> torch.Tensor:
    """``|delta| / eps`` of ``attack``'s perturbations (thesis Fig. 4.3, the CO diagnostic).

    ``x`` ``(N, ...)`` in [0, 1], ``y`` ``(N,)``; ``attack`` an ℓ∞ attack with a scalar eps.
    ``reduce="mean"``: per example, the mean over coordinates ``(N,)``; ``"none"``: every
    coordinate ``(N, D)``.  Values lie in [0, 1]; a healthy robust model's PGD perturbations sit
    near 1 (the ball's surface), a catastrophically overfitted model's well inside.
    """
    if reduce not in ("mean", "none"):
        raise ValueError(f"reduce must be 'mean' or 'none', got {reduce!r}")
    eps = attack.threat.eps
    if isinstance(eps, torch.Tensor) or attack.threat.name != "linf":
        raise ValueError("perturbation_ratios needs an ℓ∞ attack with a scalar eps")
    x_adv = attack(model, x, y, generator=generator)
    r = ((x_adv - x).abs() / float(eps)).flatten(1).clamp(0, 1)
    return r.mean(1) if reduce == "mean" else r


# ------------------------------------------------------------------------------ plots
def _plt():
    import matplotlib

    if os.environ.get("MPLBACKEND") is None:
        matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def plot_robust_error(curves: Any, path: str | os.PathLike | None = None, *, last: int = 5,
                      ylabel: str = "robust test error", title: str | None = None):
    """Robust error per epoch, with each curve's best epoch (star) and its final value (the
    mean of the last ``last`` epochs, dashed line) marked.

    ``curves``: a sequence of per-epoch errors, a dict ``label -> sequence``, or a history
    ``DataFrame`` (its ``test_robust_err`` column).  Writes a PNG to ``path`` when given;
    returns the matplotlib ``Figure``.
    """
    if hasattr(curves, "columns"):
        if "test_robust_err" not in curves.columns:
            raise ValueError(f"the history has no 'test_robust_err' column (columns: {list(curves.columns)})")
        curves = {"robust error": list(curves["test_robust_err"])}
    elif not isinstance(curves, dict):
        curves = {"robust error": list(curves)}
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for label, errs in curves.items():
        errs = [float(v) for v in errs]
        s = robust_overfitting_summary(errs, last)
        ep = np.arange(1, len(errs) + 1)
        (line,) = ax.plot(ep, errs, marker="o", ms=3, label=f"{label} (best {s['best']:.3g}, final {s['final']:.3g})")
        ax.plot([s["best_epoch"] + 1], [s["best"]], marker="*", ms=14, color=line.get_color(), ls="none")
        lo = max(1, len(errs) - last + 1)
        ax.hlines(s["final"], lo, len(errs), colors=line.get_color(), linestyles="--")
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.set_title(title or "robust overfitting: ★ best, -- final (last epochs)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    if path is not None:
        tb.plot.save(fig, path, dpi=100)
    plt.close(fig)
    return fig


def plot_perturbation_histogram(ratios: Any, path: str | os.PathLike | None = None, *, bins: int = 20,
                                title: str | None = None):
    """Histogram of ``|delta| / eps`` (from :func:`perturbation_ratios`), one per model.

    ``ratios``: a tensor/array or a dict ``label -> tensor/array`` of values in [0, 1].  Writes a
    PNG to ``path`` when given; returns the ``Figure``.
    """
    if not isinstance(ratios, dict):
        ratios = {"|delta|/eps": ratios}
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    edges = np.linspace(0, 1, int(bins) + 1)
    for label, r in ratios.items():
        v = r.detach().cpu().numpy().ravel() if isinstance(r, torch.Tensor) else np.asarray(r).ravel()
        ax.hist(v, bins=edges, alpha=0.5, density=True, label=f"{label} (mean {v.mean():.2f})")
    ax.set_xlabel("|delta| / eps")
    ax.set_ylabel("density")
    ax.set_title(title or "PGD perturbation size (CO: mass inside the ball)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    if path is not None:
        tb.plot.save(fig, path, dpi=100)
    plt.close(fig)
    return fig


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """``(mean, sample standard deviation)`` of ``values`` (std 0 for a single value)."""
    v = np.asarray(list(values), dtype=float)
    if v.size == 0:
        raise ValueError("values must not be empty")
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0

