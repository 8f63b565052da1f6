"""Threat models: the geometry of an attack, kept apart from the optimiser (foolbox's split).

A :class:`ThreatModel` is the set ``{x' : ||x' - x|| <= eps} ∩ [0, 1]^d`` around each input,
plus the three operations an iterative attack needs: ``random_init`` (a start inside the set),
``ascent`` (the steepest-ascent direction of the norm for a gradient) and ``project`` (back into
the set).  ``step`` combines them and is the single place a non-standard geometry (unions of
balls, Wasserstein balls) overrides.

Shapes: ``x`` and ``x_adv`` are ``(N, ...)`` images in [0, 1]; ``eps`` is a float or a per-example
tensor ``(N,)`` in the same units.  All methods are batched and differentiable-free (they run
under ``torch.no_grad`` in attacks).
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch

from ._checks import check_choice, check_eps
from .hookspecs import hookimpl

__all__ = ["ThreatModel", "LpBall", "Linf", "L2", "L1", "threat"]


def _col(v: float | torch.Tensor, like: torch.Tensor) -> float | torch.Tensor:
    """Broadcast a scalar or per-example ``(N,)`` value against ``like`` of shape ``(N, ...)``."""
    if isinstance(v, torch.Tensor):
        return v.to(device=like.device, dtype=like.dtype).view(-1, *([1] * (like.dim() - 1)))
    return v


def _rtol(dtype: torch.dtype) -> float:
    return 1e-10 if dtype == torch.float64 else 1e-5


def _cast_toward(z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Cast ``z`` (float64, same shape as ``x``) to ``x.dtype`` rounding every coordinate
    towards ``x``: ``|z' - x| <= |z - x|`` coordinate-wise, so a point inside a norm ball around
    ``x`` (and inside the box, which contains ``x``) stays inside after the cast.  Plain
    round-to-nearest could push an ℓ1 projection past the radius by ``d`` half-ulps."""
    if x.dtype == torch.float64:
        return z
    zc = z.to(x.dtype)
    xd = x.double()
    away = (zc.double() - xd).abs() > (z - xd).abs()
    return torch.where(away, torch.nextafter(zc, x), zc)


