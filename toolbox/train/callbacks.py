"""Trainer callbacks: the :class:`Callback` base and the builtin callbacks.

A callback observes (and may steer) a :class:`toolbox.train.trainer.Trainer` run through the
hooks below.  Callbacks run in ascending ``order`` (lower first; checkpointing runs last).
Builtins are registered as kind ``"callback"`` by the builtin plugin ``builtin-callbacks``:

=========================  ==================================================================
``progress-bar``           :class:`ProgressBar`: tqdm bar per epoch (quiet off a TTY / in CI)
``history``                :class:`History`: metrics history as a DataFrame and ``history.csv``
``curve-plot``             :class:`CurvePlot`: training-curve PNG each epoch
``robust-early-stopping``  :class:`RobustEarlyStopping`: keep the best robust-validation weights
``co-detector``            :class:`CODetector`: catastrophic-overfitting detector with rollback
=========================  ==================================================================
"""

from __future__ import annotations

import copy
import math
import os
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._checks import check_choice, check_positive
from .._io import atomic_write
from ..hookspecs import hookimpl

__all__ = ["Callback", "ProgressBar", "History", "CurvePlot", "RobustEarlyStopping", "CODetector"]


class Callback:
    """Base class of Trainer callbacks.  Every hook is a no-op; override the ones you need.

    Attributes:
        order: int; callbacks run in ascending order (ties keep the order given to the
            Trainer).  Metrics loggers (history, plots) run after callbacks that add keys to the
            epoch's row; checkpointing runs last.

    Hooks (``trainer`` is the running Trainer; see docs/architecture.md for its attributes):
        on_fit_start(trainer): before the first epoch (after a resume has restored state).
        on_epoch_start(trainer, epoch): ``epoch`` is 0-based.
        on_batch_end(trainer, batch, logs): after each optimizer step; ``batch`` is the
            :class:`toolbox.defense.Batch`, ``logs`` the step's metrics (floats).
        on_epoch_end(trainer, epoch, logs): ``logs`` is the epoch's history row (a dict);
            callbacks may add keys to it.
        on_fit_end(trainer): after the last epoch (also after an early stop).
        state_dict() / load_state_dict(state): what the callback needs to resume exactly;
            saved inside the Trainer's checkpoint (tensors and plain Python values only, so
            ``torch.load(weights_only=True)`` can read it back).
    """

    order: int = 0

    def on_fit_start(self, trainer: Any) -> None:
        return None

    def on_epoch_start(self, trainer: Any, epoch: int) -> None:
        return None

    def on_batch_end(self, trainer: Any, batch: Any, logs: dict) -> None:
        return None

    def on_epoch_end(self, trainer: Any, epoch: int, logs: dict) -> None:
        return None

    def on_fit_end(self, trainer: Any) -> None:
        return None

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


# ------------------------------------------------------------------------------- helpers
def _unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside a DistributedDataParallel / DataParallel wrapper."""
    return model.module if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)) else model


def _is_main(trainer: Any) -> bool:
    return bool(getattr(trainer, "is_main_process", True))


def _clone_state(state: dict) -> dict:
    """A deep copy of a (model or optimizer) state dict whose tensors share no storage."""
    return copy.deepcopy(state)


def _resolve(path: str | os.PathLike, run_dir: Path | None) -> Path:
    p = Path(path)
    if p.is_absolute() or run_dir is None:
        return p
    return Path(run_dir) / p


def _take(data: Any, idx: torch.Tensor | None, n: int | None, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack examples of ``data`` into ``(x (n, C, H, W) float in [0, 1], y (n,) int64)``.

    ``data`` is an ``(x, y)`` pair of tensors or a dataset whose items start with ``(x, y)``
    (the toolbox's datasets yield ``(x, y, index)``).  ``idx`` selects positions; otherwise the
    first ``n`` (all when ``None``).
    """
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        x, y = data
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"{name} x and y differ in length: {x.shape[0]} vs {y.shape[0]}")
        sel = idx if idx is not None else torch.arange(x.shape[0] if n is None else min(n, x.shape[0]))
        return x[sel].float(), y[sel].long()
    try:
        size = len(data)
    except TypeError:
        raise ValueError(f"{name} must be a dataset or an (x, y) pair of tensors, got {type(data).__name__}") from None
    if size == 0:
        raise ValueError(f"{name} is empty")
    sel = idx.tolist() if idx is not None else range(size if n is None else min(n, size))
    xs, ys = [], []
    for i in sel:
        item = data[i]
        xs.append(torch.as_tensor(item[0]))
        ys.append(torch.as_tensor(item[1]))
    return torch.stack(xs).float(), torch.stack(ys).long().view(-1)


