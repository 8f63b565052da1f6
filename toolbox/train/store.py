"""The per-example state store: named tensors keyed by dataset index.

Defenses that remember something per training example (ATAS's stored perturbations and
gradient-norm averages, MMA's per-example eps) keep it here, so it lives on the training
device, is saved in checkpoints and stays consistent under DDP::

    delta = batch.store.get("delta", batch.index, init=0.0, shape=batch.x.shape[1:])
    ...
    batch.store.set("delta", batch.index, new_delta)

Under DDP each rank writes the rows of the examples it saw; :meth:`Store.sync` (called by the
Trainer at the end of every epoch, on all ranks) makes every rank hold the union, so the
checkpoint written by rank 0 holds every index.  Change rows only through :meth:`set`:
in-place edits of the tensor returned by :meth:`get` are not tracked for the sync.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist

from .._checks import check_positive


class Store:
    """Named per-example tensors of ``size`` rows on ``device``.

    ``size`` is the number of keys (max dataset index + 1).  A tensor ``name`` has shape
    ``(size, *shape)``; it is allocated on the first :meth:`get`/:meth:`set` of that name.
    """

    def __init__(self, size: int, device: torch.device | str = "cpu") -> None:
        self.size = int(check_positive(size, "size", integer=True))
        self.device = torch.device(device)
        self._data: dict[str, torch.Tensor] = {}
        self._dirty: dict[str, torch.Tensor] = {}   # rows written since the last sync (bool (size,))

    # -- access -------------------------------------------------------------------------------
    def names(self) -> list[str]:
        """The allocated names, sorted."""
        return sorted(self._data)

    def __contains__(self, name: str) -> bool:
        return name in self._data

    def tensor(self, name: str) -> torch.Tensor:
        """The whole ``(size, *shape)`` tensor of ``name`` (read-only by convention)."""
        if name not in self._data:
            raise KeyError(f"store has no tensor {name!r}; allocated: {self.names()}")
        return self._data[name]

    def _check_index(self, index: Any) -> torch.Tensor:
        if not isinstance(index, torch.Tensor) or index.dim() != 1 or index.dtype.is_floating_point \
                or index.dtype == torch.bool:
            raise ValueError(f"index must be a 1-D integer tensor of dataset indices, got {index!r}")
        if index.numel():
            lo, hi = int(index.min()), int(index.max())
            if lo < 0 or hi >= self.size:
                raise ValueError(f"index holds values outside [0, {self.size - 1}] (store size {self.size}): "
                                 f"min {lo}, max {hi}")
        return index.to(self.device, torch.long)

    def _allocate(self, name: str, init: float | Callable | None, shape: Any, dtype: torch.dtype | None) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"name must be a non-empty string, got {name!r}")
        shape = tuple(int(s) for s in (shape or ()))
        full = (self.size, *shape)
        if callable(init):
            t = init(full)
            if not isinstance(t, torch.Tensor) or tuple(t.shape) != full:
                got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
                raise ValueError(f"init for store tensor {name!r} must return a tensor of shape {full}, got {got}")
            t = t.to(self.device, dtype or t.dtype).clone()
        else:
            value = 0.0 if init is None else init
            t = torch.full(full, value, dtype=dtype or torch.float32, device=self.device)
        self._data[name] = t
        self._dirty[name] = torch.zeros(self.size, dtype=torch.bool, device=self.device)

    def get(self, name: str, index: torch.Tensor, *, init: float | Callable | None = 0.0,
            shape: Any = (), dtype: torch.dtype | None = None) -> torch.Tensor:
        """Rows ``index`` of ``name``: a new tensor ``(len(index), *shape)``.

        On first use, ``name`` is allocated as ``(size, *shape)`` filled with ``init`` (a number)
        or as ``init((size, *shape))`` (a callable returning that tensor); ``dtype`` defaults
        to float32 (or the callable's dtype).  Later calls ignore ``init``/``shape``/``dtype``.
        """
        index = self._check_index(index)
        if name not in self._data:
            self._allocate(name, init, shape, dtype)
        return self._data[name][index]

    def set(self, name: str, index: torch.Tensor, values: torch.Tensor | float) -> None:
        """Write rows ``index`` of ``name`` (allocated with zeros of ``values``' per-row shape
        and dtype on first use).  ``values``: ``(len(index), *shape)`` or broadcastable."""
        index = self._check_index(index)
        if name not in self._data:
            if isinstance(values, torch.Tensor):
                shape = values.shape[1:] if values.dim() and values.shape[0] == index.numel() else values.shape
                self._allocate(name, 0, shape, values.dtype)
            else:
                self._allocate(name, 0, (), None)
        t = self._data[name]
        if isinstance(values, torch.Tensor):
            values = values.detach().to(t.device, t.dtype)
        t[index] = values
        self._dirty[name][index] = True

    # -- distributed ----------------------------------------------------------------------------
    def sync(self) -> None:
        """Make every rank hold the rows written on any rank since the last sync.

        A collective under ``torch.distributed`` (call it on all ranks); without a process
        group it only clears the bookkeeping.  A row written on several ranks gets their mean
        (rounded for integer tensors).  A name allocated on some ranks only is created on the
        others as a copy of the lowest such rank's tensor first; the same name with a different
        per-row shape or dtype on two ranks raises ``RuntimeError``.
        """
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            self._sync_names()
            for name in self.names():
                t, dirty = self._data[name], self._dirty[name]
                acc = torch.float32 if t.dtype in (torch.float32, torch.float16, torch.bfloat16) else torch.float64
                rows = (-1, *([1] * (t.dim() - 1)))
                count = dirty.to(acc)
                total = torch.where(dirty.view(rows), t.to(acc), torch.zeros((), dtype=acc, device=t.device))
                dist.all_reduce(count)
                dist.all_reduce(total)
                hit = count > 0
                mean = total[hit] / count[hit].view(rows)
                if not t.dtype.is_floating_point:
                    mean = mean.round()
                t[hit] = mean.to(t.dtype)
        for dirty in self._dirty.values():
            dirty.zero_()

    def _sync_names(self) -> None:
        """Allocate on every rank the names some rank has (copying the lowest owner's tensor)."""
        mine = {n: (tuple(t.shape), str(t.dtype)) for n, t in self._data.items()}
        metas: list[dict[str, Any]] = [None] * dist.get_world_size()  # type: ignore[list-item]
        dist.all_gather_object(metas, mine)
        rank = dist.get_rank()
        for name in sorted(set().union(*metas)):
            owners = [r for r, m in enumerate(metas) if name in m]
            kinds = {metas[r][name] for r in owners}
            if len(kinds) > 1:
                raise RuntimeError(f"store tensor {name!r} differs across ranks: "
                                   + ", ".join(f"rank {r}: shape {metas[r][name][0]} {metas[r][name][1]}"
                                               for r in owners))
            if len(owners) == len(metas):
                continue
            shape, dtype = kinds.pop()
            src = owners[0]
            if name in self._data:
                buf = self._data[name] if rank == src else torch.empty_like(self._data[name])
            else:
                buf = torch.empty(shape, dtype=getattr(torch, dtype.replace("torch.", "")), device=self.device)
            dist.broadcast(buf, src=src)
            if name not in self._data:
                self._data[name] = buf
                self._dirty[name] = torch.zeros(self.size, dtype=torch.bool, device=self.device)

    # -- checkpoints ----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """``{"size": int, "tensors": {name: CPU tensor}}`` (call :meth:`sync` first under DDP)."""
        return {"size": self.size, "tensors": {n: t.detach().cpu().clone() for n, t in self._data.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not isinstance(state, dict) or "tensors" not in state:
            raise ValueError("store state must be a dict with 'size' and 'tensors'")
        if int(state.get("size", -1)) != self.size:
            raise ValueError(f"store state has size {state.get('size')}, this store has size {self.size}")
        self._data = {n: t.to(self.device).clone() for n, t in state["tensors"].items()}
        self._dirty = {n: torch.zeros(self.size, dtype=torch.bool, device=self.device) for n in self._data}

    def __repr__(self) -> str:
        parts = ", ".join(f"{n}: {tuple(t.shape[1:])} {str(t.dtype).replace('torch.', '')}" for n, t in self._data.items())
        return f"Store(size={self.size}, device={self.device}, {{{parts}}})"
