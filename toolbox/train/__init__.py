"""Training: the :class:`Trainer`, the per-example :class:`Store`, schedules, callbacks and
checkpoints.  See ``docs/architecture.md`` (Trainer section) for the contract."""

from .callbacks import Callback
from .checkpoint import Checkpoint, latest_checkpoint, read_checkpoint
from .schedules import make_schedule
from .store import Store
from .trainer import Trainer

__all__ = ["Trainer", "Store", "Callback", "Checkpoint", "make_schedule", "read_checkpoint", "latest_checkpoint"]
