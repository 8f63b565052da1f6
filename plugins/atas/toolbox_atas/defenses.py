"""ATTA and ATAS: single-step adversarial training from a stored per-example perturbation.

Both defenses keep, for every training example ``i`` (keyed by its dataset index in the
Trainer's per-example :class:`~toolbox.train.store.Store`), the perturbation ``δ_i`` their
last visit produced, and start the next visit's FGSM step from it instead of from a fresh
random point ("previous-epoch initialisation", Zheng et al. 2020).  One training step is::

    x0    = clip01(x + T(δ_i))                      # T: the batch's crop/flip, if any
    g     = ∇_x CE(f_eval(x0), y)                   # forward + backward no. 1 (input gradient only)
    α_i   = step size (ATTA: constant; ATAS: γ / (c + sqrt(v_i)), v_i the EMA of ||g_i||²)
    x_adv = clip01(x + clip(x0 + α_i sign(g) - x, -eps, eps))
    loss  = CE(f_train(x_adv), y)                   # forward no. 2; the Trainer's backward is no. 2
    δ_i  <- T⁻¹(x_adv - x) written into its crop window

so both cost exactly two forwards and two backwards per batch, like FGSM-RS.

Store tensors (prefix ``atta_`` or ``atas_``; ``(size, *shape)`` rows keyed by dataset index):

* ``delta`` float32 ``(size, C, H', W')`` -- the stored perturbation, in the *stored frame*:
  the padded frame ``(H + 2p, W + 2p)`` when the batch carries a
  :class:`toolbox.data.RandomCropFlip` augmentation (``extra["crop_offsets"]``,
  ``extra["flip"]``, ``extra["padding"]``), else the image frame;
* ``gen`` int64 ``(size,)`` -- the reset generation ``δ_i`` was drawn in (``-1``: never
  visited).  A visit in a later generation re-draws ``δ_i ~ U(-eps, eps)`` first, which is
  both the initialisation and the periodic reset;
* ``gnorm`` float32 ``(size,)`` -- ``||∇_x CE(f(x0_i), y_i)||_2`` of the per-example loss at
  the last visit (the paper's G_i; diagnostics);
* ``step`` float32 ``(size,)`` -- the step size used at the last visit;
* ATAS only: ``v`` float32 ``(size,)`` -- the EMA of the squared gradient norm (in the
  ``grad_scale`` convention, see :class:`ATAS`).

Batch logs (epoch means over examples in the history as ``train_<key>``): ``loss``,
``adv_acc``, ``step`` (mean α), ``gnorm`` (mean G) and ``gnorm_sq`` (mean G²), from which
:class:`~toolbox_atas.diagnostics.GradNormStats` derives the long-tail statistic
``mean(G²) / mean(G)²``; ATAS adds ``sqrt_v`` (mean √v) and ``clamped`` (fraction of
examples whose step hit the clamp).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

import toolbox as tb
from toolbox.threat import as_threat

__all__ = ["ATTA", "ATAS", "GRAD_SCALES", "store_bytes_per_example"]

#: gradient-scaling conventions for the norm that feeds ATAS's EMA ``v``
GRAD_SCALES = ("batch-mean", "per-example")


def _number(value: Any, name: str, *, positive: bool = True, allow_zero: bool = False,
            allow_inf: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    v = float(value)
    if math.isnan(v) or (math.isinf(v) and not allow_inf):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if positive and (v < 0 or (v == 0 and not allow_zero)):
        raise ValueError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")
    return v


def _int(value: Any, name: str, *, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _is_crop_flip(extra: dict[str, Any]) -> bool:
    return all(k in extra for k in ("crop_offsets", "flip", "padding"))


def store_bytes_per_example(store: Any, prefix: str | None = None) -> int:
    """Bytes one example occupies in ``store`` (all tensors, or those named ``prefix*``).

    ``store``: a :class:`toolbox.train.store.Store`.  For ATAS on CIFAR-10 with crop+flip the
    stored perturbation is ``3 x 40 x 40`` float32 (19,200 bytes) plus 4 small scalars.
    """
    total = 0
    for name in store.names():
        if prefix is None or name.startswith(prefix):
            t = store.tensor(name)
            total += t[0].numel() * t.element_size() if t.shape[0] else 0
    return int(total)


class ATTA(tb.Defense):
    """ATTA (Zheng et al., CVPR 2020): FGSM from the stored previous-epoch perturbation.

    Args:
        threat: the l-inf threat model (``tb.Linf(eps)``, or ``{"name": "linf", "eps": ...}``);
            or give ``eps`` instead.  ``batch.eps`` (an eps schedule) overrides its radius.
        eps: the radius in [0, 1] pixel units when ``threat`` is not given.
        step_size: the FGSM step α (pixel units); the ATAS paper's ATTA-1 baseline uses
            4/255 at eps 8/255.
        reset_every: re-draw every stored ``δ ~ U(-eps, eps)`` at the start of each
            ``reset_every``-th epoch (1-based epochs ``reset_every, 2*reset_every, ...``),
            except the last epoch of the run (the official code: 10, i.e. epochs 10 and 20 of
            30).  ``0``/``None``: never.
        warmup_epochs: the first ``warmup_epochs`` epochs use ``warmup_step`` (0: none).
        warmup_step: the warm-up step; default ``eps``.
        attack_mode: ``"eval"`` (batch-norm statistics frozen for the input-gradient pass, as
            in the official code) or ``"keep"`` (train mode).

    Needs a Trainer (``batch.store`` and ``batch.index``).  Two forwards and two backwards per
    batch.  See the module docstring for the store layout and the batch logs.
    """

    name = "atta"
    uses_store = True

    def __init__(self, threat: Any = None, *, eps: float | None = None, step_size: float = 4 / 255,
                 reset_every: int | None = 10, warmup_epochs: int = 0, warmup_step: float | None = None,
                 attack_mode: str = "eval") -> None:
        super().__init__(None)
        if threat is None and eps is None:
            raise ValueError(f"defense {self.name!r} needs threat= (tb.Linf(eps)) or eps=")
        if threat is not None and eps is not None:
            raise ValueError("give either threat= or eps=, not both")
        self.threat = as_threat(threat) if threat is not None else tb.Linf(eps=_number(eps, "eps", allow_zero=True))
        if not isinstance(self.threat, tb.Linf):
            raise ValueError(f"threat must be an l-inf threat model (tb.Linf), got {self.threat!r}: "
                             f"{self.name} takes sign steps")
        if isinstance(self.threat.eps, torch.Tensor):
            raise ValueError("threat.eps must be a number (per-example eps tensors are not supported)")
        # self.threat exposes the threat model to the Trainer and its callbacks (eps in the
        # history, the CO detector's default attacks: toolbox.defense.defense_threat)
        self.step_size = _number(step_size, "step_size")
        self.reset_every = 0 if reset_every is None else _int(reset_every, "reset_every")
        self.warmup_epochs = _int(warmup_epochs, "warmup_epochs")
        self.warmup_step = None if warmup_step is None else _number(warmup_step, "warmup_step")
        if attack_mode not in ("eval", "keep"):
            raise ValueError(f"attack_mode must be 'eval' or 'keep', got {attack_mode!r}")
        self.attack_mode = attack_mode
        self.prefix = f"{self.name}_"

    # -- pieces subclasses change ---------------------------------------------------------------
    def step_sizes(self, batch: tb.Batch, gnorm: torch.Tensor, eps: float, logs: dict[str, Any]) -> torch.Tensor:
        """Per-example step sizes ``(N,)`` for this batch (``gnorm``: ``(N,)`` per-example
        input-gradient norms).  ATTA: the constant step (``warmup_step`` during warm-up)."""
        step = self.warmup_step_for(eps) if self.in_warmup(batch) else self.step_size
        return torch.full_like(gnorm, step)

    # -- helpers ---------------------------------------------------------------------------------
    def in_warmup(self, batch: tb.Batch) -> bool:
        return batch.epoch < self.warmup_epochs

    def warmup_step_for(self, eps: float) -> float:
        return eps if self.warmup_step is None else self.warmup_step

    def generation(self, epoch: int, epochs: int | None) -> int:
        """The reset generation of 0-based ``epoch`` in a run of ``epochs`` epochs: the number
        of resets done by then (a reset opens each 1-based epoch ``k * reset_every``, except
        the run's last epoch)."""
        if not self.reset_every:
            return 0
        g = (epoch + 1) // self.reset_every
        if epochs is not None and epoch + 1 == epochs and (epoch + 1) % self.reset_every == 0:
            g -= 1
        return g

    def eps_for(self, batch: tb.Batch) -> float:
        return float(batch.eps) if batch.eps is not None else float(self.threat.eps)

    # -- the step ----------------------------------------------------------------------------------
    def loss(self, model, batch):
        """CE on the single-step adversary grown from the stored perturbation (see the class)."""
        if batch.store is None or batch.index is None:
            raise ValueError(f"defense {self.name!r} keeps per-example state: it needs batch.store and "
                             "batch.index (train it with tb.Trainer)")
        x, y, index, store, extra = batch.x, batch.y, batch.index, batch.store, batch.extra
        n = x.shape[0]
        eps = self.eps_for(batch)
        gen = extra.get("generator")
        aug = _is_crop_flip(extra)
        if aug:
            p = int(extra["padding"])
            frame = (x.shape[1], x.shape[2] + 2 * p, x.shape[3] + 2 * p)
        else:
            frame = tuple(x.shape[1:])
        P = self.prefix

        # stored perturbation; first visit and resets draw U(-eps, eps)
        stored = store.get(P + "delta", index, init=0.0, shape=frame).to(x.dtype)
        if tuple(stored.shape[1:]) != frame:
            raise ValueError(f"stored perturbation {P}delta has per-example shape {tuple(stored.shape[1:])}, "
                             f"but this batch needs {frame} (did the transform change between epochs?)")
        drawn = store.get(P + "gen", index, init=-1, dtype=torch.int64)
        current = self.generation(batch.epoch, getattr(batch.trainer, "epochs", None))
        fresh = drawn.to(x.device) < current
        if bool(fresh.any()):
            k = int(fresh.sum())
            u = torch.rand((k, *frame), generator=gen, device=gen.device if gen is not None else x.device)
            stored[fresh] = ((2 * u - 1) * eps).to(stored.device, stored.dtype)
        # an eps schedule may have shrunk the ball (pixels outside this batch's window stay as stored)
        delta = (tb.data.RandomCropFlip.crop(stored, extra) if aug else stored).clamp(-eps, eps)
        x0 = (x + delta).clamp(0, 1)

        # forward + backward no. 1: the per-example input gradient (parameters frozen)
        with tb.attack_mode(model, self.attack_mode):
            x0g = x0.detach().requires_grad_(True)
            out = model(x0g)
            (g,) = torch.autograd.grad(F.cross_entropy(out.float(), y, reduction="sum"), x0g)
        gnorm = g.detach().flatten(1).norm(dim=1).float()      # (N,) per-example-loss gradient norms

        logs: dict[str, Any] = {}
        alpha = self.step_sizes(batch, gnorm, eps, logs)       # (N,)
        a = alpha.to(x.dtype).view(n, *([1] * (x.dim() - 1)))
        x_adv = (x + (x0 + a * g.sign() - x).clamp(-eps, eps)).clamp(0, 1).detach()

        # write back: the new perturbation, in the stored frame
        new = x_adv - x
        if aug:
            window = tb.data.RandomCropFlip.uncrop(torch.ones_like(new), extra) > 0
            new = torch.where(window, tb.data.RandomCropFlip.uncrop(new, extra), stored)
        store.set(P + "delta", index, new)
        store.set(P + "gen", index, torch.full((n,), current, dtype=torch.int64, device=x.device))
        store.set(P + "gnorm", index, gnorm)
        store.set(P + "step", index, alpha.float())

        # forward no. 2 (train mode); the Trainer does backward no. 2
        logits = model(x_adv)
        loss = F.cross_entropy(logits, y)
        logs.update({"loss": loss.detach(), "adv_acc": (logits.detach().argmax(1) == y).float().mean(),
                     "step": alpha.float().mean(), "gnorm": gnorm.mean(), "gnorm_sq": gnorm.pow(2).mean()})
        return loss, logs

    def spec(self) -> dict[str, Any]:
        return {"defense": self.name, "threat": self.threat.spec(), "step_size": self.step_size,
                "reset_every": self.reset_every, "warmup_epochs": self.warmup_epochs,
                "warmup_step": self.warmup_step, "attack_mode": self.attack_mode}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.spec().items() if k != 'defense')})"


