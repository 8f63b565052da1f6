"""The MSD attack (multi steepest descent, Maini, Wong & Kolter 2020; thesis Algorithm 9) on the
kernel's one shared loop: :func:`toolbox.attacks.base.iterate` with the :class:`Union` threat
model's ``step`` (one candidate per norm, the highest-loss one kept per example)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

import toolbox as tb
from toolbox import losses as _losses
from toolbox.attacks.base import (
    Attack,
    Signed,
    best_over_restarts,
    check_steps,
    iterate,
    misclassified,
)

from .threat import Union

__all__ = ["MSD", "as_union", "MNIST_THREATS", "MNIST_MSD_STEPS"]

#: the thesis's MNIST radii (ℓ∞, ℓ2, ℓ1) and MSD step sizes (text values; the code used ℓ2 0.1
#: and an ℓ1 per-coordinate step α·20/k instead of α/k)
MNIST_THREATS = (("linf", 0.3), ("l2", 1.5), ("l1", 12.0))
MNIST_MSD_STEPS = (0.01, 0.2, 0.05)


def as_union(threat: Any) -> Union:
    """A :class:`Union` from a Union, one threat model (a union of one), or a sequence of
    threat models / ``(name, eps)`` pairs / dicts."""
    if isinstance(threat, Union):
        return threat
    if isinstance(threat, tb.ThreatModel):
        return Union([threat])
    if isinstance(threat, dict) and threat.get("name") == "union":
        kw = dict(threat)
        kw.pop("name")
        return Union(**kw)
    if isinstance(threat, Sequence) and not isinstance(threat, str):
        return Union(list(threat))
    raise ValueError(f"threat must be a Union or a list of threat models, got {threat!r}")


def check_positive(value: Any, name: str, *, integer: bool = False) -> Any:
    """``value`` if it is a positive number (an int when ``integer``), else ``ValueError``."""
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok or not value > 0 or value != value or value == float("inf"):
        kind = "a positive int" if integer else "a positive finite number"
        raise ValueError(f"{name} must be {kind}, got {value!r}")
    return value


def _sizes_ok(step_size: Any, k: int) -> tuple[Any, ...] | None:
    if step_size is None:
        return None
    if isinstance(step_size, (int, float)) and not isinstance(step_size, bool):
        return (check_positive(step_size, "step_size"),) * k
    if isinstance(step_size, Sequence) and not isinstance(step_size, str):
        if len(step_size) != k:
            raise ValueError(f"step_size must give one value per norm ({k}), got {step_size!r}")
        return tuple(check_positive(float(v), f"step_size[{i}]") for i, v in enumerate(step_size))
    raise ValueError(f"step_size must be a float or one float per norm, got {step_size!r}")


class MSD(Attack):
    """Multi steepest descent over a union of ℓp balls.

    Each of ``steps`` iterations computes one gradient at the current iterate, takes one
    steepest-ascent step per component norm (its own step size, projected onto its own ball ∩
    box — the kernel's exact projections, the ℓ1 step the sparse top-k one), and keeps, per
    example, the candidate with the highest ``loss``.  The iterate can so move between balls.
    The result is, per example, the first misclassifying iterate or else the highest-loss one
    over all iterations and ``restarts`` (the thesis code's "best so far"; the algorithm box
    returns the last iterate: ``keep_best=False``).

    Args:
        threat: a :class:`Union`, or a list of threat models, e.g. ``[tb.Linf(0.3), tb.L2(1.5),
            tb.L1(12)]`` (the thesis MNIST radii).
        steps: iterations (thesis MNIST training: 100; CIFAR-10: 50).
        step_size: one step per norm in that norm's units, e.g. ``(0.01, 0.2, 0.05)`` (MNIST,
            text), or one float for all; default each component's ``2.5 eps_p / steps``.
        restarts: independent runs; the first starts at ``x`` (``zero_start=True``, the thesis),
            the others from random points of the union.
        zero_start: start the first run from ``x`` rather than from a random point.
        loss: per-example objective name (``"ce"``, ``"cw"``, ``"dlr"``) used both for the
            gradient and for choosing among candidates.
        early_stop: stop computing an example once it is misclassified.

    Cost per iteration: one forward+backward pass plus one forward pass per norm.
    """

    name = "msd"

    def __init__(self, threat: Any, steps: int = 20, step_size: Any = None, *, restarts: int = 1,
                 zero_start: bool = True, loss: str = "ce", early_stop: bool = False,
                 keep_best: bool = True, seed: int | None = None, mode: str = "eval") -> None:
        u = as_union(threat)
        super().__init__(u, seed=seed, mode=mode)
        self.steps = check_steps(steps)
        self.step_size = _sizes_ok(step_size, len(u.threats))
        self.restarts = check_positive(restarts, "restarts", integer=True)
        self.zero_start, self.loss = bool(zero_start), loss
        self.early_stop, self.keep_best = bool(early_stop), bool(keep_best)
        _losses.get(loss)

    def with_eps(self, eps: float | torch.Tensor) -> MSD:
        """A copy at union scale ``eps``; per-norm step sizes scale by the same ratio."""
        new = super().with_eps(eps) if self.step_size is None else self._scaled(eps)
        return new

    def _scaled(self, eps: float | torch.Tensor) -> MSD:
        import copy

        old = self.threat.eps
        new = copy.copy(self)
        new.threat = self.threat.with_eps(eps)
        if not isinstance(old, torch.Tensor) and old > 0 and not isinstance(eps, torch.Tensor):
            new.step_size = tuple(s * (float(eps) / old) for s in self.step_size)
        return new

    def perturb(self, model, x, y, *, generator=None):
        tm: Union = self.threat
        sizes = tm.default_step_size(self.steps) if self.step_size is None else self.step_size
        loss, success = _losses.get(self.loss), misclassified

        def run(r, rows):
            whole = rows is None
            xs, ys = (x, y) if whole else (x[rows], y[rows])
            t = tm if (whole or not isinstance(tm.eps, torch.Tensor)) else tm.with_eps(tm.eps[rows])
            sz = sizes if whole else tuple(s[rows] if isinstance(s, torch.Tensor) else s for s in sizes)
            x0 = xs if (r == 0 and self.zero_start) else t.random_init(xs, generator)
            return iterate(model, xs, ys, x0, steps=self.steps, rule=Signed(t, sz), loss=loss,
                           success=success, early_stop=self.early_stop,
                           keep_best=self.keep_best, generator=generator)

        return best_over_restarts(x, self.restarts, run)

    def spec(self) -> dict[str, Any]:
        out = super().spec()
        out["threats"] = [t.spec() for t in self.threat.base]
        return out
