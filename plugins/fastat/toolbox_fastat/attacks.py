"""The two training adversaries the kernel does not have, written on the kernel's one loop
(:func:`toolbox.attacks.iterate`).

* ``rfgsm``: R+FGSM (Tramèr et al. 2018) as compared in the thesis (Table 4.3): a start on
  the hypercube ``x + r sign(N(0, I))`` (default ``r = eps/2``), then one signed step of
  ``step_size`` (default ``eps/2``), projected into the ball and the box.  ``init="uniform"``
  (``U(-r, r)``) and ``init="zero"`` give the other rows of the ablation.
* ``trades-kl``: TRADES' inner maximisation (Zhang et al. 2019): from
  ``x + init_std N(0, I)``, ``steps`` signed steps on ``KL(softmax f(x) || softmax f(x'))``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from toolbox import Attack
from toolbox import losses as _losses
from toolbox.attacks import Signed, iterate

__all__ = ["RFGSM", "TradesKL", "kl_to_clean"]


def _positive(value, name: str, *, allow_zero: bool = False, integer: bool = False):
    ok = not isinstance(value, bool) and isinstance(value, (int, float))
    if ok and integer:
        ok = float(value).is_integer()
    if ok:
        ok = math.isfinite(value) and (value >= 0 if allow_zero else value > 0)
    if not ok:
        kind = "integer" if integer else "number"
        raise ValueError(f"{name} must be a {'non-negative' if allow_zero else 'positive'} {kind}, got {value!r}")
    return int(value) if integer else float(value)


def _misclassified(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return logits.argmax(1) != y


class RFGSM(Attack):
    """R+FGSM: one signed step of ``step_size`` from a random start of radius ``init_radius``.

    Args:
        threat: the threat model (``init="hypercube"`` needs an ℓ∞ ball).
        step_size: the step (default ``eps / 2``, Tramèr et al.).
        init: ``"hypercube"`` (``x + r sign(N(0, I))``), ``"uniform"`` (the threat model's
            uniform start at radius ``r``) or ``"zero"``.
        init_radius: ``r`` (default ``eps / 2``), in the threat model's units.
        clamp_start: clamp the start to the [0, 1] box before the gradient pass (default
            ``False``, the order of fast_adversarial's MNIST code; the output is always inside
            ball ∩ box).
        loss: the attack loss (a registered name or a callable ``(logits, y) -> (N,)``).

    Input ``x`` ``(N, ...)`` in [0, 1], ``y`` ``(N,)``; output the same shape as ``x``.
    """

    name = "rfgsm"

    def __init__(self, threat, step_size: float | None = None, *, init: str = "hypercube",
                 init_radius: float | None = None, clamp_start: bool = False, loss: str = "ce",
                 seed: int | None = None, mode: str = "eval"):
        super().__init__(threat, seed=seed, mode=mode)
        if isinstance(self.threat.eps, torch.Tensor):
            raise ValueError("rfgsm needs a scalar eps, got a per-example tensor")
        if init not in ("hypercube", "uniform", "zero"):
            raise ValueError(f"init must be 'hypercube', 'uniform' or 'zero', got {init!r}")
        if init == "hypercube" and self.threat.name != "linf":
            raise ValueError(f"init='hypercube' is an ℓ∞ start; the threat model is {self.threat.name!r}")
        self.step_size = None if step_size is None else _positive(step_size, "step_size")
        self.init_radius = None if init_radius is None else _positive(init_radius, "init_radius", allow_zero=True)
        self.init, self.clamp_start, self.loss = init, bool(clamp_start), loss
        _losses.get(loss)  # fail early on an unknown loss name

    def start(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """The random start ``(N, ...)`` (not projected unless ``clamp_start``)."""
        eps = float(self.threat.eps)
        r = eps / 2 if self.init_radius is None else self.init_radius
        if self.init == "zero" or r == 0:
            x0 = x.clone()
        elif self.init == "hypercube":
            noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            x0 = x + r * noise.sign()
        else:
            x0 = self.threat.with_eps(r).random_init(x, generator, box=False)
        return x0.clamp(0, 1) if self.clamp_start else x0

    def perturb(self, model, x, y, *, generator=None, **_):
        eps = float(self.threat.eps)
        size = eps / 2 if self.step_size is None else self.step_size
        x0 = self.start(x, generator)
        x_adv, _, _ = iterate(model, x, y, x0, steps=1, rule=Signed(self.threat, size),
                              loss=_losses.get(self.loss), success=_misclassified, keep_best=False,
                              generator=generator)
        return x_adv


def kl_to_clean(logits: torch.Tensor, p_clean: torch.Tensor) -> torch.Tensor:
    """Per-example ``KL(p_clean || softmax(logits))`` ``(N,)`` (sums over classes);
    ``logits`` ``(N, C)``, ``p_clean`` ``(N, C)`` probabilities."""
    logp = F.log_softmax(logits.float(), dim=1)
    return (p_clean * (torch.log(p_clean.clamp_min(1e-30)) - logp)).sum(1)


class TradesKL(Attack):
    """TRADES' inner maximisation: ``steps`` projected signed steps of ``step_size`` (default
    ``2.5 eps / steps``) on ``KL(softmax f(x) || softmax f(x'))`` from ``x + init_std N(0, I)``.

    Label-free (``y`` is ignored).  ``x`` ``(N, ...)`` in [0, 1]; output the same shape, inside
    the threat model's ball ∩ [0, 1].  Runs in eval mode by default (as the current TRADES
    code).
    """

    name = "trades-kl"

    def __init__(self, threat, steps: int = 10, step_size: float | None = None, *,
                 init_std: float = 0.001, seed: int | None = None, mode: str = "eval"):
        super().__init__(threat, seed=seed, mode=mode)
        self.steps = _positive(steps, "steps", allow_zero=True, integer=True)
        self.step_size = None if step_size is None else _positive(step_size, "step_size")
        self.init_std = _positive(init_std, "init_std", allow_zero=True)

    def perturb(self, model, x, y, *, generator=None, **_):
        with torch.no_grad():
            p = F.softmax(model(x).float(), dim=1)
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        x0 = x + self.init_std * noise
        if self.steps == 0:
            return self.threat.project(x0, x)
        size = self.threat.default_step_size(self.steps) if self.step_size is None else self.step_size

        def never(logits: torch.Tensor, pc: torch.Tensor) -> torch.Tensor:
            return torch.zeros(logits.shape[0], dtype=torch.bool, device=logits.device)

        x_adv, _, _ = iterate(model, x, p, x0, steps=self.steps, rule=Signed(self.threat, size),
                              loss=kl_to_clean, success=never, keep_best=False, generator=generator)
        return x_adv
