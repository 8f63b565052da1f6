"""Training against a union of threat models (thesis §5.3): ``worst-pgd`` (Adv_max), ``pgd-aug``
(Adv_avg) and ``msd`` (PGD adversarial training with the MSD adversary).

Eps schedules: the Trainer's scheduled ``batch.eps`` is read as the *scale* of the union (1.0 =
the full radii), applied to every norm's attack alike, so ``{"kind": "linear", "start": 0,
"end": 1, "epochs": 1}`` ramps all three balls together.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F

import toolbox as tb
from toolbox.attacks.base import attack_mode
from toolbox.defense import Adversarial, Batch, Defense, batch_ce

from .attack import MSD, as_union

__all__ = ["UnionDefense", "WorstPGD", "PGDAug", "MSDDefense", "norm_attacks"]


def norm_attacks(threat: Any, *, steps: int | Sequence[int] = 10, step_size: Any = None,
                 restarts: int = 1, **kw: Any) -> dict[str, tb.Attack]:
    """One kernel PGD per component of ``threat`` (a Union or list of threat models), keyed by
    the component's name (``"linf"``, ``"l2"``, ``"l1"``; repeats get ``-2``...).  ``steps`` and
    ``step_size`` are one value for all or one per norm (``None``: ``2.5 eps_p / steps``)."""
    u = as_union(threat)
    k = len(u.threats)

    def per(v: Any, name: str) -> list[Any]:
        if isinstance(v, Sequence) and not isinstance(v, str):
            if len(v) != k:
                raise ValueError(f"{name} must give one value per norm ({k}), got {v!r}")
            return list(v)
        return [v] * k

    out: dict[str, tb.Attack] = {}
    for t, s, a in zip(u.threats, per(steps, "steps"), per(step_size, "step_size"), strict=True):
        key, i = t.name, 2
        while key in out:
            key, i = f"{t.name}-{i}", i + 1
        out[key] = tb.attack("pgd", threat=t, steps=s, step_size=a, restarts=restarts, **kw)
    return out


class UnionDefense(Defense):
    """Common parts of the defenses that run one attack per norm.

    ``attacks``: dict name -> :class:`toolbox.Attack` (or a list, named by threat), one per
    norm; or ``threat=`` (Union / list of threat models) with ``steps``, ``step_size`` and
    ``restarts`` to build kernel PGDs (:func:`norm_attacks`).
    """

    def __init__(self, attacks: Mapping[str, tb.Attack] | Sequence[tb.Attack] | None = None, *,
                 threat: Any = None, steps: Any = 10, step_size: Any = None, restarts: int = 1) -> None:
        super().__init__(None)
        if attacks is None:
            if threat is None:
                raise ValueError(f"defense {self.name!r} needs attacks= (one per norm) or threat= "
                                 f"(e.g. [tb.Linf(0.3), tb.L2(1.5), tb.L1(12)])")
            attacks = norm_attacks(threat, steps=steps, step_size=step_size, restarts=restarts)
        elif threat is not None:
            raise ValueError("give either attacks= or threat=, not both")
        if isinstance(attacks, Mapping):
            atks = dict(attacks)
        elif isinstance(attacks, Sequence) and not isinstance(attacks, str):
            atks = {}
            for a in attacks:
                key, i = a.threat.name, 2
                while key in atks:
                    key, i = f"{a.threat.name}-{i}", i + 1
                atks[key] = a
        else:
            raise ValueError(f"attacks must be a dict or list of attacks, got {attacks!r}")
        if not atks or not all(isinstance(a, tb.Attack) for a in atks.values()):
            raise ValueError(f"attacks must hold at least one toolbox Attack, got {attacks!r}")
        self.attacks = atks
        self._base = {k: a.threat.eps for k, a in atks.items()}

    def adversaries(self, batch: Batch) -> dict[str, tb.Attack]:
        """The attacks, each re-radiused to ``batch.eps`` (a scale) times its own radius when an
        eps schedule is active."""
        if batch.eps is None:
            return self.attacks
        out = {}
        for k, a in self.attacks.items():
            base = self._base[k]
            out[k] = a if isinstance(base, torch.Tensor) or batch.eps == 1.0 else a.with_eps(base * batch.eps)
        return out

    def perturbations(self, model: torch.nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
        """Every norm's adversarial batch ``(N, ...)``, keyed like :attr:`attacks`."""
        return {k: a(model, batch.x, batch.y, index=batch.index, check=False)
                for k, a in self.adversaries(batch).items()}

    def spec(self) -> dict[str, Any]:
        return {"defense": self.name, "attacks": {k: a.spec() for k, a in self.attacks.items()}}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(attacks={list(self.attacks)})"


