"""Defenses of fast adversarial training (thesis ch. 4): ``fgsm-rs``, ``fgsm-zero``, ``rfgsm``,
``free``, ``pgd-at`` and ``trades``.

Each is a :class:`toolbox.defense.Defense`: ``loss, logs = defense.loss(model, batch)``; the
kernel's :class:`toolbox.Trainer` owns the optimiser, the per-step LR schedule (cyclic /
one-cycle), AMP and checkpoints.  Every defense takes ``attack=`` (any registered attack, an
:class:`toolbox.Attack`, a name with ``threat=`` or a dict, see :func:`toolbox.defense`), which
replaces its default adversary, and the options

* ``mixup=alpha``: mix each batch (one ``lam ~ Beta(alpha, alpha)``) before the attack; the
  attack maximises and training minimises the mixed loss (see :mod:`toolbox_fastat.augment`);
* ``cutout=L``: zero one ``L x L`` square fully inside each image before the attack;
* ``clean_weight=w``: train on ``(1 - w) loss_adv + w loss_clean``.

The training adversary is called with the Trainer's generator (``batch.extra["generator"]``),
so a seeded run is reproducible and every batch gets fresh random starts.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import toolbox as tb
from toolbox.defense import Batch, Defense

from .attacks import RFGSM, TradesKL, kl_to_clean
from .augment import _check_size, cutout, draw_mixup, mixed_ce, with_mixed_loss

__all__ = ["FastDefense", "FGSMRS", "FGSMZero", "RFGSMDefense", "PGDAT", "Free", "TRADES",
           "trades_loss", "free_epochs"]


def _acc(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Batch accuracy as a detached 0-dim tensor (the Trainer sums tensor logs on the device,
    without a host sync per step)."""
    return (logits.detach().argmax(1) == y).float().mean()


def _threat(threat: Any) -> Any:
    if threat is None:
        return None
    if isinstance(threat, tb.ThreatModel):
        return threat
    if isinstance(threat, (tuple, list)) and len(threat) == 2:
        return tb.threat(threat[0], eps=threat[1])
    if isinstance(threat, dict):
        kw = dict(threat)
        return tb.threat(kw.pop("name"), **kw)
    raise ValueError(f"threat must be a ThreatModel (tb.Linf(0.3)), a ('linf', 0.3) pair or a dict, got {threat!r}")


def _scalar_eps(threat: Any, who: str) -> float:
    eps = threat.eps
    if isinstance(eps, torch.Tensor):
        raise ValueError(f"{who} needs a scalar eps, got a per-example tensor")
    return float(eps)