def _length(data: Any) -> int:
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        return int(data[0].shape[0])
    return len(data)


@torch.no_grad()
def _clean_correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    was = model.training
    model.eval()
    try:
        return model(x).argmax(1) == y
    finally:
        model.train(was)


def _robust_correct(model: nn.Module, attack: Any, x: torch.Tensor, y: torch.Tensor,
                    generator: torch.Generator | None) -> torch.Tensor:
    x_adv = attack(model, x, y, generator=generator, check=False)
    return _clean_correct(model, x_adv, y)


def _chunked(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x: torch.Tensor, y: torch.Tensor,
             batch_size: int) -> torch.Tensor:
    return torch.cat([fn(x[i:i + batch_size], y[i:i + batch_size]) for i in range(0, x.shape[0], batch_size)])


def _generator(device: torch.device | str, seed: int) -> torch.Generator:
    g = torch.Generator(device=torch.device(device))
    g.manual_seed(seed)
    return g


def _defense_threat(trainer: Any, who: str) -> Any:
    """The trainer's defense's threat model (:func:`toolbox.defense.defense_threat`)."""
    from ..defense import defense_threat

    threat = defense_threat(getattr(trainer, "defense", None))
    if threat is None:
        raise ValueError(f"{who} needs attack=: the defense {getattr(trainer, 'defense', None)!r} has no threat "
                         "model to attack in (e.g. attack=tb.attack('pgd', threat=tb.Linf(0.3), steps=10))")
    return threat


