"""The Defense interface and the builtin defenses.

A defense turns a batch into a training loss: ``loss, logs = defense.loss(model, batch)``.
The Trainer owns everything else (optimiser, schedules, AMP, checkpoints, callbacks), so a
paper's method is exactly its ``loss`` (MAIR's granularity, with the attack pluggable).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .attacks import Attack
from .hookspecs import hookimpl


@dataclass
class Batch:
    """What a defense sees of one training step.

    ``x`` ``(N, ...)`` in [0, 1]; ``y`` ``(N,)`` labels; ``index`` ``(N,)`` dataset indices
    (keys of the per-example ``store``); ``epoch`` (0-based) and ``step`` (global optimizer
    step, 0-based); ``eps`` the scheduled radius for this step (``None`` without an eps
    schedule); ``store`` the Trainer's per-example state store (``None`` outside a Trainer);
    ``trainer`` the Trainer itself (``None`` outside one); ``extra`` free-form data from batch
    transforms (mixup's second labels and weights, for instance).
    """

    x: torch.Tensor
    y: torch.Tensor
    index: torch.Tensor | None = None
    epoch: int = 0
    step: int = 0
    eps: float | None = None
    store: Any = None
    trainer: Any = None
    extra: dict[str, Any] = field(default_factory=dict)


class Defense:
    """Base class.  Subclasses implement :meth:`loss`.

    ``attack`` (any registered :class:`~toolbox.attacks.Attack`) is the adversary for the
    defenses that use one.  When the Trainer schedules eps, :meth:`adversary` returns the
    attack at the batch's radius.  Defenses with state beyond the per-example store implement
    :meth:`state_dict` / :meth:`load_state_dict` (saved in checkpoints).
    """

    name: str = "defense"
    #: a defense that keeps per-example state in ``batch.store`` sets this
    uses_store: bool = False

    def __init__(self, attack: Attack | None = None) -> None:
        if attack is not None and not isinstance(attack, Attack):
            raise ValueError(f"attack must be a toolbox Attack (tb.attack(...)), got {attack!r}")
        self.attack = attack

    def loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, Any]]:
        """The batch's scalar training loss (a 0-dim tensor with a graph) and a dict of metrics.

        Metric values are numbers or detached 1-element tensors; the Trainer averages them
        over the epoch's examples into ``train_<key>`` history columns.  Tensors are summed
        on the device, so returning ``loss.detach()`` rather than ``loss.item()`` saves a
        host-device sync per step on a GPU.
        """
        raise NotImplementedError

    def adversary(self, batch: Batch) -> Attack:
        """``self.attack``, re-radiused to ``batch.eps`` when an eps schedule is active."""
        if self.attack is None:
            raise ValueError(f"defense {self.name!r} needs attack=")
        if batch.eps is None or isinstance(self.attack.threat.eps, torch.Tensor):
            return self.attack
        if self.attack.threat.eps == batch.eps:
            return self.attack
        return self.attack.with_eps(batch.eps)

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None

    def spec(self) -> dict[str, Any]:
        out: dict[str, Any] = {"defense": self.name}
        if self.attack is not None:
            out["attack"] = self.attack.spec()
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}({'attack=' + repr(self.attack) if self.attack else ''})"


def defense_threat(defense: Any) -> Any:
    """The threat model a defense trains against: ``defense.threat`` when it has one
    (defenses without an attack object, e.g. stateful ones), else ``defense.attack.threat``;
    ``None`` when it has neither (standard training)."""
    threat = getattr(defense, "threat", None)
    if threat is None:
        threat = getattr(getattr(defense, "attack", None), "threat", None)
    return threat


def accuracy(logits: torch.Tensor, y: torch.Tensor) -> float:
    """Fraction of rows of ``logits`` ``(N, C)`` whose argmax is ``y`` ``(N,)``, as a float."""
    return _accuracy(logits, y).item()


def _accuracy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (logits.detach().argmax(1) == y).float().mean()


def batch_ce(logits: torch.Tensor, batch: Batch) -> torch.Tensor:
    """Mean cross-entropy of ``logits`` ``(N, C)`` against the batch's labels, mixup-aware.

    With a :class:`toolbox.data.Mixup` batch transform (``batch.extra`` holds ``y2`` and
    ``lam``) this is ``lam * CE(logits, y) + (1 - lam) * CE(logits, y2)``; otherwise
    ``CE(logits, y)``.
    """
    loss = F.cross_entropy(logits, batch.y)
    extra = batch.extra or {}
    if "y2" in extra and "lam" in extra:
        lam = float(extra["lam"])
        loss = lam * loss + (1.0 - lam) * F.cross_entropy(logits, extra["y2"])
    return loss


class Standard(Defense):
    """Plain (clean) training: cross-entropy on the unperturbed batch (mixup-aware)."""

    name = "standard"

    def loss(self, model, batch):
        logits = model(batch.x)
        loss = batch_ce(logits, batch)
        return loss, {"loss": loss.detach(), "acc": _accuracy(logits, batch.y)}


class Adversarial(Defense):
    """Train on the attack's output: cross-entropy on ``attack(model, x, y)``.

    With ``attack=tb.attack("pgd", ...)`` this is Madry et al.'s PGD adversarial training;
    any registered attack drives it.  ``clean_weight`` mixes in the clean loss
    (``(1-w) CE(x_adv) + w CE(x)``).
    """

    name = "adversarial"

    def __init__(self, attack: Attack, *, clean_weight: float = 0.0) -> None:
        if attack is None:
            raise ValueError("defense 'adversarial' needs attack=, e.g. tb.attack('pgd', threat=tb.Linf(0.3))")
        super().__init__(attack)
        if not 0.0 <= clean_weight <= 1.0:
            raise ValueError(f"clean_weight must be in [0, 1], got {clean_weight}")
        self.clean_weight = float(clean_weight)

    def loss(self, model, batch):
        x_adv = self.adversary(batch)(model, batch.x, batch.y, index=batch.index, check=False)
        logits = model(x_adv)
        loss = batch_ce(logits, batch)
        logs = {"adv_loss": loss.detach(), "adv_acc": _accuracy(logits, batch.y)}
        if self.clean_weight > 0:
            clean = batch_ce(model(batch.x), batch)
            loss = (1 - self.clean_weight) * loss + self.clean_weight * clean
            logs["clean_loss"] = clean.detach()
        logs["loss"] = loss.detach()
        return loss, logs


def defense(name: str, /, **kwargs: Any) -> Defense:
    """Build a registered defense: ``tb.defense("adversarial", attack=tb.attack("pgd", ...))``.

    ``attack`` may also be given as a name with ``threat=`` (``tb.defense("adversarial",
    attack="pgd", threat=tb.Linf(0.3))``) or a dict ``{"name": "pgd", "steps": 10, ...}``.
    """
    from .attacks import attack as make_attack
    from .plugins import registry

    factory = registry().get("defense", name)
    atk = kwargs.get("attack")
    if isinstance(atk, (str, dict)):
        # threat= builds the attack; the defense keeps it too only if it takes a threat itself
        try:
            takes_threat = "threat" in inspect.signature(factory).parameters
        except (TypeError, ValueError):
            takes_threat = False
        thr = kwargs.get("threat") if takes_threat else kwargs.pop("threat", None)
        if isinstance(atk, str):
            kwargs["attack"] = make_attack(atk, threat=thr, **kwargs.pop("attack_kwargs", {}))
        else:
            spec = dict(atk)
            if "name" not in spec:
                raise ValueError(f"attack: a dict spec needs a 'name' key, got {atk!r}")
            kwargs["attack"] = make_attack(spec.pop("name"), threat=spec.pop("threat", thr), **spec)
    return factory(**kwargs)


@hookimpl
def toolbox_register(registry) -> None:
    registry.add_defense("standard", Standard)
    registry.add_defense("adversarial", Adversarial)