class FastDefense(Defense):
    """Common parts: the ``mixup``/``cutout``/``clean_weight`` options and the adversary call.

    Subclasses build their default attack in ``__init__`` and implement :meth:`loss`.
    """

    name = "fast-defense"

    def __init__(self, attack: tb.Attack, *, mixup: float | None = None, cutout: int | None = None,
                 clean_weight: float = 0.0) -> None:
        super().__init__(attack)
        if mixup is not None and (isinstance(mixup, bool) or not isinstance(mixup, (int, float)) or not mixup > 0):
            raise ValueError(f"mixup must be None or a positive Beta parameter alpha, got {mixup!r}")
        self.mixup = None if mixup is None else float(mixup)
        self.cutout = None if cutout is None else _check_size(cutout, "cutout")
        if isinstance(clean_weight, bool) or not isinstance(clean_weight, (int, float)) or not 0 <= clean_weight <= 1:
            raise ValueError(f"clean_weight must be in [0, 1], got {clean_weight!r}")
        self.clean_weight = float(clean_weight)

    # -- batch preparation -------------------------------------------------------------------
    def prepare(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, float]:
        """``(x, y, y2, lam)``: the batch after cutout and mixup (``y2=None``, ``lam=1`` without
        mixup).  Mixup labels a batch transform put in ``batch.extra`` (``y2``, ``lam``) are
        used as they are; asking for ``mixup=`` on top of them raises ``ValueError``."""
        x, y = batch.x, batch.y
        gen = batch.extra.get("generator")
        y2, lam = batch.extra.get("y2"), float(batch.extra.get("lam", 1.0))
        if self.cutout is not None:
            x, _ = cutout(x, self.cutout, gen)
        if self.mixup is not None:
            if y2 is not None:
                raise ValueError("the batch is already mixed by a transform (batch.extra has 'y2'); "
                                 "drop the defense's mixup= or the Trainer's Mixup transform")
            x, y2, lam = draw_mixup(x, y, self.mixup, gen)
        return x, y, y2, lam

    def run_attack(self, model: nn.Module, batch: Batch, x: torch.Tensor, y: torch.Tensor,
                   y2: torch.Tensor | None, lam: float) -> torch.Tensor:
        """The adversarial batch: ``self.adversary(batch)`` on ``x`` (mixed loss under mixup),
        with the Trainer's generator."""
        atk = self.adversary(batch)
        if y2 is not None:
            atk = with_mixed_loss(atk, y2, lam)
        return atk(model, x, y, index=batch.index, generator=batch.extra.get("generator"), check=False)

    def finish(self, model: nn.Module, logits_adv: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
               y2: torch.Tensor | None, lam: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Mean (mixed) cross-entropy on the adversarial logits, plus the clean term."""
        loss = mixed_ce(logits_adv, y, y2, lam).mean()
        logs = {"adv_loss": loss.detach(), "adv_acc": _acc(logits_adv, y)}
        if self.clean_weight > 0:
            clean = mixed_ce(model(x), y, y2, lam).mean()
            loss = (1 - self.clean_weight) * loss + self.clean_weight * clean
            logs["clean_loss"] = clean.detach()
        logs["loss"] = loss.detach()
        return loss, logs

    def loss(self, model, batch):
        x, y, y2, lam = self.prepare(batch)
        x_adv = self.run_attack(model, batch, x, y, y2, lam)
        return self.finish(model, model(x_adv), x, y, y2, lam)

    def spec(self) -> dict[str, Any]:
        out = super().spec()
        out.update({"mixup": self.mixup, "cutout": self.cutout, "clean_weight": self.clean_weight})
        return out


def _pick_attack(name: str, attack: Any, threat: Any, given: dict[str, Any], build) -> tb.Attack:
    """``attack`` when given (then the adversary options in ``given`` must be unset), else
    ``build(threat)``."""
    if attack is not None:
        if isinstance(attack, str):
            attack = tb.attack(attack, threat=_threat(threat))
        elif isinstance(attack, dict):
            spec = dict(attack)
            attack = tb.attack(spec.pop("name"), threat=_threat(spec.pop("threat", threat)), **spec)
        if not isinstance(attack, tb.Attack):
            raise ValueError(f"attack must be a toolbox Attack (tb.attack(...)), a name or a dict, got {attack!r}")
        clash = [k for k, v in given.items() if v is not None]
        if clash:
            raise ValueError(f"defense {name!r}: give either attack= or the adversary options "
                             f"{', '.join(clash)}, not both")
        return attack
    threat = _threat(threat)
    if threat is None:
        raise ValueError(f"defense {name!r} needs threat= (e.g. tb.Linf(0.3)) or attack=")
    return build(threat)


class FGSMRS(FastDefense):
    """FGSM from a uniform random start ("fast is better than free", Wong et al. 2020).

    Paper-exact order (fast_adversarial's MNIST code): ``delta ~ U(-eps, eps)`` **not** clamped
    to the image box for the gradient pass; ``delta <- clip(delta + alpha sign(g), -eps, eps)``,
    then clipped to ``[-x, 1 - x]``; the training forward uses ``x + delta``.  This is the
    kernel's ``fgsm`` attack with ``random_start=True, clamp_start=False``.
    ``clamp_start=True`` clamps the start first (a catastrophic-overfitting trigger on MNIST).

    Args:
        threat: the threat model (``tb.Linf(0.3)``); not with ``attack=``.
        step_size: alpha (default ``1.25 eps``, the thesis' recommendation; 0.375 at eps 0.3).
        attack: any registered attack instead of the built one.
        clamp_start: see above.
        mode: the attack's model mode: ``"keep"`` (default; the training mode, as the authors'
            code, which matters with batch norm) or ``"eval"``.
        mixup, cutout, clean_weight: see the module docstring.
    """

    name = "fgsm-rs"

    def __init__(self, threat: Any = None, step_size: float | None = None, *, attack: Any = None,
                 clamp_start: bool | None = None, mode: str | None = None, mixup: float | None = None,
                 cutout: int | None = None, clean_weight: float = 0.0) -> None:
        def build(thr):
            eps = _scalar_eps(thr, self.name)
            return tb.attack("fgsm", threat=thr, step_size=1.25 * eps if step_size is None else step_size,
                             random_start=True, clamp_start=bool(clamp_start), mode=mode or "keep")

        atk = _pick_attack(self.name, attack, threat if attack is None else None,
                           {"step_size": step_size, "clamp_start": clamp_start, "mode": mode}, build)
        super().__init__(atk, mixup=mixup, cutout=cutout, clean_weight=clean_weight)


class FGSMZero(FastDefense):
    """FGSM from a zero start, step ``step_size`` (default ``eps``): Goodfellow et al.'s FGSM
    training, the catastrophic-overfitting baseline of Table 4.1."""

    name = "fgsm-zero"

    def __init__(self, threat: Any = None, step_size: float | None = None, *, attack: Any = None,
                 mode: str | None = None, mixup: float | None = None, cutout: int | None = None,
                 clean_weight: float = 0.0) -> None:
        def build(thr):
            eps = _scalar_eps(thr, self.name)
            return tb.attack("fgsm", threat=thr, step_size=eps if step_size is None else step_size,
                             random_start=False, mode=mode or "keep")

        atk = _pick_attack(self.name, attack, threat if attack is None else None,
                           {"step_size": step_size, "mode": mode}, build)
        super().__init__(atk, mixup=mixup, cutout=cutout, clean_weight=clean_weight)


class RFGSMDefense(FastDefense):
    """R+FGSM training (Tramèr et al. 2018): hypercube start of radius ``init_radius`` (default
    ``eps/2``), one step of ``step_size`` (default ``eps/2``); ``init="uniform"`` and a full
    step give the other rows of the thesis' Table 4.3 ablation (the ``rfgsm`` attack)."""

    name = "rfgsm"

    def __init__(self, threat: Any = None, step_size: float | None = None, *, attack: Any = None,
                 init: str | None = None, init_radius: float | None = None, mode: str | None = None,
                 mixup: float | None = None, cutout: int | None = None, clean_weight: float = 0.0) -> None:
        def build(thr):
            return RFGSM(thr, step_size, init=init or "hypercube", init_radius=init_radius, mode=mode or "keep")

        atk = _pick_attack(self.name, attack, threat if attack is None else None,
                           {"step_size": step_size, "init": init, "init_radius": init_radius, "mode": mode},
                           build)
        super().__init__(atk, mixup=mixup, cutout=cutout, clean_weight=clean_weight)


class PGDAT(FastDefense):
    """PGD adversarial training (Madry et al. 2018): ``steps`` steps of ``step_size`` (default
    ``2.5 eps / steps``) from a uniform random start; trains on the last iterate.

    ``attack=`` takes any registered attack instead (APGD, a targeted PGD, a plugin's attack).
    """

    name = "pgd-at"

    def __init__(self, threat: Any = None, steps: int | None = None, step_size: float | None = None, *,
                 attack: Any = None, restarts: int | None = None, random_start: bool | None = None,
                 mode: str | None = None, mixup: float | None = None, cutout: int | None = None,
                 clean_weight: float = 0.0) -> None:
        def build(thr):
            return tb.attack("pgd", threat=thr, steps=10 if steps is None else steps, step_size=step_size,
                             restarts=1 if restarts is None else restarts,
                             random_start=True if random_start is None else random_start,
                             keep_best=False, mode=mode or "eval")

        atk = _pick_attack(self.name, attack, threat if attack is None else None,
                           {"steps": steps, "step_size": step_size, "restarts": restarts,
                            "random_start": random_start, "mode": mode}, build)
        super().__init__(atk, mixup=mixup, cutout=cutout, clean_weight=clean_weight)


# --------------------------------------------------------------------------------------- TRADES
def trades_loss(model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor, beta: float,
                y2: torch.Tensor | None = None, lam: float = 1.0
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """TRADES' outer loss ``CE(f(x), y) + beta * (1/N) sum_i KL(softmax f(x_i) || softmax f(x'_i))``.

    ``x``, ``x_adv`` ``(N, ...)``; ``y`` ``(N,)`` (with ``y2``/``lam`` the CE term is the mixup
    CE).  The clean probabilities are *not* detached (as in the TRADES code).  Returns
    ``(loss, ce, kl, logits_adv)``: scalars and the ``(N, C)`` adversarial logits.
    """
    logits = model(x)
    logits_adv = model(x_adv)
    ce = mixed_ce(logits, y, y2, lam).mean()
    kl = kl_to_clean(logits_adv, F.softmax(logits.float(), dim=1)).mean()
    return ce + beta * kl, ce, kl, logits_adv


class TRADES(FastDefense):
    """TRADES (Zhang et al. 2019): ``CE(f(x), y) + beta KL(f(x) || f(x'))`` with ``x'`` from
    the KL inner maximisation (the ``trades-kl`` attack: ``steps`` signed steps of
    ``step_size`` from ``x + 0.001 N(0, I)``, eval mode).  ``beta`` is TRADES' ``1/lambda``
    (6 in the paper's CIFAR-10 runs, 1 the code's default).  ``attack=`` replaces the KL
    maximiser by any registered attack (the outer loss stays TRADES').  ``clean_weight`` does
    not apply (the clean CE is part of the loss).
    """

    name = "trades"

    def __init__(self, threat: Any = None, beta: float = 6.0, steps: int | None = None,
                 step_size: float | None = None, *, attack: Any = None, init_std: float | None = None,
                 mixup: float | None = None, cutout: int | None = None) -> None:
        if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not math.isfinite(beta) or beta < 0:
            raise ValueError(f"beta must be a non-negative number, got {beta!r}")

        def build(thr):
            return TradesKL(thr, 10 if steps is None else steps, step_size,
                            init_std=0.001 if init_std is None else init_std)

        atk = _pick_attack(self.name, attack, threat if attack is None else None,
                           {"steps": steps, "step_size": step_size, "init_std": init_std}, build)
        super().__init__(atk, mixup=mixup, cutout=cutout)
        self.beta = float(beta)

    def loss(self, model, batch):
        x, y, y2, lam = self.prepare(batch)
        atk = self.adversary(batch)
        if y2 is not None and not isinstance(atk, TradesKL):
            atk = with_mixed_loss(atk, y2, lam)
        x_adv = atk(model, x, y, index=batch.index, generator=batch.extra.get("generator"), check=False)
        loss, ce, kl, logits_adv = trades_loss(model, x, x_adv, y, self.beta, y2, lam)
        return loss, {"loss": loss.detach(), "clean_loss": ce.detach(), "kl": kl.detach(),
                      "adv_acc": _acc(logits_adv, y)}

    def spec(self) -> dict[str, Any]:
        return {**super().spec(), "beta": self.beta}


# ----------------------------------------------------------------------------------------- Free
def free_epochs(epochs: int, replays: int) -> int:
    """Passes over the data for Free AT with ``replays`` (m) minibatch replays so that the
    gradient work equals ``epochs`` standard epochs: ``ceil(epochs / m)``."""
    for v, n in ((epochs, "epochs"), (replays, "replays")):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{n} must be a positive integer, got {v!r}")
    return math.ceil(epochs / replays)


class Free(FastDefense):
    """"Free" adversarial training (Shafahi et al. 2019; thesis Alg. 6).

    Each minibatch is replayed ``replays`` (m) times.  One backward pass per replay gives both
    the parameter gradient and the input gradient at the current perturbation ``delta``; the
    optimizer steps with the former, and ``delta <- proj(delta + step_size sign(grad_delta))``
    (``step_size`` defaults to ``eps``) with the latter, so each update uses the gradient at the
    *pre-update* delta.  ``delta`` is one buffer of batch shape carried across minibatches and
    epochs (a partial last batch uses and updates its first rows); at each new batch
    ``x + delta`` is projected into the new batch's ball ∩ box.  Train for
    :func:`free_epochs` ``(T, m)`` passes to match ``T`` standard epochs.

    **How it maps onto the Trainer** (one ``loss()`` call per minibatch, one optimizer step
    after it): the defense takes the first ``m - 1`` optimizer steps itself through
    ``batch.trainer`` (its optimizer, GradScaler, ``grad_clip`` and torch ``scheduler``), and
    returns the m-th replay's loss for the Trainer's own backward and step.  The LR schedule
    (``lr_schedule=``) is evaluated per replay at progress ``(step + (r + 1) / m) /
    steps_per_epoch`` epochs, i.e. over ``m x batches x passes`` iterations as in the
    authors' code; the last replay gets exactly the Trainer's value.  The delta update of the
    last replay reads the input gradient the Trainer's backward leaves on the leaf tensor, at
    the next call (or :meth:`state_dict`).  ``trainer.step`` counts minibatches; this
    defense's ``optimizer_steps`` counts all ``m`` steps per batch.  Callbacks run once per
    minibatch.

    ``attack=`` supplies the threat model (and the step size, when the attack has one); the
    update itself is always Free's warm-started signed step.
    """

    name = "free"

    def __init__(self, threat: Any = None, replays: int = 8, step_size: float | None = None, *,
                 attack: Any = None, mixup: float | None = None, cutout: int | None = None) -> None:
        if isinstance(replays, bool) or not isinstance(replays, int) or replays < 1:
            raise ValueError(f"replays must be a positive integer (m), got {replays!r}")

        def build(thr):
            eps = _scalar_eps(thr, self.name)
            return tb.attack("fgsm", threat=thr, step_size=eps if step_size is None else step_size)

        atk = _pick_attack(self.name, attack, threat if attack is None else None, {"step_size": step_size}, build)
        super().__init__(atk, mixup=mixup, cutout=cutout)
        self.replays = replays
        self.delta: torch.Tensor | None = None
        self.optimizer_steps = 0
        self._pending: tuple[torch.Tensor, torch.Tensor, Any, float] | None = None

    # -- the persistent perturbation ---------------------------------------------------------
    def _step_size(self, threat: Any) -> float:
        size = getattr(self.attack, "step_size", None)
        if size is None:
            return _scalar_eps(threat, self.name)
        if self.attack.threat.eps != threat.eps and not isinstance(threat.eps, torch.Tensor):
            return float(size) * float(threat.eps) / float(self.attack.threat.eps)  # eps schedule
        return float(size)

    def _update(self, x_adv: torch.Tensor, x: torch.Tensor, grad: torch.Tensor, threat: Any, size: float) -> None:
        """``delta[:n] <- proj(x_adv + size * ascent(grad)) - x``."""
        with torch.no_grad():
            new = threat.step(x_adv.detach(), x, grad, size) - x
            n = x.shape[0]
            self.delta[:n] = new.to(self.delta.dtype)

    def _flush(self) -> None:
        """Apply the last replay's delta update from the gradient the Trainer's backward left."""
        if self._pending is None:
            return
        x_adv, x, threat, size = self._pending
        self._pending = None
        if x_adv.grad is not None:
            self._update(x_adv, x, x_adv.grad, threat, size)

    def _slice(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        if self.delta is not None and (self.delta.device != x.device or self.delta.dtype != x.dtype):
            self.delta = self.delta.to(device=x.device, dtype=x.dtype)
        if self.delta is None or self.delta.shape[1:] != x.shape[1:]:
            self.delta = torch.zeros_like(x)
        elif self.delta.shape[0] < n:  # a batch larger than the buffer: grow with zeros
            self.delta = torch.cat([self.delta, torch.zeros_like(x[: n - self.delta.shape[0]])])
        return self.delta[:n]

    def _set_lr(self, trainer: Any, r: int) -> None:
        sched = getattr(trainer, "lr_schedule", None)
        spe = getattr(trainer, "steps_per_epoch", 0)
        if sched is None or not spe:
            return
        lr = float(sched((trainer.step + (r + 1) / self.replays) / spe))
        for g in trainer.optimizer.param_groups:
            g["lr"] = lr

    def _inner_step(self, trainer: Any, loss: torch.Tensor) -> None:
        opt = trainer.optimizer
        scaler = getattr(trainer, "scaler", None)
        scaled = scaler is not None and scaler.is_enabled()
        (scaler.scale(loss) if scaled else loss).backward()
        clip = getattr(trainer, "grad_clip", None)
        if clip is not None:
            if scaled:
                scaler.unscale_(opt)
            params = [p for g in opt.param_groups for p in g["params"]]
            torch.nn.utils.clip_grad_norm_(params, clip)
        if scaled:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()
        if getattr(trainer, "scheduler", None) is not None:
            trainer.scheduler.step()
        self.optimizer_steps += 1

    def loss(self, model, batch):
        self._flush()
        x, y, y2, lam = self.prepare(batch)
        trainer = batch.trainer
        if self.replays > 1 and trainer is None:
            raise ValueError("defense 'free' with replays > 1 needs batch.trainer (it takes the first "
                             "m - 1 optimizer steps of each minibatch itself); use it with tb.Trainer")
        threat = self.adversary(batch).threat
        size = self._step_size(threat)
        with torch.no_grad():
            x_adv = threat.project(x + self._slice(x), x)
        for r in range(self.replays):
            x_adv = x_adv.detach().requires_grad_(True)
            if r < self.replays - 1:
                self._set_lr(trainer, r)
                trainer.optimizer.zero_grad(set_to_none=True)
                logits = model(x_adv)
                loss = mixed_ce(logits, y, y2, lam).mean()
                self._inner_step(trainer, loss)
                grad = x_adv.grad
                self._update(x_adv, x, grad, threat, size)
                with torch.no_grad():
                    x_adv = x + self.delta[: x.shape[0]]
            else:
                if trainer is not None:
                    self._set_lr(trainer, r)
                    trainer.optimizer.zero_grad(set_to_none=True)
                logits = model(x_adv)
                loss = mixed_ce(logits, y, y2, lam).mean()
                self._pending = (x_adv, x, threat, size)
                self.optimizer_steps += 1  # the Trainer's step after this call
        return loss, {"loss": loss.detach(), "adv_acc": _acc(logits, y)}

    def state_dict(self) -> dict[str, Any]:
        self._flush()
        return {"delta": None if self.delta is None else self.delta.detach().cpu().clone(),
                "optimizer_steps": self.optimizer_steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        d = state.get("delta")
        self.delta = None if d is None else d.clone()
        self.optimizer_steps = int(state.get("optimizer_steps", 0))
        self._pending = None

    def spec(self) -> dict[str, Any]:
        return {**super().spec(), "replays": self.replays}
