"""Adaptive-radius Wasserstein adversarial training (thesis §5.2.3)."""

from __future__ import annotations

import copy
from typing import Any

import torch

from toolbox.defense import Defense, _accuracy, batch_ce
from toolbox.threat import as_threat

from .attack import WassersteinPGD, _pos, schedule_radius
from .threat import Wasserstein

__all__ = ["WassersteinAT", "STORE_KEY"]

#: name of the per-example radius in the Trainer's store
STORE_KEY = "wasserstein_eps"


class WassersteinAT(Defense):
    """Wasserstein adversarial training with a growing, per-example radius.

    Each batch is attacked by :class:`~toolbox_wasserstein.WassersteinPGD` with
    ``keep_best=False``: radius ``eps_t = start * growth ** (t // every)`` capped at
    ``threat.eps`` (``eps_max``; the thesis's MNIST range is [0.1, 2.1], ×1.4 every 5 of 50
    iterations), stopping per example at the first adversarial iterate, which is what the
    model trains on (the last iterate for examples never broken).  Loss: cross-entropy on
    those points (mixup-aware), mixed with ``clean_weight`` × the clean loss.

    ``adaptive=True`` (default) keeps, in the Trainer's per-example store (key
    ``"wasserstein_eps"``), the radius that broke each example last time (the largest radius
    tried if none did), and starts the next attack on that example at ``stored / growth **
    backoff`` clamped to ``[eps_min, eps_max]``, so robust examples do not replay the whole
    schedule every epoch.  ``adaptive=False``, or a batch without a store, starts at
    ``eps_min``: exactly the thesis's procedure.  An active eps schedule of the Trainer
    (``batch.eps``) replaces ``eps_max`` for its step.

    Logs: ``loss``, ``adv_acc`` (accuracy on the training points), ``clean_acc``,
    ``eps_mean`` (mean radius stored this batch) and ``broken`` (fraction of the batch broken
    within the schedule).
    """

    name = "wasserstein-at"
    uses_store = True

    def __init__(self, threat: Any = None, *, eps_min: float = 0.1, growth: float = 1.4,
                 every: int = 5, steps: int = 50, step_size: float | None = None,
                 adaptive: bool = True, backoff: float = 1.0, sinkhorn_iters: int | None = 20,
                 clean_weight: float = 0.0, attack: WassersteinPGD | None = None) -> None:
        if attack is not None:
            if not isinstance(attack, WassersteinPGD):
                raise ValueError(f"attack must be a WassersteinPGD (wasserstein-pgd), got {attack!r}")
            if threat is None:
                threat = attack.threat
        tm = Wasserstein(2.1) if threat is None else as_threat(threat)
        if not isinstance(tm, Wasserstein):
            raise ValueError(f"threat must be a Wasserstein threat model, got {type(tm).__name__}")
        if isinstance(tm.eps, torch.Tensor):
            raise ValueError("threat.eps (the largest radius) must be a float for training")
        self.eps_max = float(tm.eps)
        self.eps_min = _pos(eps_min, "eps_min")
        if self.eps_min > self.eps_max:
            raise ValueError(f"eps_min must be <= threat.eps = {self.eps_max}, got {eps_min!r}")
        if not isinstance(backoff, (int, float)) or isinstance(backoff, bool) or backoff < 0:
            raise ValueError(f"backoff must be a number >= 0, got {backoff!r}")
        if not isinstance(clean_weight, (int, float)) or not 0.0 <= clean_weight <= 1.0:
            raise ValueError(f"clean_weight must be in [0, 1], got {clean_weight!r}")
        if attack is None:
            attack = WassersteinPGD(tm, steps=steps, step_size=step_size, eps0=self.eps_min,
                                    growth=growth, every=every, keep_best=False,
                                    sinkhorn_iters=sinkhorn_iters)
        else:
            attack = copy.copy(attack)
            attack.keep_best = False
        super().__init__(attack)
        self.threat = tm
        self.adaptive, self.backoff = bool(adaptive), float(backoff)
        self.clean_weight = float(clean_weight)

    def start_eps(self, batch) -> torch.Tensor:
        """Per-example starting radius ``(N,)`` float64 for the batch (see the class docstring)."""
        n = batch.x.shape[0]
        lo = torch.full((n,), self.eps_min, dtype=torch.float64, device=batch.x.device)
        if not self.adaptive or batch.store is None or batch.index is None:
            return lo
        stored = batch.store.get(STORE_KEY, batch.index, init=0.0).to(lo)
        start = stored / self.attack.growth ** self.backoff
        return torch.where(stored > 0, start, lo).clamp(self.eps_min, self.eps_max)

    def last_radius(self, start: torch.Tensor, eps_max: float) -> torch.Tensor:
        """The largest radius the schedule reaches from ``start`` ``(N,)``."""
        a = self.attack
        return schedule_radius(start, a.growth, a.every, max(a.steps - 1, 0), eps_max)

    def loss(self, model, batch):
        x, y = batch.x, batch.y
        eps_max = self.eps_max if batch.eps is None else float(batch.eps)
        start = self.start_eps(batch).clamp(max=eps_max) if eps_max > 0 else None
        if start is None:  # a schedule at radius 0: clean training
            x_adv = x
            found = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
            broken = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        else:
            atk = copy.copy(self.attack)
            atk.threat = self.threat.with_eps(eps_max)
            atk.eps0 = start.clamp_min(1e-12)
            res = atk.search(model, x, y)
            x_adv = res.x_adv.to(x.dtype)
            found = torch.where(res.success, res.eps, self.last_radius(start, eps_max))
            broken = res.success
        logits = model(x_adv)
        loss = batch_ce(logits, batch)
        logs: dict[str, Any] = {"adv_loss": loss.detach(), "adv_acc": _accuracy(logits, y),
                                "eps_mean": found.float().mean(),
                                "broken": broken.float().mean()}
        if self.clean_weight > 0:
            clean_logits = model(x)
            clean = batch_ce(clean_logits, batch)
            loss = (1 - self.clean_weight) * loss + self.clean_weight * clean
            logs["clean_loss"] = clean.detach()
            logs["clean_acc"] = _accuracy(clean_logits, y)
        if batch.store is not None and batch.index is not None:
            batch.store.set(STORE_KEY, batch.index, found.float())
        logs["loss"] = loss.detach()
        return loss, logs

    def spec(self) -> dict[str, Any]:
        return {"defense": self.name, "threat": self.threat.spec(), "eps_min": self.eps_min,
                "eps_max": self.eps_max, "adaptive": self.adaptive, "backoff": self.backoff,
                "clean_weight": self.clean_weight, "attack": self.attack.spec()}
