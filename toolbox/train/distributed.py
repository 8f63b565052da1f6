"""Multi-process training with ``torchrun`` (torch.distributed, DDP).

The same script runs alone or under ``torchrun --nproc_per_node=N script.py``: the Trainer
calls :func:`setup`, which reads ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` from the environment
and initialises the default process group (``gloo`` on CPU, ``nccl`` on CUDA) once.  Without
those variables (or with ``WORLD_SIZE=1``) nothing is initialised and every helper here is a
cheap no-op, so single-process runs carry no overhead.
"""

from __future__ import annotations

import atexit
import gc
import os
import weakref
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main_process(self) -> bool:
        return self.rank == 0


_INITIALISED_HERE = False
_LIVE_WRAPPERS: weakref.WeakSet = weakref.WeakSet()


def env_info() -> DistInfo:
    """Rank, world size and local rank from the environment (or an existing process group)."""
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    return DistInfo(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")))


def setup(device: str | torch.device) -> tuple[DistInfo, torch.device]:
    """Initialise the process group when launched by torchrun; return ``(info, device)``.

    ``device="cuda"`` becomes ``cuda:LOCAL_RANK`` under torchrun.  The backend is ``nccl`` for
    CUDA and ``gloo`` otherwise; the group is destroyed at interpreter exit.
    """
    global _INITIALISED_HERE
    device = torch.device(device)
    info = env_info()
    if not info.enabled:
        return info, device
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", info.local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        if not dist.is_available():   # pragma: no cover
            raise RuntimeError("WORLD_SIZE > 1 but torch.distributed is not available in this build")
        backend = "nccl" if device.type == "cuda" else "gloo"
        kw: dict[str, Any] = {"device_id": device} if device.type == "cuda" else {}
        dist.init_process_group(backend=backend, **kw)
        _INITIALISED_HERE = True
        atexit.register(cleanup)
    return env_info(), device


def cleanup() -> None:
    """Destroy the process group if :func:`setup` created it."""
    global _INITIALISED_HERE
    if _INITIALISED_HERE and dist.is_initialized():
        # Drop every DDP wrapper (their reducers hold the group) while the group is still
        # alive: left to interpreter teardown, gloo's threads can die in std::terminate
        # ("terminate called without an active exception", seen on a loaded machine).
        for wrapper in list(_LIVE_WRAPPERS):
            wrapper.release()
        gc.collect()
        dist.destroy_process_group()
    _INITIALISED_HERE = False


def is_enabled() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def barrier() -> None:
    if is_enabled():
        dist.barrier()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """In-place sum across ranks (no-op alone)."""
    if is_enabled():
        dist.all_reduce(t)
    return t


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (a one-element list alone)."""
    if not is_enabled():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    if not is_enabled():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def average_buffers(module: nn.Module) -> None:
    """Average floating buffers (BatchNorm running statistics) across ranks."""
    if not is_enabled():
        return
    world = dist.get_world_size()
    for b in module.buffers():
        if b.dtype.is_floating_point:
            dist.all_reduce(b)
            b.div_(world)


def _ddp_params() -> set[str]:
    import inspect

    from torch.nn.parallel import DistributedDataParallel

    return set(inspect.signature(DistributedDataParallel.__init__).parameters)


class DDPModel(nn.Module):
    """What a defense sees under DDP: a module that trains through ``DistributedDataParallel``
    but lets attacks use the plain module.

    Attacks put the model in eval mode and freeze parameter gradients; forwarding those calls
    through DDP would leave its reducer waiting for gradients that never come.  So a forward
    goes through DDP only when gradients are enabled and the parameters require them (a
    training forward); every other call (attacks, ``no_grad`` metrics) uses the wrapped module
    directly.  Buffers are not broadcast on forward (so ranks may call the model a different
    number of times); the Trainer averages them at the end of each epoch.
    """

    def __init__(self, module: nn.Module, device: torch.device) -> None:
        super().__init__()
        from torch.nn.parallel import DistributedDataParallel

        trainable = [p for p in module.parameters() if p.requires_grad]
        if not trainable:
            raise ValueError("DDP needs a model with at least one parameter that requires grad")
        ids = [device.index] if device.type == "cuda" else None
        # no buffer broadcast on forward; newer torch spells it forward_sync_buffers
        kw = {"forward_sync_buffers": False} if "forward_sync_buffers" in _ddp_params() else {"broadcast_buffers": False}
        self.ddp = DistributedDataParallel(module, device_ids=ids, **kw)
        # the first parameter DDP synchronises (not registered twice): attacks freeze them all
        object.__setattr__(self, "_first", trainable[0])
        object.__setattr__(self, "_module", module)
        _LIVE_WRAPPERS.add(self)

    def release(self) -> None:
        """Drop the DistributedDataParallel wrapper (before the process group goes away);
        forwards then use the plain module."""
        self._modules.pop("ddp", None)

    @property
    def inner(self) -> nn.Module:
        return self._module

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        ddp = self._modules.get("ddp")
        if ddp is not None and torch.is_grad_enabled() and self._first.requires_grad:
            return ddp(*args, **kwargs)
        return self._module(*args, **kwargs)
