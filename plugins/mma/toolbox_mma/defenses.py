"""The MMA defense (max-margin adversarial training) and the PGDLS baseline."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from toolbox.attacks import Attack
from toolbox.defense import Defense, _accuracy
from toolbox.threat import as_threat

from . import losses as mlosses
from .anpgd import ANPGD

#: name of the per-example margin tensor in the Trainer's store
STORE_KEY = "mma_eps"


class MMA(Defense):
    """Max-margin adversarial training (Ding et al., ICLR 2020, Alg. 2).

    ``threat``: the norm and the hinge ``d_max`` as its radius (e.g. ``tb.Linf(0.45)``,
    ``tb.L2(4.0)``).  Per batch (inputs ``(N, ...)`` in [0, 1]):

    * clean pass (train mode): ``L_clean = mean CE(x)``; an example counts as correct when
      ``correct_by`` (``"slm"`` as in the authors' code, or ``"lm"`` = argmax, the paper's S+)
      is negative;
    * for the correct examples, AN-PGD from ``eps_init = max(eps_min, stored eps)`` finds
      the margin ε* and the point ``x + δ*`` (search in eval mode); misclassified examples get
      ε = 0;
    * ``L_mma = (Σ_{correct, ε* < d_max} CE(x+δ*) + Σ_{wrong} CE(x)) / N`` (one forward pass on
      the batch with the correct rows replaced by their adversaries);
    * loss ``= (1 - clean_weight) L_mma + clean_weight L_clean`` (``clean_weight`` 1/3; 0 is
      OMMA); every example's ε is written to ``batch.store[STORE_KEY]`` (last visit).

    ``eps_max = eps_max_scale * d_max`` (1.05) ends the bisection.  ``steps`` (40 MNIST, 10
    CIFAR-10), ``bisection_steps`` (10), ``step_scale`` (2.5) configure AN-PGD; ``attack``
    replaces it by any attack with a compatible ``margin(model, x, y, eps_init)`` method.
    Logs: ``loss``, ``clean_loss``, ``clean_acc``, ``adv_acc`` (on the searched points of the
    correct rows), ``eps_mean`` (mean ε of the batch), ``frac_correct``, ``frac_hinged``
    (correct rows with ε >= d_max, which contribute nothing).
    """

    name = "mma"
    uses_store = True

    def __init__(self, threat, *, eps_min: float | None = None, clean_weight: float = 1 / 3,
                 steps: int = 40, bisection_steps: int = 10, step_scale: float = 2.5,
                 eps_max_scale: float = 1.05, correct_by: str = "slm", attack: Attack | None = None,
                 seed: int | None = None) -> None:
        tm = as_threat(threat)
        if isinstance(tm.eps, torch.Tensor) or not tm.eps > 0:
            raise ValueError(f"threat eps (d_max) must be a positive float, got {tm.eps!r}")
        if not 0.0 <= clean_weight <= 1.0:
            raise ValueError(f"clean_weight must be in [0, 1], got {clean_weight!r}")
        if not eps_max_scale >= 1.0:
            raise ValueError(f"eps_max_scale must be >= 1, got {eps_max_scale!r}")
        if correct_by not in mlosses.LOSSES:
            raise ValueError(f"correct_by must be 'lm' or 'slm', got {correct_by!r}")
        self.d_max = float(tm.eps)
        self.eps_max = float(eps_max_scale) * self.d_max
        self.eps_min = (0.1 * self.d_max if eps_min is None else float(eps_min))
        if not 0 < self.eps_min <= self.eps_max:
            raise ValueError(f"eps_min must be in (0, eps_max={self.eps_max}], got {eps_min!r}")
        if attack is None:
            attack = ANPGD(tm.with_eps(self.eps_max), steps=steps, bisection_steps=bisection_steps,
                           step_scale=step_scale, seed=seed)
        elif not callable(getattr(attack, "margin", None)):
            raise ValueError(f"attack must provide margin(model, x, y, eps_init) (e.g. an-pgd), got {attack!r}")
        super().__init__(attack)
        self.threat = tm
        self.clean_weight = float(clean_weight)
        self.correct_by = correct_by

    def initial_eps(self, batch) -> torch.Tensor:
        """``max(eps_min, stored eps)`` for the batch's examples ``(N,)`` (eps_min without a store)."""
        n = batch.x.shape[0]
        if batch.store is None or batch.index is None:
            return torch.full((n,), self.eps_min, device=batch.x.device)
        stored = batch.store.get(STORE_KEY, batch.index, init=0.0)
        return stored.to(batch.x.device).clamp_min(self.eps_min)

    def loss(self, model, batch):
        x, y = batch.x, batch.y
        n = x.shape[0]
        logits = model(x)
        ce_clean = F.cross_entropy(logits, y, reduction="none")
        l_clean = ce_clean.mean()
        with torch.no_grad():
            correct = mlosses.get(self.correct_by)(logits.detach(), y) < 0
        eps = torch.zeros(n, device=x.device)
        x_mix = x
        hinged = torch.zeros(n, dtype=torch.bool, device=x.device)
        adv_acc = None
        if bool(correct.any()):
            idx = correct.nonzero().squeeze(1)
            e0 = self.initial_eps(batch)[idx]
            gen = (batch.extra or {}).get("generator")
            res = self.attack.margin(model, x[idx], y[idx], e0, generator=gen)
            eps[idx] = res.eps.to(eps.dtype)
            x_mix = x.clone()
            x_mix[idx] = res.x_adv.to(x.dtype)
            hinged[idx] = res.eps >= self.d_max
        use = ~correct | (correct & ~hinged)
        if bool(correct.any()):
            logits_mix = model(x_mix)
            ce_mix = F.cross_entropy(logits_mix, y, reduction="none")
            adv_acc = (logits_mix.detach().argmax(1) == y)[correct].float().mean()
        else:
            ce_mix = ce_clean
        l_mma = (ce_mix * use.to(ce_mix.dtype)).sum() / n
        loss = (1.0 - self.clean_weight) * l_mma + self.clean_weight * l_clean
        if batch.store is not None and batch.index is not None:
            batch.store.set(STORE_KEY, batch.index, eps)
        logs: dict[str, Any] = {
            "loss": loss.detach(), "clean_loss": l_clean.detach(), "mma_loss": l_mma.detach(),
            "clean_acc": _accuracy(logits, y), "eps_mean": eps.mean(),
            "frac_correct": correct.float().mean(), "frac_hinged": hinged.float().mean(),
        }
        if adv_acc is not None:
            logs["adv_acc"] = adv_acc
        return loss, logs

    def spec(self) -> dict[str, Any]:
        return {"defense": self.name, "threat": self.threat.name, "d_max": self.d_max,
                "eps_max": self.eps_max, "eps_min": self.eps_min, "clean_weight": self.clean_weight,
                "correct_by": self.correct_by, "attack": self.attack.spec()}