# ------------------------------------------------------------------------------- progress
class ProgressBar(Callback):
    """A tqdm bar per epoch over the batches, showing the running mean of the step metrics
    ``loss`` and ``acc`` (or ``adv_acc``).

    On a TTY outside CI the bar draws; elsewhere (log files, batch jobs, CI) one plain line
    per epoch goes to stderr instead (``epoch 3/10: loss 0.0473, acc 0.9848, 19.1 s``), so
    long runs still show where they are.  ``enabled=True`` always draws the bar,
    ``enabled=False`` prints nothing.  Only the main process reports.
    """

    order = 50

    def __init__(self, enabled: bool | None = None, *, keys: tuple[str, ...] = ("loss", "acc", "adv_acc")) -> None:
        if enabled is not None and not isinstance(enabled, bool):
            raise ValueError(f"enabled must be True, False or None, got {enabled!r}")
        self.enabled = enabled
        self.keys = tuple(keys)
        self._bar = None
        self._sums: dict[str, float] = {}
        self._count = 0
        self._desc = ""
        self._lines = False
        self._t0 = 0.0

    @property
    def active(self) -> bool:
        """Whether the bar draws: ``enabled`` if given, else stderr is a TTY and ``CI`` is unset."""
        from ..eval import _show_progress

        return _show_progress(self.enabled)

    def on_epoch_start(self, trainer, epoch):
        import time

        from ..eval import _progress_mode

        self._close()
        self._sums, self._count = {}, 0
        mode = _progress_mode(self.enabled) if _is_main(trainer) else None
        self._lines = mode == "lines"
        if mode is None:
            return
        spe = getattr(trainer, "steps_per_epoch", None)
        total_steps = getattr(trainer, "total_steps", None)
        epochs = (total_steps // spe) if spe and total_steps else None
        self._desc = f"epoch {epoch + 1}" + (f"/{epochs}" if epochs else "")
        self._t0 = time.perf_counter()
        if mode == "bar":
            from tqdm.auto import tqdm

            self._bar = tqdm(total=spe, desc=self._desc, leave=True, dynamic_ncols=True, file=sys.stderr)

    def on_batch_end(self, trainer, batch, logs):
        if self._bar is None and not self._lines:
            return
        self._count += 1
        for k in self.keys:
            v = logs.get(k)
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                self._sums[k] = self._sums.get(k, 0.0) + float(v)
        if self._bar is not None:
            self._bar.update(1)
            self._bar.set_postfix({k: f"{s / self._count:.4f}" for k, s in self._sums.items()}, refresh=False)

    def on_epoch_end(self, trainer, epoch, logs):
        if self._lines and self._count:
            import time

            means = "".join(f", {k} {s / self._count:.4f}" for k, s in self._sums.items())
            print(f"{self._desc}: {self._count} steps{means}, {time.perf_counter() - self._t0:.1f} s",
                  file=sys.stderr, flush=True)
        self._lines = False
        self._close()

    def on_fit_end(self, trainer):
        self._lines = False
        self._close()

    def _close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __repr__(self) -> str:
        return f"ProgressBar(enabled={self.enabled!r})"


# ------------------------------------------------------------------------------- history
class History(Callback):
    """Metrics history: :attr:`dataframe` (one row per epoch, the Trainer's ``history``) and,
    with ``csv``, the file ``history.csv`` rewritten atomically after every epoch.

    ``csv=True`` writes ``run_dir/history.csv`` (nothing without a run directory); a path
    writes there (relative paths are relative to ``run_dir`` when the Trainer has one).  Runs
    after the callbacks that add columns (order 90).  Only the main process writes.
    """

    order = 90

    def __init__(self, csv: bool | str | os.PathLike = True) -> None:
        if not isinstance(csv, (bool, str, os.PathLike)):
            raise ValueError(f"csv must be True, False or a path, got {csv!r}")
        self.csv = csv
        self.rows: list[dict] = []
        self.path: Path | None = None

    @property
    def dataframe(self):
        """``pandas.DataFrame`` of the rows seen so far (one per epoch)."""
        import pandas as pd

        return pd.DataFrame(self.rows)

    def _csv_path(self, trainer) -> Path | None:
        if self.csv is False:
            return None
        run_dir = getattr(trainer, "run_dir", None)
        if self.csv is True:
            return None if run_dir is None else Path(run_dir) / "history.csv"
        return _resolve(self.csv, run_dir)

    def on_epoch_end(self, trainer, epoch, logs):
        rows = [dict(r) for r in getattr(trainer, "history", [])]
        # the Trainer may append this epoch's row before or after the callbacks run
        if rows and rows[-1].get("epoch", object()) == logs.get("epoch", object()):
            rows[-1] = dict(logs)
        elif not rows or rows[-1] is not logs:
            rows.append(dict(logs))
        self.rows = rows
        self.path = self._csv_path(trainer)
        if self.path is not None and _is_main(trainer):
            df = self.dataframe
            atomic_write(self.path, lambda tmp: df.to_csv(tmp, index=False))

    def __repr__(self) -> str:
        return f"History(csv={self.csv!r})"


# ------------------------------------------------------------------------------- plots
def _fallback_curves(df, path: str) -> None:
    """A small two-panel PNG (losses | accuracies against epoch) when toolbox.plot is absent."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    x = df["epoch"] + 1 if "epoch" in df else range(1, len(df) + 1)
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.5))
    for col in df.columns:
        if not _numeric(df[col]):
            continue
        if "loss" in col:
            a.plot(x, df[col], marker="o", label=col)
        elif "acc" in col:
            b.plot(x, df[col], marker="o", label=col)
    for ax, title in ((a, "loss"), (b, "accuracy")):
        ax.set_xlabel("epoch")
        ax.set_title(title)
        if ax.lines:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=100)
    plt.close(fig)


def _numeric(series) -> bool:
    import pandas as pd

    return pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series)


class CurvePlot(Callback):
    """Training-curve PNG, redrawn after every epoch from the history rows.

    Draws with ``toolbox.plot.training_curves(history_df, path)`` (a small matplotlib plot of
    the loss and accuracy columns if that module is unavailable).  ``path`` is relative to the
    Trainer's ``run_dir`` (to the working directory without one).  Written atomically by the
    main process only.
    """

    order = 95

    def __init__(self, path: str | os.PathLike = "curves.png") -> None:
        if not isinstance(path, (str, os.PathLike)) or not str(path):
            raise ValueError(f"path must be a file path, got {path!r}")
        self.path = path
        self.written: Path | None = None

    def on_epoch_end(self, trainer, epoch, logs):
        if not _is_main(trainer):
            return
        import pandas as pd

        rows = [dict(r) for r in getattr(trainer, "history", [])]
        if rows and rows[-1].get("epoch", object()) == logs.get("epoch", object()):
            rows[-1] = dict(logs)
        elif not rows or rows[-1] is not logs:
            rows.append(dict(logs))
        df = pd.DataFrame(rows)
        try:
            from ..plot import training_curves
        except ImportError:
            training_curves = _fallback_curves
        out = _resolve(self.path, getattr(trainer, "run_dir", None))

        def write(tmp: str) -> None:
            training_curves(df, tmp)
            if os.path.getsize(tmp) == 0:  # a plotter that picked the format from the suffix
                raise OSError(f"training_curves wrote nothing to {tmp}")

        # the temporary file keeps the .png suffix so suffix-driven savefig picks PNG
        atomic_write(out, write, suffix=out.suffix or ".png")
        self.written = out

    def __repr__(self) -> str:
        return f"CurvePlot(path={str(self.path)!r})"


# ------------------------------------------------------------------------------- early stopping
class RobustEarlyStopping(Callback):
    """Robust early stopping (Rice et al. 2020): evaluate on a fixed validation subset after
    every epoch, keep the weights of the best epoch.

    Each epoch adds ``val_clean_acc`` and ``val_robust_acc`` (accuracy under ``attack``, in
    [0, 1]) to the history row.  The epoch with the highest ``metric`` (any key of the row;
    higher is better, ties keep the earlier epoch) is the best: its model weights are kept in
    memory and written atomically to ``run_dir/best.pt`` (``model.state_dict()`` only, loadable
    with ``torch.load(weights_only=True)``).  ``restore_best=True`` loads them into the model
    at the end of fit.  ``patience`` (epochs without improvement) stops training early.

    Args:
        attack: the validation attack; default PGD-10 (step ``2.5 eps / 10``, random start)
            in the defense's threat model.
        n: number of validation examples (the first ``n`` of ``data``; ``None`` = all).
        data: a dataset or an ``(x, y)`` pair; default the Trainer's ``val_data``.
        patience: stop after this many epochs without improvement (``None``: never).
        metric: the row key to maximise.
        restore_best: load the best weights at fit end.
        batch_size: evaluation chunk size.
        seed: seed of the attack's random starts (the same each epoch, so epochs compare).

    Attributes: ``best_epoch`` (0-based, ``None`` before the first epoch), ``best_score``,
    ``best_state`` (the best weights), ``path`` (``best.pt`` or ``None``).
    """

    order = 20

    def __init__(self, attack: Any = None, n: int | None = 1000, *, data: Any = None,
                 patience: int | None = None, metric: str = "val_robust_acc",
                 restore_best: bool = True, batch_size: int = 250, seed: int = 0) -> None:
        from ..attacks import Attack

        if attack is not None and not isinstance(attack, Attack):
            raise ValueError(f"attack must be a toolbox Attack (tb.attack(...)) or None, got {attack!r}")
        if n is not None:
            check_positive(n, "n", integer=True)
        if patience is not None:
            check_positive(patience, "patience", integer=True)
        if not isinstance(metric, str) or not metric:
            raise ValueError(f"metric must be a history column name, got {metric!r}")
        check_positive(batch_size, "batch_size", integer=True)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seed must be an int, got {seed!r}")
        self.attack, self.n, self.data = attack, n, data
        self.patience, self.metric, self.restore_best = patience, metric, bool(restore_best)
        self.batch_size, self.seed = batch_size, seed
        self._reset()

    def _reset(self) -> None:
        self.best_epoch: int | None = None
        self.best_score: float = -math.inf
        self.best_state: dict | None = None
        self.wait = 0
        self.path: Path | None = None
        self._resumed = False
        self._x = self._y = None

    def on_fit_start(self, trainer):
        if not self._resumed:
            self._reset()
        self._resumed = False
        data = self.data if self.data is not None else getattr(trainer, "val_data", None)
        if data is None:
            raise ValueError("RobustEarlyStopping needs validation data: pass val_data= to fit() or data= here")
        x, y = _take(data, None, self.n, "validation data")
        self._x, self._y = x.to(trainer.device), y.to(trainer.device)
        self._attack = self.attack if self.attack is not None else _default_pgd(trainer, 10, "RobustEarlyStopping")

    def evaluate(self, model: nn.Module, device: Any) -> tuple[float, float]:
        """``(clean accuracy, robust accuracy)`` of ``model`` on the fixed validation subset."""
        gen = _generator(device, self.seed)
        clean = _chunked(lambda x, y: _clean_correct(model, x, y), self._x, self._y, self.batch_size)
        rob = _chunked(lambda x, y: _robust_correct(model, self._attack, x, y, gen), self._x, self._y,
                       self.batch_size)
        return clean.float().mean().item(), (rob & clean).float().mean().item()

    def on_epoch_end(self, trainer, epoch, logs):
        model = _unwrap(trainer.model)
        clean, robust = self.evaluate(model, trainer.device)
        logs["val_clean_acc"], logs["val_robust_acc"] = clean, robust
        if self.metric not in logs:
            raise ValueError(f"metric {self.metric!r} is not a history column; columns: {sorted(logs)}")
        score = float(logs[self.metric])
        if score > self.best_score:
            self.best_score, self.best_epoch, self.wait = score, int(epoch), 0
            self.best_state = _clone_state(model.state_dict())
            run_dir = getattr(trainer, "run_dir", None)
            if run_dir is not None and _is_main(trainer):
                self.path = Path(run_dir) / "best.pt"
                state = self.best_state
                atomic_write(self.path, lambda tmp: torch.save(state, tmp))
        else:
            self.wait += 1
        logs["best_epoch"] = self.best_epoch
        if self.patience is not None and self.wait >= self.patience:
            trainer.stop_training = True

    def on_fit_end(self, trainer):
        if self.restore_best and self.best_state is not None:
            _unwrap(trainer.model).load_state_dict(self.best_state)

    def state_dict(self) -> dict:
        return {"best_epoch": self.best_epoch, "best_score": self.best_score, "wait": self.wait,
                "best_state": self.best_state}

    def load_state_dict(self, state: dict) -> None:
        self.best_epoch, self.best_score = state["best_epoch"], float(state["best_score"])
        self.wait = int(state["wait"])
        self.best_state = None if state["best_state"] is None else _clone_state(state["best_state"])
        self._resumed = True

    def __repr__(self) -> str:
        return (f"RobustEarlyStopping(attack={self.attack!r}, n={self.n}, patience={self.patience}, "
                f"metric={self.metric!r})")


def _default_pgd(trainer: Any, steps: int, who: str, step_size: float | None = None) -> Any:
    from ..attacks import attack

    return attack("pgd", threat=_defense_threat(trainer, who), steps=steps, step_size=step_size)


# ------------------------------------------------------------------------------- CO detector
class CODetector(Callback):
    """Catastrophic-overfitting (CO) detector with rollback (Wong, Rice & Kolter 2020).

    CO is the sudden collapse of a fast (FGSM-trained) model's robustness to a multi-step
    attack while it stays robust to the single-step attack it trains on.  It is visible on the
    *training* data.  At fit start the detector fixes one held training batch; at every check
    (``every="epoch"``: after each epoch; ``every=k``: every ``k`` optimizer steps) it measures
    on that batch, with the model in eval mode and fixed attack seeds, the accuracy under
    ``attack_strong`` (PGD) and ``attack_weak`` (FGSM).

    **Rule.**  A check *fires* when

    * the PGD accuracy dropped by more than ``threshold`` (absolute, accuracies in [0, 1])
      below the PGD accuracy of the last good check — fast_adversarial's early stop: PGD-5
      (step eps/4, 1 restart) on one training batch, stop on a drop of more than 0.2 and keep
      the weights of the previous check; or
    * FGSM accuracy exceeds PGD accuracy by more than ``gap_threshold`` — the CO signature
      "FGSM accuracy ≫ PGD accuracy" of environment.md §4B.  On MNIST the clamped-start
      collapse sets in early in training, before the PGD accuracy was ever high, so the drop
      rule alone misses it: measured with the defaults on the held training batch, collapsing
      runs reached gaps of 0.5–0.95 while healthy paper-exact FGSM-RS runs stayed below 0.3.
      ``gap_threshold=None`` turns this rule off (the paper's rule alone).

    A check that does not fire is *good*: its model weights and optimizer state become the
    rollback point (a check at fit start gives the first one).  When a check fires the
    detector rolls the model and the optimizer back to the last good state, appends an event
    to :attr:`events` (``epoch``, ``step``, ``pgd_acc``, ``fgsm_acc``, ``good_pgd_acc``,
    ``good_step``, ``rule``) and then, per ``action``:

    * ``"stop"``: sets ``trainer.stop_training``; no further checks.  Steps the Trainer still
      takes before it stops (the rest of the epoch) are undone again at the end of the
      epoch and at fit end, so the final model is the last good one.
    * ``"continue"``: training goes on from the restored weights.

    The LR/eps schedules and the step counter are not rolled back.  Each epoch's history row
    gets ``co_event`` (number of events in the epoch), ``co_pgd_acc`` and ``co_fgsm_acc`` (the
    last check's accuracies).

    Args:
        attack_strong: default PGD-5, step eps/4, one random start, in the defense's threat
            model.
        attack_weak: default FGSM (step eps, no random start) in that threat model.
        every: ``"epoch"`` or a positive number of optimizer steps.
        threshold: allowed drop of PGD accuracy, in [0, 1].
        gap_threshold: the allowed FGSM − PGD accuracy gap, in [0, 1] (``None``: no gap rule).
        action: ``"stop"`` or ``"continue"``.
        batch: the held batch: an ``(x, y)`` pair of tensors, or a number of training
            examples drawn (with ``seed``) from the training data at fit start; ``None`` =
            the Trainer's batch size.
        seed: seed for drawing the batch and for the attacks' random starts.

    Attributes: ``events`` (list of dicts), ``good_state`` / ``good_optimizer_state`` (the
    rollback point), ``good_pgd_acc``, ``checks`` (list of ``(step, pgd_acc, fgsm_acc)``).
    """

    order = 10

    def __init__(self, attack_strong: Any = None, attack_weak: Any = None, *, every: str | int = "epoch",
                 threshold: float = 0.2, gap_threshold: float | None = 0.5, action: str = "stop",
                 batch: Any = None, seed: int = 0) -> None:
        from ..attacks import Attack

        for name, a in (("attack_strong", attack_strong), ("attack_weak", attack_weak)):
            if a is not None and not isinstance(a, Attack):
                raise ValueError(f"{name} must be a toolbox Attack (tb.attack(...)) or None, got {a!r}")
        if every != "epoch":
            if isinstance(every, bool) or not isinstance(every, int) or every < 1:
                raise ValueError(f"every must be 'epoch' or a positive number of steps, got {every!r}")
        for name, v in (("threshold", threshold), ("gap_threshold", gap_threshold)):
            if v is None and name == "gap_threshold":
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 1:
                raise ValueError(f"{name} must be a number in [0, 1], got {v!r}")
        check_choice(action, "action", ("stop", "continue"))
        if batch is not None and not isinstance(batch, (tuple, list)):
            check_positive(batch, "batch", integer=True)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seed must be an int, got {seed!r}")
        self.attack_strong, self.attack_weak = attack_strong, attack_weak
        self.every, self.threshold = every, float(threshold)
        self.gap_threshold = None if gap_threshold is None else float(gap_threshold)
        self.action, self.batch, self.seed = action, batch, seed
        self._reset()

    def _reset(self) -> None:
        self.events: list[dict] = []
        self.checks: list[tuple[int, float, float]] = []
        self.good_state: dict | None = None
        self.good_optimizer_state: dict | None = None
        self.good_pgd_acc: float | None = None
        self.good_step: int | None = None
        self.stopped = False
        self.batch_index: torch.Tensor | None = None
        self._last_check_step = 0
        self._epoch_events = 0
        self._last = (math.nan, math.nan)
        self._resumed = False

    # -- setup ---------------------------------------------------------------------------------
    def on_fit_start(self, trainer):
        resumed = self._resumed
        if not resumed:
            keep = self.batch_index
            self._reset()
            self.batch_index = keep if isinstance(self.batch, (tuple, list)) else None
        self._resumed = False
        device = trainer.device
        if isinstance(self.batch, (tuple, list)):
            x, y = _take(self.batch, None, None, "batch")
        else:
            data = getattr(trainer, "train_data", None)
            if data is None:
                raise ValueError("CODetector needs batch=(x, y) or a Trainer with train_data")
            n = self.batch if self.batch is not None else int(getattr(trainer, "batch_size", 100))
            if self.batch_index is None:
                g = torch.Generator()
                g.manual_seed(self.seed)
                self.batch_index = torch.randperm(_length(data), generator=g)[:n]
            x, y = _take(data, self.batch_index, None, "training data")
        self._x, self._y = x.to(device), y.to(device)
        self._strong = self.attack_strong
        if self._strong is None:
            thr = _defense_threat(trainer, "CODetector")
            self._strong = _default_pgd(trainer, 5, "CODetector", step_size=_quarter(thr.eps))
        if self.attack_weak is not None:
            self._weak = self.attack_weak
        else:
            from ..attacks import attack

            self._weak = attack("fgsm", threat=_defense_threat(trainer, "CODetector"))
        self._last_check_step = int(getattr(trainer, "step", 0))
        if not resumed:
            self.check(trainer)  # the first rollback point: the weights training starts from

    # -- the check -----------------------------------------------------------------------------
    def measure(self, model: nn.Module, device: Any) -> tuple[float, float]:
        """``(PGD accuracy, FGSM accuracy)`` in [0, 1] of ``model`` on the held batch."""
        clean = _clean_correct(model, self._x, self._y)
        pgd = _robust_correct(model, self._strong, self._x, self._y, _generator(device, self.seed)) & clean
        fgsm = _robust_correct(model, self._weak, self._x, self._y, _generator(device, self.seed + 1)) & clean
        return pgd.float().mean().item(), fgsm.float().mean().item()

    def check(self, trainer) -> bool:
        """Run one check now; returns whether it fired (and rolled back)."""
        model = _unwrap(trainer.model)
        step, epoch = int(getattr(trainer, "step", 0)), int(getattr(trainer, "epoch", 0))
        pgd, fgsm = self.measure(model, trainer.device)
        self.checks.append((step, pgd, fgsm))
        self._last = (pgd, fgsm)
        self._last_check_step = step
        rule = None
        if self.good_pgd_acc is not None and pgd < self.good_pgd_acc - self.threshold:
            rule = "pgd-drop"
        elif self.gap_threshold is not None and fgsm - pgd > self.gap_threshold:
            rule = "fgsm-pgd-gap"
        if rule is None:
            self.good_state = _clone_state(model.state_dict())
            opt = getattr(trainer, "optimizer", None)
            self.good_optimizer_state = None if opt is None else _clone_state(opt.state_dict())
            self.good_pgd_acc, self.good_step = pgd, step
            return False
        self.events.append({"epoch": epoch, "step": step, "pgd_acc": pgd, "fgsm_acc": fgsm,
                            "good_pgd_acc": self.good_pgd_acc, "good_step": self.good_step, "rule": rule})
        self._epoch_events += 1
        self.rollback(trainer)
        if self.action == "stop":
            self.stopped = True
            trainer.stop_training = True
        if _is_main(trainer):
            warnings.warn(f"catastrophic overfitting detected at epoch {epoch} step {step} ({rule}: PGD acc "
                          f"{pgd:.3f}, FGSM acc {fgsm:.3f}, last good PGD acc {self.good_pgd_acc:.3f} at step "
                          f"{self.good_step}); rolled back to step {self.good_step}"
                          + ("; stopping" if self.action == "stop" else ""), RuntimeWarning, stacklevel=2)
        return True

    def rollback(self, trainer) -> None:
        """Load the last good model weights and optimizer state."""
        if self.good_state is None:
            return
        _unwrap(trainer.model).load_state_dict(self.good_state)
        opt = getattr(trainer, "optimizer", None)
        if opt is not None and self.good_optimizer_state is not None:
            opt.load_state_dict(_clone_state(self.good_optimizer_state))

    # -- hooks ---------------------------------------------------------------------------------
    def on_epoch_start(self, trainer, epoch):
        self._epoch_events = 0

    def on_batch_end(self, trainer, batch, logs):
        if self.every == "epoch" or self.stopped:
            return
        if int(getattr(trainer, "step", 0)) - self._last_check_step >= self.every:
            self.check(trainer)

    def on_epoch_end(self, trainer, epoch, logs):
        if self.stopped:
            self.rollback(trainer)  # undo the steps taken after the event in this epoch
        elif self.every == "epoch":
            self.check(trainer)
        logs["co_event"] = self._epoch_events
        logs["co_pgd_acc"], logs["co_fgsm_acc"] = self._last

    def on_fit_end(self, trainer):
        if self.stopped:
            self.rollback(trainer)

    # -- state ---------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"events": [dict(e) for e in self.events], "checks": [list(c) for c in self.checks],
                "good_state": self.good_state, "good_optimizer_state": self.good_optimizer_state,
                "good_pgd_acc": self.good_pgd_acc, "good_step": self.good_step, "stopped": self.stopped,
                "batch_index": self.batch_index, "last_check_step": self._last_check_step,
                "last": list(self._last)}

    def load_state_dict(self, state: dict) -> None:
        self.events = [dict(e) for e in state["events"]]
        self.checks = [tuple(c) for c in state["checks"]]
        self.good_state = None if state["good_state"] is None else _clone_state(state["good_state"])
        self.good_optimizer_state = (None if state["good_optimizer_state"] is None
                                     else _clone_state(state["good_optimizer_state"]))
        self.good_pgd_acc, self.good_step = state["good_pgd_acc"], state["good_step"]
        self.stopped = bool(state["stopped"])
        self.batch_index = state["batch_index"]
        self._last_check_step = int(state["last_check_step"])
        self._last = tuple(state["last"])
        self._resumed = True

    def __repr__(self) -> str:
        return (f"CODetector(every={self.every!r}, threshold={self.threshold}, "
                f"gap_threshold={self.gap_threshold}, action={self.action!r})")


def _quarter(eps: Any) -> Any:
    return eps / 4


@hookimpl
def toolbox_register(registry) -> None:
    registry.add_callback("progress-bar", ProgressBar)
    registry.add_callback("history", History)
    registry.add_callback("curve-plot", CurvePlot)
    registry.add_callback("robust-early-stopping", RobustEarlyStopping)
    registry.add_callback("co-detector", CODetector)
    from .guided import GuidedLR

    registry.add_callback("guided-lr", GuidedLR)
