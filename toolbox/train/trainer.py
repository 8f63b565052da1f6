"""The Trainer: pairs any Defense with any Attack and owns everything around the loss.

One optimizer step::

    lr  = lr_schedule(progress)        # if given: absolute learning rate for every param group
    eps = eps_schedule(progress)       # if given: passed to the defense as batch.eps
    loss, logs = defense.loss(model, Batch(x, y, index, epoch, step, eps, store, trainer, extra))
    backward -> (unscale, clip grad norm) -> optimizer.step() -> scheduler.step()

with ``progress = (step + 1) / steps_per_epoch`` in epochs (the point reached once this step
is done).  ``fit`` returns one history row per epoch: ``epoch`` (0-based, as in the callback
hooks), ``step`` (optimizer steps so far), ``lr`` and ``eps`` (at the epoch's last step),
``time_s`` (the epoch's training loop), the batch logs averaged over the epoch's examples
(``train_<key>``, reduced over all ranks under DDP; ``grad_norm`` is the norm before clipping
when ``grad_clip`` is set), and whatever callbacks add.

Batch logs may be numbers or detached 1-element tensors.  Tensors are summed on the training
device and read back once per epoch, so a GPU run does not wait for the device at every step;
callbacks whose ``on_batch_end`` is overridden still get plain floats.

Under ``torchrun`` the defense sees the model wrapped for DDP
(:class:`~toolbox.train.distributed.DDPModel`): training forwards go through
``DistributedDataParallel``, while attacks (which freeze the parameters) and ``no_grad`` calls
use the plain module, so an attack's input gradient never involves DDP's reducer.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .._checks import check_choice, check_positive
from ..defense import Batch, Defense, defense_threat
from . import distributed as D
from .callbacks import Callback
from .checkpoint import FORMAT, VERSION, atomic_save, latest_checkpoint, read_checkpoint
from .schedules import make_schedule, schedule_spec
from .store import Store

log = logging.getLogger("toolbox.train")

_AMP_CHOICES = (False, True, "fp16", "bf16")

_OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "sgd": torch.optim.SGD,
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
}


def _plain(value: Any) -> Any:
    """A weights_only-safe, comparable copy (dicts/lists/str/int/float/bool/None)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, torch.Tensor):
        return value.tolist() if value.numel() <= 16 else f"tensor{tuple(value.shape)}"
    return repr(value)


