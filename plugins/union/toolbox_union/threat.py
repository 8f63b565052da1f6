"""``Union``: the union of several ℓp balls (each ∩ the [0, 1] box) as one threat model.

The set is ``Δ = ∪_p {x' : ||x' - x||_p <= s * eps_p} ∩ [0, 1]^d`` for component balls
``eps_p`` (e.g. ℓ∞ 0.3, ℓ2 1.5, ℓ1 12 on MNIST) and a common *scale* ``s`` (the union's own
``eps``, 1.0 by default).  The scale is what ``with_eps`` changes, so eps schedules and
robustness curves shrink or grow all balls together, and ``Attack.with_eps`` rescales step
sizes by the same ratio.

Geometry (all batched over the first dimension):

* ``norm(delta)``: the union's gauge ``s * min_p ||delta||_p / (s * eps_p)``; it is ``<= eps``
  exactly when ``delta`` lies in some ball.
* ``contains``: inside at least one component (ball ∩ box).
* ``project``: the exact Euclidean projection onto the union — project onto every ball ∩ box
  (each exact, from the kernel) and keep, per example, the nearest result.
* ``random_init``: per example, a uniformly chosen component's random start.
* ``ascent``: the direction of the union's gauge: per example, ``eps_p * ascent_p(grad)`` of the
  component with the largest first-order gain ``<grad, eps_p * ascent_p(grad)>`` (``eps_p``
  scaled), so ``x + 1.0 * ascent`` is the best linearised corner of the union.
* ``step``: the **MSD step** (Maini et al. 2020, Algorithm 9): from the current iterate take one
  steepest-ascent step per component (its own step size), project each onto *its* ball ∩ box,
  and keep per example the candidate with the highest loss (``loss_fn``); without ``loss_fn``
  the first-order gain ``<grad, cand - x_adv>`` decides.  Ties go to the earlier component.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch

from toolbox.threat import ThreatModel, as_threat

__all__ = ["Union", "union"]


def _pick(cands: torch.Tensor, choice: torch.Tensor) -> torch.Tensor:
    """``cands`` ``(K, N, ...)``, ``choice`` ``(N,)`` int64 -> ``(N, ...)`` with row ``n`` from
    ``cands[choice[n], n]``."""
    idx = choice.view(1, -1, *([1] * (cands.dim() - 2))).expand(1, *cands.shape[1:])
    return cands.gather(0, idx).squeeze(0)


class Union(ThreatModel):
    """Union of threat models ``threats`` (ℓp balls ∩ box), scaled by ``eps`` (default 1.0).

    Args:
        threats: a sequence of at least one :class:`toolbox.ThreatModel` (or ``(name, eps)``
            pairs / ``{"name": ..., "eps": ...}`` dicts), e.g. ``[tb.Linf(0.3), tb.L2(1.5),
            tb.L1(12)]``.  Component radii may not be per-example tensors (use the scale).
        eps: common scale of all radii (float > 0, or a per-example ``(N,)`` tensor); the
            effective radius of component ``p`` is ``eps * threats[p].eps``.

    ``threats`` (the scaled components, read-only by convention) and ``base`` (the unscaled
    ones) are attributes.  Step sizes for :meth:`step` are one per component, in each
    component's own norm units: a sequence of floats (or ``(N,)`` tensors), or one float
    used for all components.
    """

    name = "union"

    def __init__(self, threats: Sequence[Any], eps: float | torch.Tensor = 1.0) -> None:
        super().__init__(eps)
        if isinstance(threats, (ThreatModel, str)) or not isinstance(threats, Sequence) or not threats:
            raise ValueError(f"threats must be a non-empty sequence of threat models "
                             f"(e.g. [tb.Linf(0.3), tb.L2(1.5), tb.L1(12)]), got {threats!r}")
        base = []
        for i, t in enumerate(threats):
            t = as_threat(t, f"threats[{i}]")
            if isinstance(t, Union):
                raise ValueError(f"threats[{i}] is itself a Union; flatten nested unions")
            if isinstance(t.eps, torch.Tensor):
                raise ValueError(f"threats[{i}] has per-example radii; give per-example values "
                                 f"through the union's eps (the scale) instead")
            base.append(t)
        self.base = tuple(base)
        self._rescale()

    # -- radii ----------------------------------------------------------------------------
    def _rescale(self) -> None:
        s = self.eps
        self.threats = tuple(t.with_eps(t.eps * s) if not (isinstance(s, float) and s == 1.0) else t
                             for t in self.base)

    def with_eps(self, eps: float | torch.Tensor) -> Union:
        """A copy with another scale ``eps`` (all component radii scale together)."""
        new = copy.copy(self)
        ThreatModel.__init__(new, eps)
        new._rescale()
        return new

    def sizes(self, step_size: Any) -> list[Any]:
        """Per-component step sizes from one float / ``(N,)`` tensor or a sequence of them."""
        if isinstance(step_size, (list, tuple)):
            if len(step_size) != len(self.threats):
                raise ValueError(f"step_size must give one value per component "
                                 f"({len(self.threats)}), got {step_size!r}")
            return list(step_size)
        return [step_size] * len(self.threats)

    def default_step_size(self, steps: int) -> tuple[Any, ...]:
        """Each component's ``2.5 * eps_p / steps`` (Madry et al.'s rule), as a tuple."""
        return tuple(t.default_step_size(steps) for t in self.threats)

    # -- geometry -------------------------------------------------------------------------
    def norm(self, delta: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        """The union's gauge ``eps * min_p ||delta||_p / eps_p`` ``(N,)`` (``<= eps`` iff inside
        some ball; ``inf`` for a non-zero ``delta`` when every radius is 0)."""
        out = None
        for t in self.threats:
            e = t.eps if not isinstance(t.eps, torch.Tensor) else t.eps.to(delta.device, delta.dtype)
            r = t.norm(delta) / e
            r = torch.nan_to_num(r, nan=0.0)  # 0/0: zero delta in a zero ball
            out = r if out is None else torch.minimum(out, r)
        s = self.eps if not isinstance(self.eps, torch.Tensor) else self.eps.to(delta.device, delta.dtype)
        return out * s

    def contains(self, x_adv: torch.Tensor, x: torch.Tensor, atol: float = 1e-6,
                 rtol: float | None = None, *, norms: torch.Tensor | None = None) -> torch.Tensor:
        """``(N,)`` bool: inside at least one component ball ∩ box (each with its tolerance;
        ``norms``, the union's gauge, is not needed: each ball is tested in its own norm)."""
        self._check_batch(x, x_adv)
        inside = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        for t in self.threats:
            inside |= t.contains(x_adv, x, atol=atol, rtol=rtol)
        return inside

    def candidates(self, x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Projections of ``x_adv`` onto every component ball ∩ box, ``(K, N, ...)``."""
        return torch.stack([t.project(x_adv, x) for t in self.threats])

    def project(self, x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Exact Euclidean projection onto the union: the nearest of the per-ball projections."""
        self._check_batch(x, x_adv)
        cands = self.candidates(x_adv, x)
        dist = (cands - x_adv.unsqueeze(0)).flatten(2).double().pow(2).sum(2)  # (K, N)
        return _pick(cands, dist.argmin(0))

    def random_init(self, x: torch.Tensor, generator: torch.Generator | None = None, *,
                    box: bool = True) -> torch.Tensor:
        """Per example, a random start inside a uniformly chosen component ball."""
        self._check_batch(x)
        k = len(self.threats)
        dev = generator.device if generator is not None else "cpu"
        choice = torch.randint(0, k, (x.shape[0],), generator=generator, device=dev).to(x.device)
        cands = torch.stack([t.random_init(x, generator, box=box) for t in self.threats])
        return _pick(cands, choice)

    def ascent(self, grad: torch.Tensor, x_adv: torch.Tensor | None = None,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """Per example, ``eps_p * ascent_p(grad)`` of the component with the largest
        first-order gain (the union gauge's steepest-ascent direction, unit gauge norm)."""
        dirs = []
        for t in self.threats:
            e = t.eps
            e = e.to(grad).view(-1, *([1] * (grad.dim() - 1))) if isinstance(e, torch.Tensor) else e
            dirs.append(t.ascent(grad, x_adv, generator=generator) * e)
        cands = torch.stack(dirs)
        gain = (cands * grad.unsqueeze(0)).flatten(2).sum(2)
        return _pick(cands, gain.argmax(0))

    def step(self, x_adv: torch.Tensor, x: torch.Tensor, grad: torch.Tensor,
             step_size: Any, *, loss_fn: Any = None,
             generator: torch.Generator | None = None) -> torch.Tensor:
        """The MSD step: one projected steepest-ascent step per component (each projected onto
        its own ball ∩ box), keeping per example the candidate of highest ``loss_fn`` (``x ->
        (N,)`` losses; one extra forward pass per component), or of highest first-order gain
        without ``loss_fn``.  ``step_size``: one value per component (see :meth:`sizes`)."""
        cands = self.step_candidates(x_adv, x, grad, step_size, generator=generator)
        return self.select(cands, x_adv, grad, loss_fn)[0]

    def step_candidates(self, x_adv: torch.Tensor, x: torch.Tensor, grad: torch.Tensor,
                        step_size: Any, *, generator: torch.Generator | None = None) -> torch.Tensor:
        """The per-component candidates of :meth:`step`, ``(K, N, ...)``."""
        sizes = self.sizes(step_size)
        return torch.stack([t.step(x_adv, x, grad, a, generator=generator)
                            for t, a in zip(self.threats, sizes, strict=True)])

    def select(self, cands: torch.Tensor, x_adv: torch.Tensor, grad: torch.Tensor,
               loss_fn: Any = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(chosen (N, ...), choice (N,) int64, scores (K, N))``: per example the candidate
        with the highest score (loss, or first-order gain without ``loss_fn``); ties go to
        the earlier component."""
        if loss_fn is not None:
            scores = torch.stack([loss_fn(c).detach().float().view(-1) for c in cands])
        else:
            scores = ((cands - x_adv.unsqueeze(0)) * grad.unsqueeze(0)).flatten(2).sum(2).float()
        choice = scores.argmax(0)
        return _pick(cands, choice), choice, scores

    # -- reporting ------------------------------------------------------------------------
    def spec(self) -> dict[str, Any]:
        out = super().spec()
        out["threats"] = [t.spec() for t in self.base]
        return out

    def __repr__(self) -> str:
        inner = ", ".join(repr(t) for t in self.base)
        s = self.eps if not isinstance(self.eps, torch.Tensor) else f"tensor{tuple(self.eps.shape)}"
        return f"Union([{inner}], eps={s})"


def union(threats: Sequence[Any], eps: float | torch.Tensor = 1.0) -> Union:
    """Registry factory of ``"union"``: ``tb.threat("union", threats=[("linf", 0.3), ("l2", 1.5)])``."""
    return Union(threats, eps=eps)
