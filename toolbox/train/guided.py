"""Validation-guided learning-rate decay (ATLAS, App. B): divide the LR by ``factor`` once a
validation metric has not improved for ``plateau`` consecutive epochs.

Best-validation keeping and the final stop are :class:`~toolbox.train.callbacks.RobustEarlyStopping`
(``patience=10`` gives the paper's "stop after 10 epochs without improvement");
:func:`guided_schedule` returns the pair.
"""

from __future__ import annotations

import math
from typing import Any

from .callbacks import Callback, RobustEarlyStopping

__all__ = ["GuidedLR", "guided_schedule"]


class GuidedLR(Callback):
    """Divide every param group's LR by ``factor`` after ``plateau`` epochs without a new best
    of ``metric`` (a history-row key, higher is better; default ``val_robust_acc``, written by
    :class:`RobustEarlyStopping`, which must run first — its ``order`` is 20, this one's 30).

    Args:
        metric: the row key to watch.
        plateau: epochs without improvement before a decay (paper: 2); the counter restarts
            after each decay.
        factor: LR divisor (> 1; paper: 5).
        min_lr: the LR never goes below this.
        min_delta: an improvement must exceed the best by more than this.

    Adds ``lr_decays`` (decays so far) to each row.  Not for use with the Trainer's
    ``lr_schedule=`` or ``scheduler=``, which would overwrite the LR it sets (``ValueError``).
    """

    order = 30

    def __init__(self, metric: str = "val_robust_acc", plateau: int = 2, factor: float = 5.0, *,
                 min_lr: float = 0.0, min_delta: float = 0.0) -> None:
        if not isinstance(metric, str) or not metric:
            raise ValueError(f"metric must be a history column name, got {metric!r}")
        if isinstance(plateau, bool) or not isinstance(plateau, int) or plateau < 1:
            raise ValueError(f"plateau must be an int >= 1, got {plateau!r}")
        if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not factor > 1:
            raise ValueError(f"factor must be a number > 1, got {factor!r}")
        for name, v in (("min_lr", min_lr), ("min_delta", min_delta)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0:
                raise ValueError(f"{name} must be a number >= 0, got {v!r}")
        self.metric, self.plateau, self.factor = metric, plateau, float(factor)
        self.min_lr, self.min_delta = float(min_lr), float(min_delta)
        self._reset()

    def _reset(self) -> None:
        self.best: float = -math.inf
        self.wait = 0
        self.decays = 0
        self._resumed = False

    def on_fit_start(self, trainer):
        if getattr(trainer, "lr_schedule", None) is not None or getattr(trainer, "scheduler", None) is not None:
            raise ValueError("GuidedLR sets the LR itself: do not combine it with the Trainer's "
                             "lr_schedule= or scheduler=")
        if not self._resumed:
            self._reset()
        self._resumed = False

    def on_epoch_end(self, trainer, epoch, logs):
        if self.metric not in logs:
            raise ValueError(f"GuidedLR: metric {self.metric!r} is not in the history row (add a "
                             f"RobustEarlyStopping before it); columns: {sorted(logs)}")
        score = float(logs[self.metric])
        if score > self.best + self.min_delta:
            self.best, self.wait = score, 0
        else:
            self.wait += 1
            if self.wait >= self.plateau:
                for g in trainer.optimizer.param_groups:
                    g["lr"] = max(g["lr"] / self.factor, self.min_lr)
                trainer.current_lr = float(trainer.optimizer.param_groups[0]["lr"])
                self.decays += 1
                self.wait = 0
        logs["lr_decays"] = self.decays

    def state_dict(self) -> dict:
        return {"best": self.best, "wait": self.wait, "decays": self.decays}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.wait, self.decays = float(state["best"]), int(state["wait"]), int(state["decays"])
        self._resumed = True

    def __repr__(self) -> str:
        return f"GuidedLR(metric={self.metric!r}, plateau={self.plateau}, factor={self.factor})"


def guided_schedule(attack: Any = None, n: int | None = 1000, *, plateau: int = 2, factor: float = 5.0,
                    patience: int | None = 10, data: Any = None, seed: int = 0) -> list[Callback]:
    """ATLAS's validation-guided training as callbacks: ``[RobustEarlyStopping(attack, n,
    patience=patience, restore_best=True), GuidedLR("val_robust_acc", plateau, factor)]`` —
    keep the best robust-validation weights, decay the LR by ``factor`` after ``plateau`` epochs
    without improvement, stop after ``patience``.  ``attack``: the validation attack (paper:
    PGD-20 step 0.01 on MNIST, PGD-10 step 0.007 on CIFAR); ``n``: validation examples."""
    return [RobustEarlyStopping(attack, n, data=data, patience=patience, restore_best=True, seed=seed),
            GuidedLR("val_robust_acc", plateau, factor)]