def _build_optimizer(spec: Any, params: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
    if spec is None:
        return torch.optim.Adam(params, lr=1e-3)
    if isinstance(spec, torch.optim.Optimizer):
        return spec
    if isinstance(spec, str):
        spec = {"name": spec}
    if isinstance(spec, dict):
        kw = dict(spec)
        name = str(kw.pop("name", "")).lower()
        if name not in _OPTIMIZERS:
            raise ValueError(f"optimizer name must be one of {sorted(_OPTIMIZERS)}, got {name!r}")
        return _OPTIMIZERS[name](params, **kw)
    if callable(spec):
        opt = spec(params)
        if not isinstance(opt, torch.optim.Optimizer):
            raise ValueError(f"optimizer factory must return a torch.optim.Optimizer, got {type(opt).__name__}")
        return opt
    raise ValueError(f"optimizer must be None, a torch.optim.Optimizer, 'sgd'/'adam'/'adamw', a dict "
                     f"{{'name': ..., 'lr': ...}} or a callable(params), got {spec!r}")


# --------------------------------------------------------------------------------------------- RNG
def _rng_state(generator: torch.Generator) -> dict[str, Any]:
    np_state = np.random.get_state()
    py_state = random.getstate()
    out = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "gauss": float(np_state[4])},
        "python": {"version": int(py_state[0]), "state": torch.tensor(py_state[1], dtype=torch.int64),
                   "gauss": py_state[2]},
        "generator": generator.get_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def _set_rng_state(state: dict[str, Any], generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["state"].tolist()), p["gauss"]))
    generator.set_state(state["generator"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _seed_all(seed: int, generator: torch.Generator) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)
    generator.manual_seed(seed)


# ------------------------------------------------------------------------------------ batch logs
def _check_loss_output(out: Any, defense: Defense) -> tuple[torch.Tensor, dict[str, Any]]:
    """``(loss, logs)`` from ``defense.loss``, checked: a scalar tensor with a graph and a dict."""
    if not isinstance(out, tuple) or len(out) != 2:
        raise ValueError(f"{type(defense).__name__}.loss(model, batch) must return (loss, logs), "
                         f"got {type(out).__name__}")
    loss, logs = out
    if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
        got = f"a tensor of shape {tuple(loss.shape)}" if isinstance(loss, torch.Tensor) else type(loss).__name__
        raise ValueError(f"{type(defense).__name__}.loss must return a scalar (0-dim) loss tensor, got {got}")
    if not loss.requires_grad:
        raise ValueError(f"{type(defense).__name__}.loss returned a loss that does not require grad "
                         "(computed under torch.no_grad() or detached?)")
    if logs is None:
        return loss, {}
    if not isinstance(logs, dict):
        raise ValueError(f"{type(defense).__name__}.loss must return logs as a dict of numbers, "
                         f"got {type(logs).__name__}")
    return loss, dict(logs)


def _to_float(value: Any) -> Any:
    return value.item() if isinstance(value, torch.Tensor) else value


class _LogSums:
    """Example-weighted sums of batch logs over an epoch.

    Tensor logs (1-element, any device) are summed on the training device without a host
    sync, all of a step's tensors in one stacked add; numbers are summed on the host.
    :meth:`means` syncs once and reduces over all ranks.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.dtype = torch.float32 if device.type == "mps" else torch.float64
        self.host: dict[str, float] = {}
        self.dev: dict[tuple[str, ...], torch.Tensor] = {}   # key tuple -> (len(keys),) sums
        self.counts: dict[str, float] = {}

    def add(self, logs: dict[str, Any], n: int) -> None:
        keys: list[str] = []
        vals: list[torch.Tensor] = []
        for k, v in logs.items():
            if isinstance(v, torch.Tensor):
                if v.numel() != 1:
                    raise ValueError(f"batch log {k!r} must be a number or a 1-element tensor, "
                                     f"got a tensor of shape {tuple(v.shape)}")
                keys.append(k)
                vals.append(v.detach() if v.dim() == 0 else v.detach().reshape(()))
            else:
                if not isinstance(v, (int, float, np.number)):
                    raise ValueError(f"batch log {k!r} must be a number or a 1-element tensor, got {v!r}")
                self.host[k] = self.host.get(k, 0.0) + float(v) * n
            self.counts[k] = self.counts.get(k, 0.0) + n
        if not keys:
            return
        try:
            vec = torch.stack(vals)
        except RuntimeError:   # tensors on different devices
            vec = torch.stack([v.to(self.device, self.dtype) for v in vals])
        group = tuple(keys)
        acc = self.dev.get(group)
        if acc is None:
            acc = self.dev[group] = torch.zeros(len(keys), dtype=self.dtype, device=self.device)
        acc.add_(vec.to(self.device, non_blocking=True), alpha=n)

    def means(self) -> dict[str, float]:
        keys = sorted(self.counts)
        if D.is_enabled():
            keys = sorted(set().union(*D.all_gather_object(keys)))
        if not keys:
            return {}
        pos = {k: i for i, k in enumerate(keys)}
        host = torch.tensor([self.host.get(k, 0.0) for k in keys] + [self.counts.get(k, 0.0) for k in keys],
                            dtype=self.dtype)
        t = host.to(self.device)
        for group, acc in self.dev.items():
            t.index_add_(0, torch.tensor([pos[k] for k in group], device=self.device), acc)
        D.all_reduce_sum(t)
        vals = t.tolist()
        sums, counts = vals[: len(keys)], vals[len(keys):]
        return {k: s / c if c else float("nan") for k, s, c in zip(keys, sums, counts, strict=True)}


class Trainer:
    """Train ``model`` with ``defense`` (any :class:`~toolbox.defense.Defense`).

    Arguments: ``optimizer`` (a torch optimizer; ``None`` = ``Adam(lr=1e-3)``; also ``"sgd"``,
    ``"adam"``, ``"adamw"``, ``{"name": "sgd", "lr": 0.1, "momentum": 0.9}`` or a callable
    ``params -> optimizer``); ``scheduler`` (a torch LR scheduler, or a callable ``optimizer ->
    scheduler``, stepped once per optimizer step; not together with ``lr_schedule``);
    ``callbacks`` (:class:`~toolbox.train.callbacks.Callback` objects, run in ascending
    ``order``); ``device``; ``amp`` (``False``, ``True``/``"fp16"`` = float16 autocast with a
    GradScaler, ``"bf16"`` = bfloat16 autocast; CUDA only, a no-op elsewhere);
    ``batch_size`` (the *global* batch: each of N torchrun processes takes ``batch_size / N``);
    ``lr_schedule`` / ``eps_schedule`` (specs for :func:`~toolbox.train.make_schedule`; the
    learning rate is set absolutely on every param group, eps reaches the defense as
    ``batch.eps``); ``grad_clip`` (max global L2 norm of the gradients, or ``None``);
    ``seed`` (seeds the data order, the Trainer's generator ``batch.extra["generator"]`` and,
    at the start of a fresh ``fit``, the global torch/numpy/random RNGs (``seed + rank`` on each
    rank); ``None`` draws one); ``run_dir`` (where callbacks and checkpoints write);
    ``transform`` (a batch transform ``t(x, y, generator) -> (x, y, extra)``) and ``loader``
    (``"auto"``, ``"device"``, ``"torch"``) for :func:`toolbox.data.make_loader`.
    """

    def __init__(self, model: nn.Module, defense: Defense, optimizer: Any = None, scheduler: Any = None,
                 callbacks: Iterable[Callback] = (), device: str | torch.device = "cpu", amp: Any = False,
                 batch_size: int = 100, lr_schedule: Any = None, eps_schedule: Any = None,
                 grad_clip: float | None = None, seed: int | None = 0, run_dir: str | os.PathLike | None = None,
                 transform: Callable | None = None, loader: str = "auto") -> None:
        if not isinstance(model, nn.Module):
            raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not isinstance(defense, Defense):
            raise ValueError(f"defense must be a toolbox Defense (tb.defense(...)), got {type(defense).__name__}")
        check_positive(batch_size, "batch_size", integer=True)
        if grad_clip is not None:
            check_positive(grad_clip, "grad_clip")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ValueError(f"seed must be an int or None, got {seed!r}")
        if amp not in _AMP_CHOICES or isinstance(amp, int) and not isinstance(amp, bool):
            raise ValueError(f"amp must be one of False, True, 'fp16', 'bf16', got {amp!r}")
        check_choice(loader, "loader", ("auto", "device", "torch"))
        if scheduler is not None and lr_schedule is not None:
            raise ValueError("give either scheduler= (a torch LR scheduler) or lr_schedule= (a schedule spec), not both")
        callbacks = list(callbacks)
        for cb in callbacks:
            if not isinstance(cb, Callback):
                raise ValueError(f"callbacks must be toolbox Callback objects, got {type(cb).__name__}")
        self._lr_spec = lr_schedule
        self._eps_spec = eps_schedule
        make_schedule(lr_schedule, epochs=1)   # validate the specs now (epochs filled in by fit)
        make_schedule(eps_schedule, epochs=1)

        dist_info, self.device = D.setup(device)
        self.rank, self.world_size = dist_info.rank, dist_info.world_size
        self.is_main_process = self.rank == 0
        if batch_size % self.world_size:
            raise ValueError(f"batch_size (the global batch) must be divisible by the number of processes "
                             f"{self.world_size}, got {batch_size}")
        self.batch_size = int(batch_size)

        self.module = model.to(self.device)
        self.model = self.module
        self._train_model: nn.Module = D.DDPModel(self.module, self.device) if dist_info.enabled else self.module
        self.defense = defense
        self.optimizer = _build_optimizer(optimizer, self.module.parameters())
        if scheduler is not None and not hasattr(scheduler, "step"):
            scheduler = scheduler(self.optimizer)
        self.scheduler = scheduler
        self.grad_clip = grad_clip
        self.callbacks = sorted(callbacks, key=lambda c: getattr(c, "order", 0))
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.transform = transform
        self.loader_kind = loader

        # AMP: CUDA only
        self.amp = amp
        self._amp_dtype: torch.dtype | None = None
        if amp:
            if self.device.type == "cuda":
                self._amp_dtype = torch.bfloat16 if amp == "bf16" else torch.float16
            else:
                log.warning("amp=%r has no effect on device %s (mixed precision is CUDA only); "
                            "training in float32", amp, self.device)
        self._use_scaler = self._amp_dtype == torch.float16
        self.scaler = torch.amp.GradScaler("cuda", enabled=self._use_scaler) if self.device.type == "cuda" \
            else torch.amp.GradScaler("cpu", enabled=False)

        # seeding (one data seed for every rank); seed=None draws one, and a resume adopts the
        # checkpoint's
        self.seed_arg = seed
        if seed is None:
            seed = D.broadcast_object(int.from_bytes(os.urandom(4), "little"))
        self.seed = int(seed)
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(self.seed + self.rank)

        # state
        self.store: Store | None = None
        self.epoch = 0
        self.step = 0
        self.epochs: int | None = None
        self.steps_per_epoch = 0
        self.total_steps = 0
        self.history: list[dict[str, Any]] = []
        self.stop_training = False
        self._in_epoch = False
        self.train_data: Any = None
        self.val_data: Any = None
        self.loader: Any = None
        self.current_eps: float = float("nan")
        self.current_lr: float = float(self.optimizer.param_groups[0]["lr"])
        self.lr_schedule: Callable[[float], float] | None = None
        self.eps_schedule: Callable[[float], float] | None = None

    # ------------------------------------------------------------------------------ properties
    @property
    def unwrapped_model(self) -> nn.Module:
        return self.module

    def _hook(self, event: str, logs: dict) -> None:
        from ..plugins import system

        system().pm.hook.toolbox_trainer_event(event=event, trainer=self, logs=logs)

    def _default_eps(self) -> float:
        eps = getattr(defense_threat(self.defense), "eps", None)
        return float(eps) if isinstance(eps, (int, float)) else float("nan")

    # ------------------------------------------------------------------------------ fit
    def fit(self, train_data: Any, epochs: int, val_data: Any = None,
            resume: str | os.PathLike | bool | None = None) -> Any:
        """Train for ``epochs`` epochs (in total, counting those of a resumed checkpoint).

        ``train_data``: a :class:`toolbox.data.Dataset` (or a torch dataset of ``(x, y, index)``
        items); ``val_data`` is kept for callbacks.  ``resume``: a checkpoint path, or ``True``
        for the latest one in ``run_dir/checkpoints`` (a fresh start when there is none); the
        run then continues exactly where the checkpoint left off.  Returns the history as a
        ``pandas.DataFrame`` (one row per epoch, including those before the resume point).

        Calling ``fit`` again on the same Trainer without ``resume`` trains ``epochs`` *more*
        epochs from the current weights (optimizer state and store kept; the epoch count,
        schedules and history start over, as in Keras): ``fit(d, 2)`` then ``fit(d, 3)`` is
        five epochs.  To continue one run to a larger total, checkpoint it and pass ``resume``.
        """
        import pandas as pd

        from ..data import make_loader

        check_positive(epochs, "epochs", integer=True)
        if train_data is None:
            raise ValueError("train_data must be a dataset, got None")
        self.epochs = int(epochs)
        self.train_data, self.val_data = train_data, val_data
        self.loader = make_loader(train_data, self.batch_size // self.world_size, shuffle=True, device=self.device,
                                  seed=self.seed, shard=(self.rank, self.world_size) if self.world_size > 1 else None,
                                  transform=self.transform, loader=self.loader_kind)
        self.steps_per_epoch = len(self.loader)
        if self.steps_per_epoch == 0:
            raise ValueError(f"train_data has no batches (len {len(train_data)}, batch_size {self.batch_size})")
        self.total_steps = self.steps_per_epoch * self.epochs
        self.lr_schedule = make_schedule(self._lr_spec, epochs=self.epochs)
        self.eps_schedule = make_schedule(self._eps_spec, epochs=self.epochs)
        indices = getattr(train_data, "indices", None)
        size = int(indices.max()) + 1 if isinstance(indices, torch.Tensor) and indices.numel() else len(train_data)
        if self.store is None or self.store.size != size:
            self.store = Store(size, self.device)

        path = self._resolve_resume(resume)
        if path is not None:
            self.load_checkpoint(path)
            log.info("resumed from %s at epoch %d (step %d)", path, self.epoch, self.step)
        else:
            self.epoch, self.step, self.history = 0, 0, []
            _seed_all(self.seed + self.rank, self.generator)
        start = self.epoch
        self.stop_training = False
        self.current_eps = self._default_eps()

        for cb in self.callbacks:
            cb.on_fit_start(self)
        self._hook("fit_start", {"epoch": start, "step": self.step})
        for epoch in range(start, self.epochs):
            self.epoch = epoch
            self._run_epoch(epoch)
            if self.stop_training:
                break
        # the epoch counter points past the last finished epoch
        self.epoch = len(self.history)
        for cb in self.callbacks:
            cb.on_fit_end(self)
        self._hook("fit_end", {"epoch": self.epoch, "step": self.step})
        return pd.DataFrame(self.history)

    def _resolve_resume(self, resume: Any) -> Path | None:
        if resume is None or resume is False:
            return None
        if resume is True:
            if self.run_dir is None:
                raise ValueError("resume=True needs Trainer(run_dir=...) to find the latest checkpoint")
            path = latest_checkpoint(self.run_dir)
            if path is None:
                log.info("resume=True: no checkpoint in %s, starting fresh", self.run_dir / "checkpoints")
            return path
        if isinstance(resume, (str, os.PathLike)):
            return Path(resume)
        raise ValueError(f"resume must be None, True or a checkpoint path, got {resume!r}")

    def _run_epoch(self, epoch: int) -> None:
        model, opt, defense = self._train_model, self.optimizer, self.defense
        self.loader.set_epoch(epoch)
        for cb in self.callbacks:
            cb.on_epoch_start(self, epoch)
        self._hook("epoch_start", {"epoch": epoch, "step": self.step})
        # the epoch's metric sums: tensor logs stay on the device (no host sync per step),
        # float logs on the host; counts are example counts per key
        acc = _LogSums(self.device)
        # callbacks are promised floats: convert only when one of them reads batch logs
        float_logs = any(type(cb).on_batch_end is not Callback.on_batch_end for cb in self.callbacks)
        spe = self.steps_per_epoch
        params = [p for g in opt.param_groups for p in g["params"]]
        autocast = (lambda: torch.autocast("cuda", dtype=self._amp_dtype)) if self._amp_dtype is not None \
            else contextlib.nullcontext
        model.train()
        t0 = time.perf_counter()
        self._in_epoch = True
        try:
            for item in self.loader:
                x, y, index = item[0], item[1], item[2]
                extra = dict(getattr(item, "extra", None) or {})
                extra["generator"] = self.generator
                progress = (self.step + 1) / spe
                if self.lr_schedule is not None:
                    lr = float(self.lr_schedule(progress))
                    for g in opt.param_groups:
                        g["lr"] = lr
                self.current_lr = float(opt.param_groups[0]["lr"])
                eps = float(self.eps_schedule(progress)) if self.eps_schedule is not None else None
                if eps is not None:
                    self.current_eps = eps
                batch = Batch(x, y, index, epoch=epoch, step=self.step, eps=eps, store=self.store, trainer=self,
                              extra=extra)
                if not model.training:
                    model.train()
                opt.zero_grad(set_to_none=True)
                with autocast():
                    out = defense.loss(model, batch)
                loss, logs = _check_loss_output(out, defense)
                if self._use_scaler:
                    self.scaler.scale(loss).backward()
                    if self.grad_clip is not None:
                        self.scaler.unscale_(opt)
                        logs["grad_norm"] = torch.nn.utils.clip_grad_norm_(params, self.grad_clip)
                    self.scaler.step(opt)
                    self.scaler.update()
                else:
                    loss.backward()
                    if self.grad_clip is not None:
                        logs["grad_norm"] = torch.nn.utils.clip_grad_norm_(params, self.grad_clip)
                    opt.step()
                if self.scheduler is not None:
                    self.scheduler.step()
                self.step += 1
                acc.add(logs, x.shape[0])
                if float_logs:
                    logs = {k: _to_float(v) for k, v in logs.items()}
                for cb in self.callbacks:
                    cb.on_batch_end(self, batch, logs)
        finally:
            self._in_epoch = False
        elapsed = time.perf_counter() - t0

        # make ranks agree: store rows, BatchNorm statistics, metrics, stop flag
        self.store.sync()
        D.average_buffers(self.module)
        means = acc.means()
        row: dict[str, Any] = {"epoch": epoch, "step": self.step, "lr": self.current_lr,
                               "eps": self.current_eps, "time_s": elapsed}
        row.update({f"train_{k}": v for k, v in means.items()})
        self.history.append(row)
        for cb in self.callbacks:
            cb.on_epoch_end(self, epoch, row)
        self._hook("epoch_end", row)
        if D.is_enabled():
            flag = torch.tensor([1.0 if self.stop_training else 0.0], device=self.device)
            D.all_reduce_sum(flag)
            self.stop_training = bool(flag.item() > 0)

    # ------------------------------------------------------------------------------ state
    def fingerprint(self) -> dict[str, Any]:
        """What must match for a checkpoint to be resumed by this Trainer (plain values)."""
        opt = self.optimizer
        return {
            "model": f"{type(self.module).__module__}.{type(self.module).__qualname__}",
            "parameters": [f"{n}:{list(p.shape)}" for n, p in self.module.named_parameters()],
            "defense": _plain(self.defense.spec()),
            "optimizer": f"{type(opt).__name__}({_plain({k: v for k, v in opt.defaults.items() if k != 'lr' or self.lr_schedule is None})})",
            "scheduler": type(self.scheduler).__name__ if self.scheduler is not None else None,
            "lr_schedule": _plain(schedule_spec(self.lr_schedule if self.lr_schedule is not None
                                                else make_schedule(self._lr_spec, epochs=self.epochs or 1))),
            "eps_schedule": _plain(schedule_spec(self.eps_schedule if self.eps_schedule is not None
                                                 else make_schedule(self._eps_spec, epochs=self.epochs or 1))),
            "batch_size": self.batch_size,
            "epochs": self.epochs,
            "seed": self.seed_arg if self.seed_arg is not None else "random",
            "amp": str(self.amp),
            "grad_clip": self.grad_clip,
            "store_size": self.store.size if self.store is not None else None,
        }

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume bit-exactly (plain containers and tensors only).

        A collective under DDP (gathers every rank's RNG state): call it on all ranks.
        """
        rng = D.all_gather_object(_rng_state(self.generator))
        cbs = {f"{i}:{type(cb).__name__}": cb.state_dict() for i, cb in enumerate(self.callbacks)}
        return {
            "format": FORMAT,
            "version": VERSION,
            "fingerprint": self.fingerprint(),
            "epoch": len(self.history),
            "step": self.step,
            "seed": self.seed,
            "world_size": self.world_size,
            "model": {k: v.detach().cpu().clone() for k, v in self.module.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "scaler": self.scaler.state_dict(),
            "rng": rng,
            "store": self.store.state_dict() if self.store is not None else None,
            "defense": self.defense.state_dict(),
            "callbacks": cbs,
            "history": [_plain(r) for r in self.history],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output (the fingerprint is checked by :meth:`load_checkpoint`)."""
        self.module.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None:
            if state.get("scheduler") is None:
                raise ValueError("checkpoint has no scheduler state but this Trainer has a scheduler")
            self.scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        if state.get("store") is not None:
            if self.store is None:
                self.store = Store(state["store"]["size"], self.device)
            self.store.load_state_dict(state["store"])
        self.defense.load_state_dict(state.get("defense") or {})
        saved = state.get("callbacks") or {}
        for i, cb in enumerate(self.callbacks):
            key = f"{i}:{type(cb).__name__}"
            if key in saved:
                cb.load_state_dict(saved[key])
        rng = state["rng"]
        if len(rng) != self.world_size:
            log.warning("checkpoint was written by %d processes, resuming with %d: random streams differ "
                        "from an uninterrupted run", len(rng), self.world_size)
        _set_rng_state(rng[self.rank if self.rank < len(rng) else 0], self.generator)
        if self.seed_arg is None and state.get("seed") is not None:   # seed=None: continue the drawn seed
            self.seed = int(state["seed"])
            if self.loader is not None:
                self.loader.seed = self.seed
        self.epoch = int(state["epoch"])
        self.step = int(state["step"])
        self.history = [dict(r) for r in state["history"]]

    def save_checkpoint(self, path: str | os.PathLike) -> Path:
        """Write :meth:`state_dict` to ``path`` atomically (temporary file + ``os.replace``).

        Under DDP call it on every rank (it gathers RNG states); only rank 0 writes.  Meant for
        epoch boundaries: a resume restarts at the epoch after ``len(history)``.
        """
        if self._in_epoch:
            log.warning("save_checkpoint(%s) in the middle of epoch %d: a resume restarts that epoch from its "
                        "first batch with these weights, so it will not match an uninterrupted run",
                        path, self.epoch)
        state = self.state_dict()
        path = Path(path)
        if self.is_main_process:
            atomic_save(state, path)
        return path

    def load_checkpoint(self, path: str | os.PathLike) -> dict[str, Any]:
        """Load a checkpoint (``torch.load(weights_only=True)``) into this Trainer.

        A corrupt or foreign file raises ``ValueError`` naming the path; a checkpoint from a
        different configuration (model, defense, optimizer, schedules, batch size, epochs,
        seed ...) raises ``ValueError`` listing every difference.
        """
        state = read_checkpoint(path, map_location="cpu")
        mine, theirs = self.fingerprint(), state.get("fingerprint") or {}
        diffs = [f"  {k}: checkpoint {theirs.get(k, '<missing>')!r}, now {mine.get(k, '<missing>')!r}"
                 for k in sorted(set(mine) | set(theirs))
                 if mine.get(k) != theirs.get(k) and not (k == "epochs" and mine.get(k) is None)]
        if diffs:
            raise ValueError(f"cannot resume from {str(path)!r}: it was written by a different configuration:\n"
                             + "\n".join(diffs))
        try:
            self.load_state_dict(state)
        except (KeyError, RuntimeError) as e:
            raise ValueError(f"checkpoint {str(path)!r} does not match this Trainer: {e}") from None
        return state

    def __repr__(self) -> str:
        return (f"Trainer({type(self.module).__name__}, {self.defense!r}, optimizer={type(self.optimizer).__name__}, "
                f"batch_size={self.batch_size}, device={self.device}, world_size={self.world_size})")