class WorstPGD(UnionDefense):
    """Worst-case PGD training (Adv_max): run every norm's attack, train per example on the
    adversarial example of highest cross-entropy.

    The choice uses the eval-mode model without gradients (one extra forward pass per norm);
    the training forward pass then sees only the chosen batch.  Logs ``pick_<norm>``: the
    fraction of the batch whose worst case came from that norm.
    """

    name = "worst-pgd"

    def loss(self, model, batch):
        advs = self.perturbations(model, batch)
        keys = list(advs)
        stack = torch.stack([advs[k] for k in keys])
        with attack_mode(model, "eval"), torch.no_grad():
            ce = torch.stack([F.cross_entropy(model(v), batch.y, reduction="none") for v in stack])
        choice = ce.argmax(0)
        idx = choice.view(1, -1, *([1] * (stack.dim() - 2))).expand(1, *stack.shape[1:])
        x_adv = stack.gather(0, idx).squeeze(0)
        logits = model(x_adv)
        loss = batch_ce(logits, batch)
        logs: dict[str, Any] = {"loss": loss.detach(), "adv_loss": loss.detach(),
                                "adv_acc": (logits.detach().argmax(1) == batch.y).float().mean()}
        for i, k in enumerate(keys):
            logs[f"pick_{k}"] = (choice == i).float().mean()
        return loss, logs


class PGDAug(UnionDefense):
    """PGD augmentation (Adv_avg): the mean of the cross-entropies on every norm's adversarial
    batch, ``(1/K) Σ_p CE(x + δ_p)``, in one optimizer step.

    The thesis code takes K consecutive optimizer steps instead (ℓ1, ℓ2, ℓ∞ examples, each
    against the freshly updated weights); both minimise the same objective, this one with K
    times fewer updates per batch (use a K-times larger learning rate for the same progress).
    Logs ``adv_loss_<norm>``.
    """

    name = "pgd-aug"

    def loss(self, model, batch):
        advs = self.perturbations(model, batch)
        keys = list(advs)
        logits = model(torch.cat([advs[k] for k in keys]))
        parts = logits.chunk(len(keys))
        losses = [batch_ce(p, batch) for p in parts]
        loss = torch.stack(losses).mean()
        logs: dict[str, Any] = {"loss": loss.detach(), "adv_loss": loss.detach()}
        for k, v, p in zip(keys, losses, parts, strict=True):
            logs[f"adv_loss_{k}"] = v.detach()
            logs[f"adv_acc_{k}"] = (p.detach().argmax(1) == batch.y).float().mean()
        return loss, logs


class MSDDefense(Adversarial):
    """PGD adversarial training driven by the MSD adversary (cross-entropy on ``msd(x)``).

    Give ``attack=`` (an :class:`~toolbox_union.MSD`), or ``threat=`` (Union / list) with
    ``steps``, ``step_size`` (one per norm), ``restarts``, ``zero_start`` to build one.  The
    thesis MNIST setting: ``threat=[Linf(0.3), L2(1.5), L1(12)]``, ``steps=100``,
    ``step_size=(0.01, 0.2, 0.05)``.  A scheduled eps scales the union (see the module doc).
    """

    name = "msd"

    def __init__(self, attack: tb.Attack | None = None, *, threat: Any = None, steps: int = 20,
                 step_size: Any = None, restarts: int = 1, zero_start: bool = True,
                 clean_weight: float = 0.0) -> None:
        if attack is None:
            if threat is None:
                raise ValueError("defense 'msd' needs attack= (an MSD attack) or threat= "
                                 "(e.g. [tb.Linf(0.3), tb.L2(1.5), tb.L1(12)])")
            attack = MSD(threat, steps=steps, step_size=step_size, restarts=restarts, zero_start=zero_start)
        elif threat is not None and as_union(threat) != attack.threat:
            # tb.defense("msd", attack="msd", threat=u) passes the threat to both: fine if equal
            raise ValueError(f"attack= already has threat {attack.threat!r}; threat= {threat!r} differs")
        super().__init__(attack, clean_weight=clean_weight)