class ThreatModel:
    """Base class of all threat models.

    Subclasses implement :meth:`norm`, :meth:`project`, :meth:`ascent` and
    :meth:`random_init`; the defaults of :meth:`step`, :meth:`contains` and
    :meth:`with_eps` then work unchanged.  Threat models without a closed-form projection
    (Wasserstein: Sinkhorn iterations) or made of several balls (unions: best step across
    norms) override :meth:`step` and, where needed, :meth:`contains`.
    """

    name: str = "threat"

    def __init__(self, eps: float | torch.Tensor) -> None:
        self.eps = check_eps(eps)

    def _check_batch(self, x: torch.Tensor, other: torch.Tensor | None = None,
                     other_name: str = "x_adv") -> None:
        """``ValueError`` when a per-example ``eps`` does not have one entry per row of ``x``,
        or when ``other`` (``x_adv``) and ``x`` differ in shape (they would broadcast silently)."""
        if other is not None and other.shape != x.shape:
            raise ValueError(f"{other_name} must have the shape of x {tuple(x.shape)}, "
                             f"got {tuple(other.shape)}")
        eps = self.eps
        if isinstance(eps, torch.Tensor) and (x.dim() == 0 or eps.shape[0] != x.shape[0]):
            n = x.shape[0] if x.dim() else "no"
            raise ValueError(f"eps is per-example with {eps.shape[0]} entries but x has {n} "
                             f"examples (shape {tuple(x.shape)})")

    # -- required geometry ----------------------------------------------------------------
    def norm(self, delta: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        """Per-example size of a perturbation ``delta`` ``(N, ...)`` -> ``(N,)``.  ``x`` (the
        clean points, same shape) is for geometries whose size depends on where the
        perturbation sits (e.g. Wasserstein balls); ℓp balls ignore it."""
        raise NotImplementedError

    def project(self, x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The point of ball(x, eps) ∩ [0, 1]^d nearest to ``x_adv`` (Euclidean), ``(N, ...)``."""
        raise NotImplementedError

    def ascent(self, grad: torch.Tensor, x_adv: torch.Tensor | None = None,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """Steepest-ascent direction of unit norm for ``grad`` ``(N, ...)``."""
        raise NotImplementedError

    def random_init(self, x: torch.Tensor, generator: torch.Generator | None = None, *,
                    box: bool = True) -> torch.Tensor:
        """A random start inside the ball around ``x`` (and inside [0, 1] when ``box``)."""
        raise NotImplementedError

    # -- derived operations ---------------------------------------------------------------
    def step(self, x_adv: torch.Tensor, x: torch.Tensor, grad: torch.Tensor,
             step_size: float | torch.Tensor, *, loss_fn: Any = None,
             generator: torch.Generator | None = None) -> torch.Tensor:
        """One projected steepest-ascent step: ``project(x_adv + step_size * ascent(grad))``.

        ``step_size`` is a float or a per-example ``(N,)`` tensor, in the units of the norm.
        ``loss_fn`` (``x_adv -> (N,) losses``) is passed for threat models that choose among
        candidate steps (unions of balls); the plain balls ignore it.
        """
        direction = self.ascent(grad, x_adv, generator=generator)
        return self.project(x_adv + _col(step_size, x_adv) * direction, x)

    def contains(self, x_adv: torch.Tensor, x: torch.Tensor, atol: float = 1e-6,
                 rtol: float | None = None, *, norms: torch.Tensor | None = None) -> torch.Tensor:
        """``(N,)`` bool: ``x_adv`` lies in ball(x, eps) ∩ [0, 1]^d up to ``atol + rtol * eps``.

        ``rtol`` defaults to 1e-5 for float32 (float sums over many pixels round) and 1e-10 for
        float64.  ``norms``: ``self.norm(x_adv - x, x)`` ``(N,)`` when the caller has already
        computed it (``tb.evaluate`` reports it too), so costly norms are not computed twice.
        """
        self._check_batch(x, x_adv)
        rtol = _rtol(x_adv.dtype) if rtol is None else rtol
        eps = self.eps
        if isinstance(eps, torch.Tensor):
            eps = eps.to(x_adv.device, torch.float64)
        if norms is not None and norms.shape != (x.shape[0],):
            raise ValueError(f"norms must have shape ({x.shape[0]},), got {tuple(norms.shape)}")
        n = self.norm((x_adv - x).double()) if norms is None else norms.to(x_adv.device, torch.float64)
        in_ball = n <= eps * (1 + rtol) + atol
        flat = x_adv.flatten(1)
        in_box = (flat >= -atol).all(1) & (flat <= 1 + atol).all(1)
        return in_ball & in_box

    def with_eps(self, eps: float | torch.Tensor) -> ThreatModel:
        """A copy of this threat model with another radius."""
        new = copy.copy(self)
        new.eps = check_eps(eps)
        return new

    def default_step_size(self, steps: int) -> float | torch.Tensor:
        """Madry et al.'s rule of thumb ``2.5 * eps / steps``."""
        return self.eps * (2.5 / max(int(steps), 1))

    def spec(self) -> dict[str, Any]:
        """A JSON-friendly description for reports and run records."""
        eps = self.eps
        if isinstance(eps, torch.Tensor):
            eps = f"per-example (mean {float(eps.float().mean()):.4g})"
        return {"threat": self.name, "eps": eps}

    def __repr__(self) -> str:
        eps = self.eps if not isinstance(self.eps, torch.Tensor) else f"tensor{tuple(self.eps.shape)}"
        return f"{type(self).__name__}(eps={eps})"

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        a = {k: v for k, v in self.__dict__.items() if not k.startswith("_")}
        b = {k: v for k, v in other.__dict__.items() if not k.startswith("_")}  # type: ignore[union-attr]
        if a.keys() != b.keys():
            return False
        for k in a:
            va, vb = a[k], b[k]
            if isinstance(va, torch.Tensor) or isinstance(vb, torch.Tensor):
                if not (isinstance(va, torch.Tensor) and isinstance(vb, torch.Tensor) and torch.equal(va, vb)):
                    return False
            elif va != vb:
                return False
        return True

    __hash__ = None  # type: ignore[assignment]


class LpBall(ThreatModel):
    """Common parts of the ℓp balls intersected with the [0, 1] box."""

    p: float = math.inf


    def _eps_rows(self, xf: torch.Tensor) -> torch.Tensor:
        """The radius per row of the flattened batch ``xf`` ``(N, D)``, as ``(N,)`` in its dtype."""
        if isinstance(self.eps, torch.Tensor):
            return self.eps.to(xf).view(-1)
        return torch.full((xf.shape[0],), float(self.eps), dtype=xf.dtype, device=xf.device)
    def norm(self, delta: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        return torch.linalg.vector_norm(delta.flatten(1), ord=self.p, dim=1)


class Linf(LpBall):
    """ℓ∞ ball of radius ``eps`` ∩ [0, 1] box.  Ascent: ``sign(grad)``; projection: clamp."""

    name = "linf"
    p = math.inf

    def random_init(self, x, generator=None, *, box=True):
        self._check_batch(x)
        u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        x0 = x + (2 * u - 1) * _col(self.eps, x)
        return x0.clamp(0, 1) if box else x0

    def project(self, x_adv, x):
        if x_adv.shape != x.shape:
            self._check_batch(x, x_adv)
        lo, hi = self._bounds(x)
        return torch.clamp(x_adv, lo, hi)

    def step(self, x_adv, x, grad, step_size, *, loss_fn=None, generator=None):
        """``clamp(x_adv + step_size * sign(grad), max(x - eps, 0), min(x + eps, 1))`` in one
        buffer (the hot path of every L∞ attack: four element-wise passes, one allocation).
        Subclasses that override :meth:`ascent` or :meth:`project` get the generic step."""
        cls = type(self)
        if cls.ascent is not Linf.ascent or cls.project is not Linf.project:
            return super().step(x_adv, x, grad, step_size, loss_fn=loss_fn, generator=generator)
        if x_adv.shape != x.shape or grad.shape != x.shape:
            self._check_batch(x, x_adv)
            self._check_batch(x, grad, "grad")
        lo, hi = self._bounds(x)
        out = grad.sign()
        out.mul_(_col(step_size, out)).add_(x_adv)
        return out.clamp_(lo, hi)

    def _bounds(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(max(x - eps, 0), min(x + eps, 1))``, cached for the ``x`` and ``eps`` of the running
        attack (an iterative attack projects around the same ``x`` at every step).  The cache
        holds one reference to that ``x``; a new ``x``, an in-place change of it, or a new
        ``eps`` (assigned or changed in place) recomputes the bounds."""
        eps = self.eps
        ekey = (eps._version,) if isinstance(eps, torch.Tensor) else (eps,)
        key = (x.data_ptr(), x._version, x.shape, x.dtype, x.device) + ekey
        cache = self.__dict__.get("_bounds_cache")
        if cache is not None and cache[0] == key and cache[1] is x and cache[2] is eps:
            return cache[3], cache[4]
        self._check_batch(x)
        e = _col(eps, x)
        lo, hi = (x - e).clamp_min(0), (x + e).clamp_max(1)
        self.__dict__["_bounds_cache"] = (key, x, eps, lo, hi)
        return lo, hi

    def with_eps(self, eps):
        new = super().with_eps(eps)
        new.__dict__.pop("_bounds_cache", None)
        return new

    def ascent(self, grad, x_adv=None, generator=None):
        return grad.sign()


class L2(LpBall):
    """ℓ2 ball of radius ``eps`` ∩ [0, 1] box.

    ``project`` is the exact Euclidean projection onto the intersection (not "scale, then
    clip"): with ``w = x_adv - x`` the answer is ``x + clip(t*w)`` for the largest ``t <= 1``
    that keeps the norm within eps; ``t`` is found exactly from the sorted saturation points.
    """

    name = "l2"
    p = 2.0

    def random_init(self, x, generator=None, *, box=True):
        self._check_batch(x)
        n, d = x.shape[0], x[0].numel()
        g = torch.randn((n, d), generator=generator, device=x.device, dtype=x.dtype).double()
        g = g / g.norm(dim=1, keepdim=True).clamp_min(1e-12)
        r = torch.rand((n, 1), generator=generator, device=x.device, dtype=x.dtype).double() ** (1.0 / d)
        eps = self.eps if not isinstance(self.eps, torch.Tensor) else self.eps.to(g).view(-1, 1)
        x0 = x.double() + (g * r * eps).view(x.shape)
        return _cast_toward(x0.clamp(0, 1) if box else x0, x)

    def ascent(self, grad, x_adv=None, generator=None):
        n = grad.flatten(1).norm(dim=1).clamp_min(1e-12)
        return grad / _col(n, grad)

    def project(self, x_adv, x):
        self._check_batch(x, x_adv)
        shape = x_adv.shape
        xf, vf = x.flatten(1).double(), x_adv.flatten(1).double()
        eps = self._eps_rows(xf)
        w = vf - xf
        z = vf.clamp(0, 1)
        over = (z - xf).norm(dim=1) > eps
        if over.any():
            z[over] = _l2_box_shrink(xf[over], w[over], eps[over])
        return _cast_toward(z.view(shape), x)


def _box_bound(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Distance from ``x`` to the box face in the direction of ``sign(w)``."""
    return torch.where(w > 0, 1 - x, x).clamp_min(0)


def _l2_box_shrink(x: torch.Tensor, w: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """Exact projection of ``x + w`` onto ball_2(x, eps) ∩ box for rows ``(M, D)`` known to lie
    outside: ``x + sign(w) * min(t|w|, b)`` with ``t`` solving ``sum min(t|w|, b)^2 = eps^2``."""
    a, b = w.abs(), _box_bound(x, w)
    r = torch.where(a > 0, b / a.clamp_min(1e-300), torch.full_like(a, math.inf))
    r, order = r.sort(dim=1)
    a2, b2 = a.gather(1, order) ** 2, b.gather(1, order) ** 2
    # sat[j] = sum_{i<j} b2_i ; rem[j] = sum_{i>=j} a2_i   (coordinates sorted by saturation point)
    sat = torch.cat([torch.zeros_like(b2[:, :1]), b2.cumsum(1)], 1)
    rem = a2.flip(1).cumsum(1).flip(1)
    rem = torch.cat([rem, torch.zeros_like(rem[:, :1])], 1)
    rf = torch.where(torch.isfinite(r), r, torch.zeros_like(r))
    f_at = sat[:, 1:] + rf ** 2 * rem[:, 1:]  # value of the norm^2 at each saturation point
    f_at = torch.where(torch.isfinite(r), f_at, torch.full_like(f_at, math.inf))
    e2 = (eps ** 2).unsqueeze(1)
    k = (f_at <= e2).sum(1, keepdim=True)
    num = (e2 - sat.gather(1, k)).clamp_min(0)
    den = rem.gather(1, k).clamp_min(1e-300)
    t = (num / den).sqrt().clamp(max=1.0)
    return x + torch.sign(w) * torch.minimum(t * a, b)


class L1(LpBall):
    """ℓ1 ball of radius ``eps`` ∩ [0, 1] box.

    ``project`` is exact: soft-thresholding capped at the box, ``d_i = sign(w_i) *
    clip(|w_i| - θ, 0, b_i)``, with θ found exactly from the sorted breakpoints of the
    piecewise-linear norm (Duchi et al.'s sorted-simplex idea extended to the box).

    ``ascent`` is the sparse top-k direction of the MSD paper: the ``k`` coordinates with the
    largest ``|grad|`` that can still move in their gradient direction, each moved by
    ``sign(grad) / k`` (unit ℓ1 norm).  ``k`` is an int or a ``(k_min, k_max)`` range sampled
    uniformly at each step (MSD uses ``(5, 20)``).
    """

    name = "l1"
    p = 1.0

    def __init__(self, eps: float | torch.Tensor, k: int | tuple[int, int] = (5, 20)) -> None:
        super().__init__(eps)
        if isinstance(k, int):
            k = (k, k)
        if (not isinstance(k, tuple) or len(k) != 2 or not all(isinstance(v, int) for v in k)
                or k[0] < 1 or k[1] < k[0]):
            raise ValueError(f"k must be a positive int or a (k_min, k_max) pair, got {k!r}")
        self.k = k

    def random_init(self, x, generator=None, *, box=True):
        self._check_batch(x)
        n, d = x.shape[0], x[0].numel()
        e = -torch.rand((n, d + 1), generator=generator, device=x.device, dtype=x.dtype).clamp_min(1e-12).log()
        s = torch.randint(0, 2, (n, d), generator=generator, device=x.device).to(x.dtype) * 2 - 1
        u = s.double() * e[:, :d].double() / e.double().sum(1, keepdim=True)  # uniform in the unit ℓ1 ball
        eps = self.eps if not isinstance(self.eps, torch.Tensor) else self.eps.to(u).view(-1, 1)
        x0 = x.double() + (u * eps).view(x.shape)
        return _cast_toward(x0.clamp(0, 1) if box else x0, x)

    def ascent(self, grad, x_adv=None, generator=None):
        g = grad.flatten(1)
        lo, hi = self.k
        k = lo if lo == hi else int(torch.randint(lo, hi + 1, (1,), generator=generator,
                                                  device=generator.device if generator is not None else "cpu"))
        k = min(k, g.shape[1])
        score = g.abs()
        if x_adv is not None:
            xa = x_adv.flatten(1)
            stuck = ((g < 0) & (xa <= 0)) | ((g > 0) & (xa >= 1))
            score = score.masked_fill(stuck, 0)
        val, idx = score.topk(k, dim=1)
        direction = torch.zeros_like(g)
        direction.scatter_(1, idx, torch.where(val > 0, g.gather(1, idx).sign() / k, torch.zeros_like(val)))
        return direction.view_as(grad)

    def project(self, x_adv, x):
        self._check_batch(x, x_adv)
        shape = x_adv.shape
        xf, vf = x.flatten(1).double(), x_adv.flatten(1).double()
        eps = self._eps_rows(xf)
        z = vf.clamp(0, 1)
        over = (z - xf).abs().sum(1) > eps
        if over.any():
            z[over] = _l1_box_shrink(xf[over], vf[over] - xf[over], eps[over])
        return _cast_toward(z.view(shape), x)


def _sum_relu(c_sorted: torch.Tensor, csum: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """``sum_j max(c_j - θ, 0)`` per row for several θ ``(M, K)``; ``c_sorted`` ascending ``(M, D)``
    with ``csum`` its cumulative sum padded with a leading 0 ``(M, D+1)``."""
    d = c_sorted.shape[1]
    idx = torch.searchsorted(c_sorted, theta.contiguous(), right=True)  # first index with c > θ
    above = d - idx
    total = csum[:, -1:]
    return (total - csum.gather(1, idx)) - theta * above


def _l1_box_shrink(x: torch.Tensor, w: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """Exact projection of ``x + w`` onto ball_1(x, eps) ∩ box for rows known to lie outside."""
    a, b = w.abs(), _box_bound(x, w)
    # f(θ) = sum clip(a - θ, 0, b) = sum relu(a - θ) - sum relu(a - b - θ), decreasing in θ
    c1 = a.sort(1).values
    c2 = (a - b).sort(1).values
    s1 = torch.cat([torch.zeros_like(c1[:, :1]), c1.cumsum(1)], 1)
    s2 = torch.cat([torch.zeros_like(c2[:, :1]), c2.cumsum(1)], 1)
    pts = torch.cat([torch.zeros_like(a[:, :1]), a, (a - b).clamp_min(0)], 1).sort(1).values

    def f(t: torch.Tensor) -> torch.Tensor:
        return _sum_relu(c1, s1, t) - _sum_relu(c2, s2, t)

    fp = f(pts)  # non-increasing along pts
    e = eps.unsqueeze(1)
    j = ((fp >= e).sum(1, keepdim=True) - 1).clamp(0, pts.shape[1] - 2)
    t0, t1 = pts.gather(1, j), pts.gather(1, j + 1)
    f0, f1 = fp.gather(1, j), fp.gather(1, j + 1)
    slope = (f0 - f1) / (t1 - t0).clamp_min(1e-300)
    theta = torch.where(f0 > f1, t0 + (f0 - e) / slope.clamp_min(1e-300), t0)
    return x + torch.sign(w) * torch.minimum((a - theta).clamp_min(0), b)


_BUILTIN = {"linf": Linf, "l2": L2, "l1": L1}


def threat(name: str, /, **kwargs: Any) -> ThreatModel:
    """Build a registered threat model by name: ``tb.threat("linf", eps=0.3)``."""
    from .plugins import registry

    return registry().create("threat", name, **kwargs)


def as_threat(value: Any, name: str = "threat") -> ThreatModel:
    """Accept a ThreatModel, a ``(name, eps)`` pair, a ``{"name":..., "eps":...}`` dict, or a
    list of threat models, which becomes the registered ``union`` threat (a plugin's; e.g.
    toolbox-union) over them."""
    if isinstance(value, ThreatModel):
        return value
    if isinstance(value, dict):
        kw = dict(value)
        return threat(kw.pop("name"), **kw)
    if isinstance(value, (tuple, list)) and len(value) == 2 and isinstance(value[0], str):
        return threat(value[0], eps=value[1])
    if isinstance(value, (tuple, list)) and value and all(isinstance(v, (ThreatModel, dict, tuple, list))
                                                          for v in value):
        return threat("union", threats=[as_threat(v, f"{name}[{i}]") for i, v in enumerate(value)])
    raise ValueError(f"{name} must be a ThreatModel (e.g. tb.Linf(eps=0.3)), got {value!r}")


@hookimpl
def toolbox_register(registry) -> None:
    for n, cls in _BUILTIN.items():
        registry.add_threat(n, cls)


_ = check_choice  # re-exported helper used by subclasses in plugins
