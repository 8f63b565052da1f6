"""Checkpoint files: atomic writes, safe reads, and the :class:`Checkpoint` callback.

A checkpoint is a ``torch.save`` of plain containers and tensors only (so it loads with
``torch.load(weights_only=True)``): ``{"format": "toolbox-checkpoint", "version": 1,
"fingerprint": {...}, "epoch": completed epochs, "step": optimizer steps, "model": state_dict,
"optimizer", "scheduler", "scaler", "rng", "store", "defense", "callbacks", "history"}``.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch

from .._checks import check_positive
from .._io import atomic_write
from .callbacks import Callback

FORMAT = "toolbox-checkpoint"
VERSION = 1


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save(obj)`` to a temporary file in ``path``'s directory, then ``os.replace``:
    a reader (or a resumed run after a crash) sees the old file or the new one, never half.
    The file gets the usual permissions (umask), and is fsynced before the rename."""
    return atomic_write(path, lambda tmp: torch.save(obj, tmp), fsync=True)


def atomic_copy(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Copy ``src`` to ``dst`` atomically (temporary file + ``os.replace``)."""
    return atomic_write(dst, lambda tmp: shutil.copyfile(src, tmp))


def read_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """Load a toolbox checkpoint with ``torch.load(weights_only=True)``.

    A missing, corrupt or foreign file (not written by the toolbox Trainer) raises
    ``ValueError`` naming the path.  The model weights are under ``["model"]``.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"checkpoint {str(path)!r} does not exist or is not a file")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # pickle/zip errors differ by torch version
        raise ValueError(f"checkpoint {str(path)!r} is corrupt or not a torch file that loads with "
                         f"weights_only=True: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{str(path)!r} is not a toolbox checkpoint (a file written by Trainer.save_checkpoint); "
                         f"found {type(state).__name__}"
                         + (f" with keys {sorted(map(str, state))[:8]}" if isinstance(state, dict) else ""))
    if state.get("version") != VERSION:
        raise ValueError(f"checkpoint {str(path)!r} has format version {state.get('version')!r}; "
                         f"this toolbox reads version {VERSION}")
    return state


_EPOCH_FILE = re.compile(r"^epoch_(\d+)\.pt$")


def latest_checkpoint(run_dir: str | os.PathLike, dirname: str = "checkpoints") -> Path | None:
    """``run_dir/dirname/last.pt`` if present, else the highest ``epoch_XXX.pt``, else ``None``."""
    d = Path(run_dir) / dirname
    if (d / "last.pt").is_file():
        return d / "last.pt"
    found = sorted((int(m.group(1)), p) for p in d.glob("epoch_*.pt") if (m := _EPOCH_FILE.match(p.name)))
    return found[-1][1] if found else None


class Checkpoint(Callback):
    """Save the whole training state at the end of epochs, atomically, on rank 0.

    Writes ``run_dir/<dirname>/epoch_XXX.pt`` (``XXX`` = completed epochs, 1-based) every
    ``every`` epochs and after the last one, keeps the newest ``keep_last`` of those
    (``None``: all), and refreshes ``last.pt`` at every epoch end so ``fit(resume=True)``
    continues from the latest state.  Runs last (``order = 100``) so it captures what the other
    callbacks added to the epoch's history row.  Needs ``Trainer(run_dir=...)``.
    """

    order = 100

    def __init__(self, every: int = 1, keep_last: int | None = 2, dirname: str = "checkpoints") -> None:
        self.every = check_positive(every, "every", integer=True)
        if keep_last is not None:
            check_positive(keep_last, "keep_last", integer=True)
        self.keep_last = keep_last
        if not isinstance(dirname, str) or not dirname:
            raise ValueError(f"dirname must be a non-empty string, got {dirname!r}")
        self.dirname = dirname

    def directory(self, trainer: Any) -> Path:
        if trainer.run_dir is None:
            raise ValueError("the Checkpoint callback needs Trainer(run_dir=...)")
        return Path(trainer.run_dir) / self.dirname

    def on_fit_start(self, trainer: Any) -> None:
        d = self.directory(trainer)
        if trainer.is_main_process:
            d.mkdir(parents=True, exist_ok=True)

    def on_epoch_end(self, trainer: Any, epoch: int, logs: dict) -> None:
        d = self.directory(trainer)
        done = epoch + 1
        last_epoch = done >= trainer.epochs or trainer.stop_training
        keep = done % self.every == 0 or last_epoch
        target = d / (f"epoch_{done:03d}.pt" if keep else "last.pt")
        trainer.save_checkpoint(target)      # collective under DDP; only rank 0 writes
        if not trainer.is_main_process:
            return
        if keep:
            atomic_copy(target, d / "last.pt")
            if self.keep_last is not None:
                old = sorted((int(m.group(1)), p) for p in d.glob("epoch_*.pt") if (m := _EPOCH_FILE.match(p.name)))
                for _, p in old[:-self.keep_last]:
                    p.unlink(missing_ok=True)