class PGDLS(Defense):
    """PGD adversarial training with a linear eps ramp (MMA paper's "PGDLS" baseline).

    The training radius grows linearly from 0 to the attack's eps over the first
    ``ramp_epochs`` epochs (fractional, counted per optimizer step when run in a Trainer)
    and then stays; the attack's absolute step size is scaled with it (``Attack.with_eps``).
    Loss: mean CE on the adversarial batch (clean CE while the radius is still 0).
    ``ramp_epochs=0`` is plain PGD training at the full eps.  ``attack`` is any registered
    attack (default use: ``tb.attack("pgd", threat=tb.Linf(0.45), steps=40)``).
    """

    name = "pgdls"

    def __init__(self, attack: Attack, *, ramp_epochs: float = 50.0) -> None:
        if attack is None:
            raise ValueError("defense 'pgdls' needs attack=, e.g. tb.attack('pgd', threat=tb.Linf(0.45), steps=40)")
        super().__init__(attack)
        if isinstance(attack.threat.eps, torch.Tensor):
            raise ValueError("pgdls needs a scalar eps in the attack's threat model")
        if not ramp_epochs >= 0:
            raise ValueError(f"ramp_epochs must be >= 0, got {ramp_epochs!r}")
        self.ramp_epochs = float(ramp_epochs)

    def progress(self, batch) -> float:
        """Training progress in epochs at this batch (``step / steps_per_epoch`` in a Trainer)."""
        tr = batch.trainer
        spe = getattr(tr, "steps_per_epoch", None) if tr is not None else None
        if spe:
            return batch.step / float(spe)
        return float(batch.epoch)

    def current_eps(self, batch) -> float:
        """The ramped radius for this batch."""
        eps = float(self.attack.threat.eps)
        if self.ramp_epochs == 0:
            return eps
        return eps * min(1.0, self.progress(batch) / self.ramp_epochs)

    def loss(self, model, batch):
        eps = self.current_eps(batch)
        x = batch.x
        if eps > 0:
            atk = self.attack if eps == self.attack.threat.eps else self.attack.with_eps(eps)
            x = atk(model, batch.x, batch.y, index=batch.index, check=False)
        logits = model(x)
        loss = F.cross_entropy(logits, batch.y)
        return loss, {"loss": loss.detach(), "adv_acc": _accuracy(logits, batch.y), "eps": eps}

    def spec(self) -> dict[str, Any]:
        return {"defense": self.name, "ramp_epochs": self.ramp_epochs, "attack": self.attack.spec()}
