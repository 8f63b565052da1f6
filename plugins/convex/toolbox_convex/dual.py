"""The dual network of a ReLU network (Wong & Kolter 2018, thesis ch. 3, Algorithm 1).

For a network ``z_k = W_k relu(z_{k-1}) + b_k`` and an input set ``B(x)`` the dual network
gives, for any objective ``c``, a lower bound ``J(c) <= min_{x' in B(x)} c^T f(x')``: the dual
objective at the feasible dual point the thesis uses (slope ``d = u / (u - l)`` on the
crossing ReLUs, exact interval of the input set).  Run backwards it is a chain of transposed
layers: ``nu_k = -c``, ``nu_hat_i = W_{i+1}^T nu_{i+1}``, ``nu_i = D_i nu_hat_i``, and

    J(c) = -sum_i nu_{i+1}^T b_{i+1} + sum_i sum_{j crossing} l_ij [nu_ij]_+ - h_B(-nu_hat_1)

with ``h_B`` the support function of the input set (``eps ||.||_1`` for ℓ∞, ``eps ||.||_2``
for ℓ2; the ℓ∞ ball intersected with the [0, 1] box uses the box's support function, which
is tighter and still exact).  This module computes it with signs flipped (propagating
``lambda = -nu``, the coefficients of a linear lower bound) which reads more directly.

Intermediate bounds ``l_i, u_i`` come from the same pass with ``c`` each unit vector of layer
``i`` (the exact bounds): cost ``O(sum_i n_i)`` backward passes, batched, i.e. quadratic in the
width.  With ``projections=r`` they are instead *estimated* in forward mode (thesis §3.4.5,
Algorithm 3): every ℓ1 term of the bounds is a sum ``sum_m |g_m|`` over the units ``m`` of a
source (the input box's radius, or a ReLU layer's relaxation gap ``-l d / 2`` on its crossing
units) pushed through the linearised network; pushing ``r`` Cauchy-weighted combinations of the
source instead of its identity gives ``r`` samples of ``Cauchy(0, sum_m |g_m|)`` per unit, and
the sample median of their absolute values estimates the sum (Li, Hastie & Church 2007; the
median of ``|Cauchy(0, s)|`` is ``s``).  For the ℓ2 input term, Gaussian projections give
``||g||_2 ~ ||G R||_2 / sqrt(r)``.  Cost is ``O(r)`` vectors per source, linear in the width.
A source with at most ``r`` units (the input dimension, or the number of units crossing zero
anywhere in the batch) is pushed exactly instead (the reference code's fallback), so with
``r`` large the projected path reproduces the exact bounds.  Projected bounds are estimates,
not certificates: use them for training (the thesis uses ``r = 50``), certify exactly.

Supported models: chains of dual layers (:mod:`toolbox_convex.layers`): ``nn.Sequential``
(nested ones are flattened) of ``nn.Linear``, ``nn.Conv2d``, ``nn.Flatten``, eval-mode
``nn.BatchNorm1d`` / ``nn.BatchNorm2d``, ``nn.ReLU``, ``nn.Identity`` and
:class:`~toolbox_convex.layers.Residual` blocks ``x + body(x)``; other layer types register a
dual layer with :func:`~toolbox_convex.layers.register_dual_layer`.  The backward pass walks
the chain in reverse: an affine layer applies its adjoint ``A^T`` and adds ``lam . b``, a
residual addition sends ``lam`` down both the body and the skip, and the block's fork sums
the two.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .layers import (
    AffineDual,
    Conv2dDual,
    DualLayer,
    FlattenDual,
    LinearDual,
    ReLUDual,
    ResidualAdd,
    ResidualFork,
    dual_layers,
    run_chain,
)


def sample_median(a: torch.Tensor, dim: int) -> torch.Tensor:
    """The sample median along ``dim`` (mean of the two middle values for an even count, unlike
    ``torch.median``, which takes the lower one and so underestimates by ~3 % at ``r = 50``)."""
    k = a.shape[dim]
    v = a.sort(dim=dim).values
    if k % 2:
        return v.select(dim, k // 2)
    return (v.select(dim, k // 2 - 1) + v.select(dim, k // 2)) / 2


def flatten_layers(model: nn.Module) -> list[nn.Module]:
    """The modules of the model's dual chain (containers expanded; a :class:`Residual` block
    contributes itself twice, as its fork and as its addition).

    Raises ``ValueError`` naming the first unsupported layer.
    """
    return [d.module for d in dual_layers(model)]


class DualNetwork:
    """The dual network of ``model`` around a batch ``x`` ``(N, ...)`` for one input set.

    Args:
        model: a supported sequential ReLU network (see module docstring).
        x: ``(N, ...)`` inputs in [0, 1].
        eps: radius, a float or a ``(N,)`` tensor (per example), in input units.
        norm: ``"linf"`` (ball ∩ [0, 1] box when ``box``) or ``"l2"`` (the ball; the box is
            ignored, which is sound since it only enlarges the set).
        box: intersect the ℓ∞ ball with [0, 1].
        fast_first: compute the first hidden layer's bounds in closed form (identical values,
            far less memory); ``False`` runs the generic dual pass for it too.
        projections: ``None`` for exact intermediate bounds; an int ``r`` estimates them with
            ``r`` random projections per source (module docstring; not sound, for training).
        generator: the ``torch.Generator`` the projections draw from (default: the global one).

    On construction all intermediate pre-activation bounds are computed (attributes
    ``lower`` / ``upper``: dict layer index -> ``(N, *shape)``).  :meth:`bound` then gives
    ``J(c)`` for any objective.  Everything is differentiable in the parameters.
    """

    def __init__(self, model: nn.Module, x: torch.Tensor, eps: float | torch.Tensor,
                 norm: str = "linf", *, box: bool = True, fast_first: bool = True,
                 projections: int | None = None,
                 generator: torch.Generator | None = None) -> None:
        self.fast_first = bool(fast_first)
        if projections is not None and (isinstance(projections, bool) or int(projections) < 1):
            raise ValueError(f"projections must be None (exact) or an int >= 1, got {projections!r}")
        self.projections = None if projections is None else int(projections)
        self.generator = generator
        if norm not in ("linf", "l2"):
            raise ValueError(f"norm must be 'linf' or 'l2', got {norm!r}")
        self.duals: list[DualLayer] = dual_layers(model)
        self.layers = [d.module for d in self.duals]
        if not self.duals or isinstance(self.duals[-1], ReLUDual):
            raise ValueError("model: the last layer must be affine (logits), not ReLU")
        n = x.shape[0]
        eps_t = torch.as_tensor(eps, dtype=x.dtype, device=x.device)
        if eps_t.dim() == 0:
            eps_t = eps_t.expand(n)
        if eps_t.shape != (n,):
            raise ValueError(f"eps must be a float or a ({n},) tensor, got shape {tuple(eps_t.shape)}")
        if (eps_t < 0).any():
            raise ValueError("eps must be >= 0")
        self.x, self.eps, self.norm = x, eps_t, norm
        e = eps_t.view(n, *([1] * (x.dim() - 1)))
        if norm == "linf":
            lo, hi = x - e, x + e
            if box:
                lo, hi = lo.clamp_min(0), hi.clamp_max(1)
            self.lo, self.hi = lo, hi
        # shapes of every intermediate h_t (h_0 = x, h_{t+1} = layers[t](h_t))
        with torch.no_grad():
            try:
                hs = run_chain(self.duals, x[:1])
            except RuntimeError as err:
                raise ValueError(f"model: the layers do not compose on x of shape "
                                 f"{tuple(x.shape)}: {err}") from err
        self.shapes: list[torch.Size] = [h.shape[1:] for h in hs]
        for t, d in enumerate(self.duals):
            d.bind(self.shapes[t], self.shapes[t + 1])
        _check_residual_shapes(self.duals, self.shapes)
        self.lower: dict[int, torch.Tensor] = {}
        self.upper: dict[int, torch.Tensor] = {}
        if self.projections is not None:
            self._forward_bounds(self.projections)
            return
        for t, d in enumerate(self.duals):
            if isinstance(d, ReLUDual):
                self._intermediate(t)

    # --- the backward (dual) pass -----------------------------------------------------
    def _input_term(self, lam: torch.Tensor) -> torch.Tensor:
        """``min_{x' in B(x)} lam . x'`` for ``lam`` ``(N, m, *in_shape)`` -> ``(N, m)``."""
        lam = lam.flatten(2)
        if self.norm == "linf":
            lo, hi = self.lo.flatten(1).unsqueeze(1), self.hi.flatten(1).unsqueeze(1)
            return (lam.clamp_min(0) * lo + lam.clamp_max(0) * hi).sum(-1)
        xc = self.x.flatten(1).unsqueeze(1)
        return (lam * xc).sum(-1) - self.eps.unsqueeze(1) * lam.norm(dim=-1)

    def _backward(self, lam: torch.Tensor, t_end: int,
                  alphas: dict[int, torch.Tensor] | None = None) -> torch.Tensor:
        """Lower bound of ``lam . h_{t_end}`` over the input set; ``lam`` ``(N, m, *shape)``.

        ``alphas``: optional lower-bound slopes in [0, 1] per ReLU layer index, each
        ``(N, m, *shape_t)`` (one per objective), used on crossing units where ``lam >= 0``
        (``relu(z) >= alpha z``); layers not in it use the fixed ``d = u / (u - l)``.
        """
        n, m = lam.shape[:2]
        const = lam.new_zeros(n, m)
        skips: list[torch.Tensor] = []    # lam at residual additions, awaiting their fork
        for t in range(t_end - 1, -1, -1):
            layer = self.duals[t]
            if isinstance(layer, ReLUDual):
                lo, up = self.lower[t], self.upper[t]
                cross = (lo < 0) & (up > 0)
                d = torch.where(cross, up / (up - lo).clamp_min(1e-12), (lo >= 0).to(lo.dtype))
                # lam_j >= 0: relu(z) >= d z;  lam_j < 0: relu(z) <= d (z - l) on crossing units
                neg = lam.clamp_max(0) * (cross.to(lo.dtype) * d * lo).unsqueeze(1)
                const = const - neg.flatten(2).sum(-1)
                if alphas is not None and t in alphas:
                    # any alpha in [0, 1] lower-bounds relu on a crossing unit
                    low = torch.where(cross.unsqueeze(1), alphas[t], d.unsqueeze(1))
                    lam = lam.clamp_min(0) * low + lam.clamp_max(0) * d.unsqueeze(1)
                else:
                    lam = lam * d.unsqueeze(1)
            elif isinstance(layer, ResidualAdd):
                skips.append(lam)            # h = skip + body: lam flows into both branches
            elif isinstance(layer, ResidualFork):
                if skips:                    # its addition lies before t_end: sum the branches
                    lam = lam + skips.pop()
            elif isinstance(layer, AffineDual):
                bias = layer.bias_dot(lam)
                if bias is not None:
                    const = const + bias
                lam = layer.transpose(lam)
            else:  # pragma: no cover - dual_layers only builds the kinds above
                raise ValueError(f"model: unsupported dual layer {layer!r}")
        return const + self._input_term(lam)

    def _first_affine(self, t: int) -> nn.Module | None:
        """The single Linear/Conv2d before ``t`` when ``layers[:t]`` has no ReLU, else None."""
        affine = [d for d in self.duals[:t] if type(d) is not FlattenDual]
        if len(affine) == 1 and type(affine[0]) in (LinearDual, Conv2dDual):
            return affine[0].module
        return None

    def _interval_first(self, t: int, layer: nn.Module) -> None:
        """Closed-form bounds of the first affine layer (same values as the dual pass with unit
        objectives, without its ``(N, units, inputs)`` tensor)."""
        def run(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
            for m in self.layers[:t]:
                if isinstance(m, nn.Flatten):
                    h = m(h)
                elif isinstance(m, nn.Linear):
                    h = F.linear(h, weight, bias)
                else:
                    h = F.conv2d(h, weight, bias, m.stride, m.padding, m.dilation, m.groups)
            return h

        if self.norm == "linf":
            center = run((self.lo + self.hi) / 2, layer.weight, layer.bias)
            radius = run((self.hi - self.lo) / 2, layer.weight.abs(), None)
        else:
            center = run(self.x, layer.weight, layer.bias)
            sq = run(torch.ones_like(self.x[:1]), layer.weight.square(), None)
            e = self.eps.view(-1, *([1] * (center.dim() - 1)))
            radius = e * sq.clamp_min(0).sqrt()
        self.lower[t], self.upper[t] = center - radius, center + radius

    def _intermediate(self, t: int) -> None:
        """Exact dual bounds of every unit of ``h_t`` (the input of the ReLU at ``t``)."""
        first = self._first_affine(t) if self.fast_first else None
        if first is not None:
            self._interval_first(t, first)
            return
        shape = self.shapes[t]
        k = int(torch.Size(shape).numel())
        eye = torch.eye(k, dtype=self.x.dtype, device=self.x.device).view(k, *shape)
        lam = torch.cat([eye, -eye]).unsqueeze(0).expand(self.x.shape[0], 2 * k, *shape)
        b = self._backward(lam, t)
        n = self.x.shape[0]
        self.lower[t] = b[:, :k].reshape(n, *shape)
        self.upper[t] = (-b[:, k:]).reshape(n, *shape)

    # --- forward mode with random projections (Algorithm 3) -------------------------------------
    def _push(self, layer: DualLayer, g: torch.Tensor, t: int) -> torch.Tensor:
        """Apply layer ``t``'s linearised map without bias to ``g`` ``(N, m, *shape_t)``."""
        if isinstance(layer, ReLUDual):
            return g * self._slope(t).unsqueeze(1)
        return layer.apply(g)

    def _slope(self, t: int) -> torch.Tensor:
        """The ReLU relaxation's slope ``d`` at layer ``t``: 0 / 1 / ``u / (u - l)``."""
        lo, up = self.lower[t], self.upper[t]
        cross = (lo < 0) & (up > 0)
        return torch.where(cross, up / (up - lo).clamp_min(1e-12), (lo >= 0).to(lo.dtype))

    def _source(self, scale: torch.Tensor, r: int, kind: str) -> tuple[str, torch.Tensor]:
        """A source of ℓ1 (``kind="l1"``) or ℓ2 (``"l2"``) terms with per-unit weights ``scale``
        ``(N, *shape)``: the exact basis ``diag(scale)`` over the units where ``scale`` is
        nonzero somewhere in the batch when there are at most ``r`` of them, else ``r`` random
        projections ``scale * R`` (Cauchy for ℓ1, Gaussian for ℓ2).  Returns ``(estimator,
        (N, m, *shape))`` with estimator ``"exact-l1"``, ``"exact-l2"``, ``"median"`` or ``"gauss"``."""
        n, shape = scale.shape[0], scale.shape[1:]
        flat = scale.flatten(1)
        idx = (flat != 0).any(0).nonzero().flatten()
        if idx.numel() <= r:
            k = idx.numel()
            basis = flat.new_zeros(n, k, flat.shape[1])
            basis[:, torch.arange(k, device=flat.device), idx] = flat[:, idx]
            return f"exact-{kind}", basis.reshape(n, k, *shape)
        if kind == "l1":
            rnd = torch.empty(n, r, *shape, dtype=scale.dtype, device=scale.device)
            rnd.cauchy_(generator=self.generator)
            return "median", rnd * scale.unsqueeze(1)
        rnd = torch.randn(n, r, *shape, dtype=scale.dtype, device=scale.device,
                          generator=self.generator)
        return "gauss", rnd * scale.unsqueeze(1)

    @staticmethod
    def _estimate(kind: str, g: torch.Tensor) -> torch.Tensor:
        """Per-unit norm estimate from a pushed source ``g`` ``(N, m, *shape)`` -> ``(N, *shape)``."""
        if kind == "exact-l1":
            return g.abs().sum(1)
        if kind == "exact-l2":
            return g.norm(dim=1)
        if kind == "gauss":
            return g.norm(dim=1) / math.sqrt(g.shape[1])
        return sample_median(g.abs(), dim=1)

    def _forward_bounds(self, r: int) -> None:
        """Intermediate bounds in forward mode, every ℓ1 / ℓ2 term estimated from ``r`` random
        projections (or exact when a source has at most ``r`` units)."""
        n = self.x.shape[0]
        if self.norm == "linf":
            psi = (self.lo + self.hi) / 2
            sources = [self._source((self.hi - self.lo) / 2, r, "l1")]
        else:
            psi = self.x
            e = self.eps.view(n, *([1] * (self.x.dim() - 1)))
            sources = [self._source(e.expand_as(self.x), r, "l2")]
        stack: list[tuple[torch.Tensor, list[tuple[str, torch.Tensor]]]] = []
        for t, layer in enumerate(self.duals):
            if isinstance(layer, ReLUDual):
                first = self._first_affine(t) if self.fast_first else None
                if first is not None:
                    self._interval_first(t, first)
                else:
                    spread = sum(self._estimate(kind, g) for kind, g in sources)
                    self.lower[t], self.upper[t] = psi - spread, psi + spread
                d = self._slope(t)
                lo, up = self.lower[t], self.upper[t]
                half_gap = torch.where((lo < 0) & (up > 0), -d * lo / 2, torch.zeros_like(lo))
                # relu(z) in [d z, d z + 2 half_gap]: centre d z + half_gap, radius half_gap
                psi = d * psi + half_gap
                sources = [(kind, g * d.unsqueeze(1)) for kind, g in sources]
                sources.append(self._source(half_gap, r, "l1"))
            elif isinstance(layer, ResidualFork):
                stack.append((psi, list(sources)))
            elif isinstance(layer, ResidualAdd):
                # skip + body: the sources that existed at the fork add up; those created in
                # the body (its ReLUs) have zero weight on the skip branch
                psi_s, src_s = stack.pop()
                psi = psi + psi_s
                k = len(src_s)
                summed = [(kind, g + gs)
                          for (kind, g), (_, gs) in zip(sources[:k], src_s, strict=True)]
                sources = summed + sources[k:]
            else:
                psi = layer.forward(psi)
                sources = [(kind, self._push(layer, g, t)) for kind, g in sources]

    def crossing(self) -> dict[int, torch.Tensor]:
        """Boolean masks ``(N, *shape_t)`` of the crossing units (``l < 0 < u``) per ReLU index."""
        return {t: (lo < 0) & (self.upper[t] > 0) for t, lo in self.lower.items()}

    def bound(self, c: torch.Tensor, alphas: dict[int, torch.Tensor] | None = None) -> torch.Tensor:
        """``J(c)``: lower bounds of ``c_i . f(x')`` over the set.

        Args:
            c: ``(N, m, num_logits)`` objectives (``(m, num_logits)`` is broadcast).
            alphas: optional dict ReLU layer index -> ``(N, m, *shape_t)`` lower-bound slopes
                in [0, 1] for the crossing units, one per example and objective (the default
                ``None`` uses ``d = u / (u - l)``).  Every such alpha gives a valid bound;
                :func:`optimized_margin_bounds` maximises over them.  Intermediate bounds
                are not affected.
        Returns:
            ``(N, m)`` lower bounds in logit units.
        """
        n = self.x.shape[0]
        if c.dim() == 2:
            c = c.unsqueeze(0).expand(n, *c.shape)
        out = self.shapes[-1]
        if c.dim() != 3 or c.shape[0] != n or c.shape[2:] != out:
            raise ValueError(f"c must be (N, m, {tuple(out)}) or (m, {tuple(out)}), "
                             f"got {tuple(c.shape)}")
        if alphas is not None:
            for t, a in alphas.items():
                if t not in self.lower:
                    raise ValueError(f"alphas: {t} is not a ReLU layer index "
                                     f"(those are {sorted(self.lower)})")
                want = (n, c.shape[1], *self.shapes[t])
                if tuple(a.shape) != want:
                    raise ValueError(f"alphas[{t}] must have shape {want}, got {tuple(a.shape)}")
        return self._backward(c.to(self.x.dtype), len(self.layers), alphas)


def _check_residual_shapes(duals: list[DualLayer], shapes: list[torch.Size]) -> None:
    """Each residual block's body must keep its input's shape (no broadcasting)."""
    opened: list[int] = []
    for t, d in enumerate(duals):
        if isinstance(d, ResidualFork):
            opened.append(t)
        elif isinstance(d, ResidualAdd):
            f = opened.pop()
            if shapes[f] != shapes[t]:
                raise ValueError(f"model: the body of a Residual block maps shape "
                                 f"{tuple(shapes[f])} to {tuple(shapes[t])}; it must keep it")


def dual_bounds(model: nn.Module, x: torch.Tensor, eps: float | torch.Tensor,
                norm: str = "linf", *, box: bool = True, projections: int | None = None,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Elementwise lower and upper bounds on the logits over the input set, each ``(N, C)``.

    ``projections``/``generator``: as in :class:`DualNetwork` (``None``: exact).
    """
    dn = DualNetwork(model, x, eps, norm, box=box, projections=projections, generator=generator)
    k = dn.shapes[-1].numel()
    eye = torch.eye(k, dtype=x.dtype, device=x.device)
    b = dn.bound(torch.cat([eye, -eye]))
    return b[:, :k], -b[:, k:]


def margin_lower_bounds(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                        eps: float | torch.Tensor, norm: str = "linf", *,
                        box: bool = True, projections: int | None = None,
                        generator: torch.Generator | None = None, alpha_steps: int = 0,
                        alpha_lr: float = 0.1) -> torch.Tensor:
    """Lower bounds on ``z_y(x') - z_j(x')`` over the input set: ``(N, C)``, 0 at ``j = y``.

    ``x`` ``(N, ...)`` in [0, 1]; ``y`` ``(N,)`` labels; ``eps`` float or ``(N,)``.
    Differentiable in the model's parameters (the robust loss uses it).  With
    ``projections=r`` the intermediate bounds are random-projection estimates (see
    :class:`DualNetwork`): cheaper for wide nets, but no longer a certificate.
    ``alpha_steps > 0`` optimises the crossing ReLUs' lower slopes for these bounds
    (:func:`optimized_margin_bounds` with ``steps=alpha_steps, lr=alpha_lr``); the default
    ``0`` is the paper's fixed ``d = u / (u - l)``.
    """
    if isinstance(alpha_steps, bool) or int(alpha_steps) != alpha_steps or alpha_steps < 0:
        raise ValueError(f"alpha_steps must be an int >= 0, got {alpha_steps!r}")
    dn = DualNetwork(model, x, eps, norm, box=box, projections=projections, generator=generator)
    c = _margin_objectives(dn, y)
    if alpha_steps:
        return _optimize_alphas(dn, c, int(alpha_steps), alpha_lr)
    return dn.bound(c)


def _margin_objectives(dn: DualNetwork, y: torch.Tensor) -> torch.Tensor:
    """``(N, C, C)`` objectives, row ``j`` = ``e_y - e_j``."""
    x = dn.x
    if y.shape != (x.shape[0],):
        raise ValueError(f"y must have shape ({x.shape[0]},), got {tuple(y.shape)}")
    num = dn.shapes[-1].numel()
    eye = torch.eye(num, dtype=x.dtype, device=x.device)
    return eye[y].unsqueeze(1) - eye.unsqueeze(0)


def _optimize_alphas(dn: DualNetwork, c: torch.Tensor, steps: int, lr: float) -> torch.Tensor:
    """Maximise ``J(c)`` over the crossing ReLUs' lower slopes (Adam, projected onto [0, 1]),
    intermediate bounds fixed; returns ``J`` at the best slopes seen per example and objective
    (never below the default ``d``), differentiable in the parameters through the final pass."""
    if not lr > 0:
        raise ValueError(f"alpha_lr must be > 0, got {lr!r}")
    n, m = c.shape[:2]
    saved = dn.lower, dn.upper
    dn.lower = {t: v.detach() for t, v in saved[0].items()}
    dn.upper = {t: v.detach() for t, v in saved[1].items()}
    try:
        init = {t: dn._slope(t).unsqueeze(1).expand(n, m, *dn.shapes[t]).clone()
                for t in dn.lower}
        best_a = {t: a.clone() for t, a in init.items()}
        if not init:     # no ReLU: nothing to optimise
            steps = 0
        alphas = {t: a.clone().requires_grad_(True) for t, a in init.items()}
        opt = torch.optim.Adam(list(alphas.values()), lr=lr) if steps else None
        # the bound is piecewise linear in the slopes: the step decays linearly to 0
        # so that the slopes settle on its kinks
        sched = (torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 1 - k / (steps + 1))
                 if steps else None)
        with torch.no_grad():
            best = dn.bound(c, init)
        for _ in range(steps):
            with torch.enable_grad():
                val = dn.bound(c, alphas)
                grads = torch.autograd.grad(-val.sum(), list(alphas.values()))
            with torch.no_grad():
                better = val.detach() > best
                best = torch.where(better, val.detach(), best)
                for t, a in alphas.items():
                    mask = better.view(n, m, *([1] * (a.dim() - 2)))
                    best_a[t] = torch.where(mask, a.detach(), best_a[t])
            for a, g in zip(alphas.values(), grads, strict=True):
                a.grad = g
            opt.step()
            sched.step()
            with torch.no_grad():
                for a in alphas.values():
                    a.clamp_(0, 1)
        with torch.no_grad():   # the slopes after the last step
            val = dn.bound(c, alphas)
            better = val > best
            for t, a in alphas.items():
                mask = better.view(n, m, *([1] * (a.dim() - 2)))
                best_a[t] = torch.where(mask, a.detach(), best_a[t])
    finally:
        dn.lower, dn.upper = saved
    return dn.bound(c, best_a)


def optimized_margin_bounds(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                            eps: float | torch.Tensor, norm: str = "linf", *, steps: int = 100,
                            lr: float = 0.1, box: bool = True) -> torch.Tensor:
    """Margin lower bounds like :func:`margin_lower_bounds`, ``(N, C)``, 0 at ``j = y``, with
    the crossing ReLUs' lower-bound slopes optimised (alpha optimisation).

    The dual network fixes the slope of each crossing ReLU's lower bound ``relu(z) >= d z`` at
    ``d = u / (u - l)``; any slope ``alpha`` in [0, 1] is also valid, so ``J`` is a lower bound
    for every choice.  This runs ``steps`` Adam steps (learning rate ``lr``, slopes projected
    onto [0, 1]) of gradient ascent on ``J``, separately for every example ``(N)``, margin
    ``(C)`` and crossing unit, from ``d``; intermediate bounds are the exact dual bounds and
    stay fixed.  Each margin keeps the best slopes seen, so the result is never below the
    default bound.  For one hidden layer the maximum over the slopes equals the LP with the
    triangle relaxation (same ``l, u``); the ascent is a subgradient method on a piecewise
    linear function, so reaching it to ~1e-4 relative takes ~1000 steps on tiny nets (100
    gets most of the gain).  Deeper nets get tighter final bounds only (intermediate bounds
    are not re-optimised).  Cost: ``steps`` extra backward passes with ``N * C`` objectives.

    Args:
        x: ``(N, ...)`` inputs in [0, 1]; y: ``(N,)`` labels; eps: float or ``(N,)``, input units.
        steps: optimiser steps (``0``: the default bound); lr: Adam learning rate (slope units).
    Returns:
        ``(N, C)`` lower bounds in logit units, differentiable in the parameters.
    """
    return margin_lower_bounds(model, x, y, eps, norm, box=box, alpha_steps=steps, alpha_lr=lr)


def threat_norm(threat: Any) -> str:
    """``"linf"`` or ``"l2"`` for a toolbox threat model; ``ValueError`` otherwise."""
    name = type(threat).__name__.lower()
    if name in ("linf", "l2"):
        return name
    raise ValueError(f"threat: the dual network supports tb.Linf and tb.L2, got {type(threat).__name__}")


def certified_radius(model: nn.Module, x: torch.Tensor, y: torch.Tensor, norm: str = "linf", *,
                     eps_max: float = 1.0, tol: float = 1e-3, box: bool = True) -> torch.Tensor:
    """Largest certified radius per example by bisection on eps (thesis eq. 3.29).

    Returns ``(N,)`` radii ``r`` (input units) with every margin bound ``> 0`` at ``r`` (``0``
    where even eps = 0 fails, i.e. misclassified) and, unless ``r = eps_max``, some bound
    ``<= 0`` at ``r + tol``.  The dual bound is not guaranteed monotone in eps, so this is the
    radius of the bisection bracket, which is still a valid certificate at ``r``.
    """
    if not eps_max > 0 or not tol > 0:
        raise ValueError(f"eps_max and tol must be > 0, got {eps_max}, {tol}")

    def ok(eps: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            m = margin_lower_bounds(model, x, y, eps, norm, box=box)
        return m.scatter(1, y.view(-1, 1), float("inf")).min(1).values > 0

    lo = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    hi = torch.full_like(lo, float(eps_max))
    good_at_zero = ok(lo)
    top = ok(hi)
    lo = torch.where(top, hi, lo)
    while bool(((hi - lo) > tol).any()):
        mid = (lo + hi) / 2
        good = ok(mid)
        lo = torch.where(good, mid, lo)
        hi = torch.where(good, hi, mid)
    return torch.where(good_at_zero, lo, torch.zeros_like(lo))