class ATAS(ATTA):
    """ATAS (Huang et al., "Fast Adversarial Training with Adaptive Step Size", IEEE TNNLS 2023).

    ATTA with a per-example step: ``v_i <- β v_i + (1 - β) ||g_i||²`` (Eq. 3) and
    ``α_i = γ / (c + sqrt(v_i))`` (Eq. 4), computed as in the official code as
    ``α_i = step_max / (1 + sqrt(v_i) / c)`` with ``step_max = γ / c`` (the step at
    ``v = 0``), then clamped to ``clamp = (lo, hi)``.  ``v_i`` changes only when example ``i``
    is in the batch, starts at 0 and is not touched during warm-up or by resets.

    Args (defaults: the paper and its official CIFAR code, eps = 8/255):
        threat / eps: as for :class:`ATTA`.
        c: 0.01 (CIFAR-10/100; 0.1 for ImageNet).  ``math.inf`` gives a constant step
            ``step_max``: ATAS then *is* ATTA with ``step_size = step_max`` (bit for bit, with
            ``clamp=None`` and ``warmup_epochs=0``).
        step_max: γ/c = 16/255 (hard-coded in the official code, independent of eps).
        gamma: alternatively γ itself; ``step_max = gamma / c``.
        beta: EMA factor, 0.5.
        clamp: ``(lo, hi)`` bounds of the step, official code ``(4/255, 14/255)`` on CIFAR
            (``(4/255, 8/255)`` on ImageNet); ``None``: no clamp.  Not in the paper.
        warmup_epochs: 5 (official code): constant step ``warmup_step`` (default ``eps``), no
            ``v`` update.
        reset_every: 10 (official code), as for :class:`ATTA`.
        grad_scale: the gradient whose squared norm feeds ``v``:

            * ``"batch-mean"`` (default, the official code): the gradient of the *batch-mean*
              CE, i.e. ``||∇_x ℓ_i|| / B`` with ``B`` the (per-process) batch size.  ``c =
              0.01`` is calibrated to this at ``B = 128``; a different batch size changes the
              effective ``c`` (by ``B / 128``).
            * ``"per-example"``: ``||∇_x ℓ_i||`` itself, independent of the batch size; use
              ``c = 0.01 * 128 = 1.28`` for the paper's CIFAR step sizes.
        attack_mode: as for :class:`ATTA`.
    """

    name = "atas"

    def __init__(self, threat: Any = None, *, eps: float | None = None, c: float = 0.01,
                 step_max: float | None = None, gamma: float | None = None, beta: float = 0.5,
                 clamp: Any = (4 / 255, 14 / 255), warmup_epochs: int = 5, warmup_step: float | None = None,
                 reset_every: int | None = 10, grad_scale: str = "batch-mean", attack_mode: str = "eval") -> None:
        c = _number(c, "c", allow_inf=True)
        if gamma is not None and step_max is not None:
            raise ValueError("give either step_max= (γ/c) or gamma= (γ), not both")
        if gamma is not None:
            if math.isinf(c):
                raise ValueError("gamma= needs a finite c (with c = inf give step_max=)")
            step_max = _number(gamma, "gamma") / c
        step_max = 16 / 255 if step_max is None else _number(step_max, "step_max")
        super().__init__(threat, eps=eps, step_size=step_max, reset_every=reset_every,
                         warmup_epochs=warmup_epochs, warmup_step=warmup_step, attack_mode=attack_mode)
        self.c = c
        self.step_max = step_max
        self.beta = _number(beta, "beta", allow_zero=True)
        if self.beta >= 1:
            raise ValueError(f"beta must be in [0, 1), got {beta!r}")
        if clamp is None:
            self.clamp = None
        else:
            if not isinstance(clamp, (tuple, list)) or len(clamp) != 2:
                raise ValueError(f"clamp must be None or a pair (lo, hi), got {clamp!r}")
            lo, hi = _number(clamp[0], "clamp[0]", allow_zero=True), _number(clamp[1], "clamp[1]")
            if lo > hi:
                raise ValueError(f"clamp must have lo <= hi, got {clamp!r}")
            self.clamp = (lo, hi)
        if grad_scale not in GRAD_SCALES:
            raise ValueError(f"grad_scale must be one of {GRAD_SCALES}, got {grad_scale!r}")
        self.grad_scale = grad_scale

    @property
    def gamma(self) -> float:
        """γ = c * step_max (``inf`` when ``c`` is)."""
        return self.c * self.step_max

    def alpha(self, v: torch.Tensor) -> torch.Tensor:
        """Step sizes for EMA values ``v`` (any shape): ``step_max / (1 + sqrt(v) / c)``,
        clamped (Eq. 4 plus the official clamp)."""
        a = self.step_max / (1 + v.sqrt() / self.c)
        if self.clamp is not None:
            a = a.clamp(self.clamp[0], self.clamp[1])
        return a

    def step_sizes(self, batch, gnorm, eps, logs):
        """Warm-up: ``warmup_step`` and no ``v`` update.  Then Eq. 3 for the batch's rows of
        ``v`` (``gnorm`` scaled per ``grad_scale``) and :meth:`alpha`."""
        index, store = batch.index, batch.store
        v = store.get(self.prefix + "v", index, init=0.0).to(gnorm.device)
        logs["sqrt_v"] = v.sqrt().mean()
        if self.in_warmup(batch):
            logs["clamped"] = 0.0
            return torch.full_like(gnorm, self.warmup_step_for(eps))
        scaled = gnorm / gnorm.shape[0] if self.grad_scale == "batch-mean" else gnorm
        v = self.beta * v + (1 - self.beta) * scaled.pow(2)
        store.set(self.prefix + "v", index, v)
        raw = self.step_max / (1 + v.sqrt() / self.c)
        a = self.alpha(v)
        logs["sqrt_v"] = v.sqrt().mean()
        logs["clamped"] = (a != raw).float().mean()
        return a

    def spec(self) -> dict[str, Any]:
        out = super().spec()
        out.pop("step_size")
        out.update({"c": self.c if math.isfinite(self.c) else "inf", "step_max": self.step_max, "beta": self.beta,
                    "clamp": list(self.clamp) if self.clamp else None, "grad_scale": self.grad_scale})
        return out
