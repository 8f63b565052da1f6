"""Sinkhorn machinery for the Wasserstein threat model, with local (k×k) transport plans.

Images ``(N, C, H, W)`` are non-negative mass distributions; mass moves only inside one
channel and only to pixels of the ``k×k`` window centred on its source, at cost
``C[o] = ||o||_2^p`` for a pixel offset ``o`` (``p=1``: the thesis's 1-Wasserstein cost;
``p=2``: squared Euclidean, the reference code's and ART's default).  Every "matrix × vector"
with a local kernel is a log-sum-exp over the ``k*k`` neighbours (``F.unfold`` with ``-inf``
padding, so no mass leaves the image).  All computations are float64 and in log space.

Functions: :func:`local_cost`, :func:`lambertw_exp`, :func:`sinkhorn_distance` (entropic OT
cost), :func:`projected_sinkhorn` (Algorithm 8 of the thesis: approximate projection onto the
Wasserstein ball) and :func:`wasserstein_lp` (the exact local-plan OT cost by linear
programming, for tiny images in tests).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["local_cost", "lambertw_exp", "sinkhorn_distance", "projected_sinkhorn", "wasserstein_lp",
           "local_plan_entries"]

_TINY = 1e-300  # mass floor inside logarithms (float64): log(0) would give -inf - (-inf) = nan


def local_cost(kernel_size: int, p: float, *, dtype=torch.float64, device=None) -> torch.Tensor:
    """The ``(k*k,)`` cost of moving unit mass by each offset of a ``k×k`` window, row-major:
    ``((a - k//2)^2 + (b - k//2)^2)^(p/2)`` for offset index ``a*k + b`` (pixel units)."""
    r = kernel_size // 2
    ar = torch.arange(kernel_size, dtype=dtype, device=device) - r
    d2 = ar.view(-1, 1) ** 2 + ar.view(1, -1) ** 2
    return (d2 ** (p / 2)).flatten()


def _neighbours(t: torch.Tensor, k: int) -> torch.Tensor:
    """``(B, C, H, W)`` log values -> ``(B, C, k*k, H*W)``: for each pixel the values of its
    ``k×k`` neighbourhood (``-inf`` outside the image), offsets in :func:`local_cost` order."""
    b, c, h, w = t.shape
    r = k // 2
    tp = F.pad(t.reshape(b * c, 1, h, w), (r, r, r, r), value=-math.inf)
    return F.unfold(tp, k).view(b, c, k * k, h * w)


def _local_lse(t: torch.Tensor, logk: torch.Tensor, k: int) -> torch.Tensor:
    """``out[i] = logsumexp_o(logk[o] + t[i + o])`` for ``t`` ``(B, C, H, W)`` and a
    per-example log-filter ``logk`` ``(B, k*k)`` (the log of "local kernel × exp(t)")."""
    nb = _neighbours(t, k) + logk[:, None, :, None]
    return torch.logsumexp(nb, dim=2).view_as(t)


def _plan_sums(a: torch.Tensor, b: torch.Tensor, logk: torch.Tensor, cost: torch.Tensor, k: int,
               powers: tuple[int, ...] = (1,)) -> list[torch.Tensor]:
    """Per-example ``sum_{i,o} Π_{i,i+o} C_o^q`` for each ``q`` in ``powers``, with
    ``log Π_{i,i+o} = a_i + logk_o + b_{i+o}`` (``a``, ``b`` ``(B, C, H, W)``)."""
    bsz = a.shape[0]
    lp = a.flatten(2)[:, :, None, :] + logk[:, None, :, None] + _neighbours(b, k)
    pi = lp.exp()
    return [(pi * cost.view(1, 1, -1, 1) ** q).reshape(bsz, -1).sum(1) for q in powers]


def _conv_local(e: torch.Tensor, filt: torch.Tensor, k: int) -> torch.Tensor:
    """Exp-domain local "kernel × vector": ``e`` ``(B, C, H, W)``, ``filt`` ``(B, F, k*k)``
    per-example filters -> ``(B, F, C, H, W)`` with ``out[b, f, c, i] = Σ_o filt[b, f, o] *
    e[b, c, i + o]`` (zero outside the image).  One grouped ``conv2d`` call (a correlation,
    so offset ``o = (a - k//2, b - k//2)`` of :func:`local_cost`'s order)."""
    b, c, h, w = e.shape
    f = filt.shape[1]
    weight = filt.reshape(b, 1, f, k, k).expand(b, c, f, k, k).reshape(b * c * f, 1, k, k)
    out = F.conv2d(e.reshape(1, b * c, h, w), weight, padding=k // 2, groups=b * c)
    return out.view(b, c, f, h, w).transpose(1, 2)


def _shift(t: torch.Tensor) -> torch.Tensor:
    """Per-example maximum of ``t`` ``(B, ...)`` (0 for rows without a finite entry)."""
    m = t.flatten(1).amax(1)
    return torch.where(torch.isfinite(m), m, torch.zeros_like(m))


_SMALL = 1e-250  # an exp-domain sum below this may have lost precision: redo it in log space


def _lse_fast(t: torch.Tensor, logk: torch.Tensor, k: int,
              mask: torch.Tensor | None = None) -> torch.Tensor:
    """:func:`_local_lse` by one grouped convolution in the exp domain (about 10-20x faster
    on CPU), with a per-example shift.  A window whose sum is tiny after the shift (so the
    exp domain may have lost its terms) is recomputed in log space, row by row; ``mask``
    ``(B, C, H, W)`` bool marks the windows that hold a finite entry of ``t`` (the others
    are ``-inf`` exactly and need no check; ``None``: all of them)."""
    sh, ksh = _shift(t), logk.amax(1)
    e = (t - sh.view(-1, 1, 1, 1)).exp()
    s = _conv_local(e, (logk - ksh[:, None]).exp()[:, None], k)[:, 0]
    small = s < _SMALL
    if mask is not None:
        small &= mask
    out = s.log() + (sh + ksh).view(-1, 1, 1, 1)
    bad = small.flatten(1).any(1)
    if bool(bad.any()):
        out[bad] = _local_lse(t[bad], logk[bad], k)
    return out


def _plan_sums_fast(a: torch.Tensor, b: torch.Tensor, logk: torch.Tensor, cost: torch.Tensor,
                    k: int, powers: tuple[int, ...] = (1,)) -> list[torch.Tensor]:
    """:func:`_plan_sums` by one grouped convolution in the exp domain; rows whose total plan
    mass underflows after the shifts are recomputed in log space."""
    ash, bsh, ksh = _shift(a), _shift(b), logk.amax(1)
    u = (a - ash.view(-1, 1, 1, 1)).exp()
    v = (b - bsh.view(-1, 1, 1, 1)).exp()
    kf = (logk - ksh[:, None]).exp()
    qs = (0,) + tuple(powers)
    filt = torch.stack([kf * cost.view(1, -1) ** q for q in qs], 1)
    tot = (u[:, None] * _conv_local(v, filt, k)).flatten(2).sum(2)  # (B, 1 + len(powers))
    scale = (ash + bsh + ksh).exp()
    out = [tot[:, j + 1] * scale for j in range(len(powers))]
    bad = (tot[:, 0] < _SMALL) | ~torch.isfinite(scale)
    if bool(bad.any()):
        slow = _plan_sums(a[bad], b[bad], logk[bad], cost, k, powers)
        for o, sl in zip(out, slow, strict=True):
            o[bad] = sl
    return out


def lambertw_exp(s: torch.Tensor, iters: int = 40, *, init: torch.Tensor | None = None,
                 rtol: float = 1e-14) -> torch.Tensor:
    """``W(exp(s))`` (principal branch of Lambert W), computed in log space so that large ``s``
    does not overflow: Halley's method on ``w + log w = s`` from ``init`` (a nearby solution, e.g. the
    previous Sinkhorn sweep's; must be positive) or from ``s - log s`` (``s > 1``) /
    ``exp(s)``, until no entry changes by more than ``rtol`` relatively (at most ``iters``
    steps).  ``s`` may be ``-inf`` (result: ~0).  Shape-preserving; float64 recommended."""
    s = s.clamp_min(-1e4)
    if init is None:
        w = torch.where(s > 1, s - torch.log(s.clamp_min(1.0)), torch.exp(s.clamp_max(1.0)))
    else:
        w = init.clamp_min(_TINY)
    small = s < -20
    es = torch.exp(s.clamp_max(-20))
    tiny_w = (es * (1 - es)).clamp_min(_TINY)
    w = torch.where(small, tiny_w, w)
    for _ in range(iters):
        # Halley's step on f(w) = w + log w - s (cubic convergence): f' = 1 + 1/w, f'' = -1/w²
        f = w + torch.log(w) - s
        d1 = 1 + 1 / w
        w_new = (w - 2 * f * d1 / (2 * d1 * d1 + f / (w * w))).clamp_min(_TINY)
        # a non-finite step (far from the root, w tiny): halve w instead
        w_new = torch.where(torch.isfinite(w_new), w_new, (w / 2).clamp_min(_TINY))
        # W(e^s) = e^s (1 - e^s + ...) to double precision for s < -20 (and w² would underflow)
        w_new = torch.where(small, tiny_w, w_new)
        if bool(((w_new - w).abs() <= rtol * w_new).all()):
            w = w_new
            break
        w = w_new
    return w


def _check_images(x: torch.Tensor, name: str) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        raise ValueError(f"{name} must be a (N, C, H, W) tensor, got "
                         f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")


def _check_kernel(kernel_size: int) -> None:
    if not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be a positive odd int, got {kernel_size!r}")


def _check_pair(x: torch.Tensor, other: torch.Tensor, other_name: str, kernel_size: int, reg: float) -> None:
    """The shared argument checks of the Sinkhorn solvers: two image batches of one shape, a
    valid local-plan size and a positive entropic regularisation."""
    _check_images(x, "x")
    _check_images(other, other_name)
    _check_kernel(kernel_size)
    if other.shape != x.shape:
        raise ValueError(f"{other_name} must have the shape of x {tuple(x.shape)}, got {tuple(other.shape)}")
    if not reg > 0:
        raise ValueError(f"reg must be > 0, got {reg!r}")


def _normalise(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x / m, m)`` with ``m`` ``(N,)`` the total mass of each example (all channels)."""
    m = x.flatten(1).sum(1)
    return x / m.clamp_min(_TINY).view(-1, 1, 1, 1), m


def sinkhorn_distance(x: torch.Tensor, y: torch.Tensor, *, p: float = 2, kernel_size: int = 5,
                      reg: float = 1e-3, iters: int = 500, tol: float = 1e-7) -> torch.Tensor:
    """Entropic optimal-transport cost between the mass-normalised images ``x`` and ``y``.

    ``x``, ``y``: ``(N, C, H, W)`` non-negative; each is divided by its own total mass.
    Solves ``min <Π, C> + reg * Σ Π log Π`` over local plans with row sums ``x`` and column
    sums ``y`` by log-domain Sinkhorn (at most ``iters`` sweeps, stopping once the column
    sums are within ``tol`` of ``y`` in L1) and returns ``<Π, C>`` ``(N,)`` float64, in cost units
    (pixels^p per unit mass).  As ``reg -> 0`` (with enough ``iters``) it tends to the exact
    local-plan Wasserstein cost :func:`wasserstein_lp`.  Rows of Π match ``x`` exactly; if
    ``y`` cannot be reached with local moves the result is large, not ``inf``.  Small ``reg``
    converges slowly, and a plan stopped early *under*-estimates the cost.
    """
    _check_pair(x, y, "y", kernel_size, reg)
    a, _ = _normalise(x.double().clamp_min(0))
    b, _ = _normalise(y.double().clamp_min(0))
    k = kernel_size
    la, lb = a.log(), b.log()  # -inf where there is no mass
    reach_a = F.max_pool2d((a > 0).to(a.dtype), k, stride=1, padding=k // 2) > 0
    reach_b = F.max_pool2d((b > 0).to(b.dtype), k, stride=1, padding=k // 2) > 0
    cost = local_cost(k, p, device=x.device)
    logk = (-cost / reg).expand(x.shape[0], -1)

    def lse(t, mask):  # never -inf: a target pixel that no source reaches gets a huge, finite g
        return _lse_fast(t, logk, k, mask=mask).clamp_min(-1e4)

    f = torch.zeros_like(la)
    g = torch.where(b > 0, torch.zeros_like(lb), lb)
    for it in range(iters):
        f = la - lse(g, reach_b)
        if it % 10 == 9:  # column-marginal error of the row-exact plan (L1, per example)
            col = (g + lse(f, reach_a)).exp()
            if float((col - b).abs().flatten(1).sum(1).max()) <= tol:
                break
        g = lb - lse(f, reach_a)
    f = la - lse(g, reach_b)
    return _plan_sums_fast(f, g, logk, cost, k)[0]


def projected_sinkhorn(x: torch.Tensor, w: torch.Tensor, eps: float | torch.Tensor, *,
                       p: float = 2, kernel_size: int = 5, reg: float = 1e-3, iters: int = 400,
                       tol: float = 1e-6, state: dict | None = None,
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Approximate Euclidean projection of ``w`` onto the Wasserstein ball ``B_W(x, eps)``.

    ``x`` ``(N, C, H, W)``: the centre, non-negative with total mass 1 per example; ``w``: the
    point to project, same shape and units (it may be negative).  ``eps``: float or ``(N,)``
    radius in cost units.  Runs the thesis's projected Sinkhorn (Algorithm 8: block-coordinate
    ascent on the dual of ``min ½||w - z||² + reg Σ Π log Π`` s.t. ``Π1 = x, Πᵀ1 = z,
    <Π, C> <= eps``, with Lambert-W β-steps and a Newton step on the cost multiplier ψ) for at
    most ``iters`` sweeps, stopping when no entry of ``z`` moves by more than ``tol`` times
    the largest entry.  Each local "kernel × vector" is one grouped convolution in the exp
    domain (per-example shifts; windows that would lose precision are redone in log space).

    It then finishes with a step that makes the answer feasible whatever the convergence: a
    final α-step makes the plan's row sums exactly ``x``, ``z`` is set to its column sums,
    and if the plan's cost exceeds ``eps`` the point is pulled back to
    ``x + (eps / cost) (z - x)`` (a plan of cost exactly ``eps`` takes ``x`` there).  So the
    returned ``z`` ``(N, C, H, W)`` float64 is ``>= 0``, has the mass of ``x`` and has
    Wasserstein distance ``<= eps`` from ``x`` up to float rounding.  Also returns the cost
    ``(N,)`` of that certifying plan.

    ``state``: an optional dict for warm starts across calls on nearby ``w`` (an attack's
    successive iterates): when it holds ``"beta"`` ``(N, C, H, W)`` and ``"psi"`` ``(N,)``
    from a previous call on the same ``x``, the iteration starts there; on return it holds
    this call's final dual variables and ``"sweeps"`` (the number of sweeps run).
    """
    _check_pair(x, w, "w", kernel_size, reg)
    if state is not None and not isinstance(state, dict):
        raise ValueError(f"state must be a dict or None, got {type(state).__name__}")
    n, k = x.shape[0], kernel_size
    x, w = x.double(), w.double()
    lam = 1.0 / reg
    eps_t = (eps.to(x).view(-1) if isinstance(eps, torch.Tensor)
             else torch.full((n,), float(eps), dtype=x.dtype, device=x.device))
    cost = local_cost(k, p, device=x.device)
    lx = x.log()  # -inf where x has no mass: those rows of the plan are exactly empty
    reach = F.max_pool2d((x > 0).to(x.dtype), k, stride=1, padding=k // 2) > 0
    npix = x[0].numel()
    warm = (state is not None and isinstance(state.get("beta"), torch.Tensor)
            and state["beta"].shape == x.shape and isinstance(state.get("psi"), torch.Tensor)
            and state["psi"].shape == (n,))
    if warm:
        beta, psi = state["beta"].to(x), state["psi"].to(x)
    else:
        beta = torch.full_like(x, -math.log(npix))
        psi = torch.ones(n, dtype=x.dtype, device=x.device)
    log_lam = math.log(lam)
    z_prev = wz = None
    sweeps = 0
    for _ in range(iters):
        sweeps += 1
        logk = -psi.view(-1, 1) * cost.view(1, -1) - 1
        alpha = lx - _lse_fast(beta, logk, k)
        s = _lse_fast(alpha, logk, k, mask=reach)
        wz = lambertw_exp(log_lam + lam * w + s, init=wz, rtol=1e-10)
        beta = lam * w - wz
        z = wz / lam
        c1, c2 = _plan_sums_fast(alpha, beta, logk, cost, k, (1, 2))
        g1, g2 = c1 - eps_t, -c2.clamp_min(_TINY)
        delta = g1 / g2
        t = torch.ones_like(psi)
        for _h in range(7):  # halve while the step leaves ψ >= 0 (down to t = 1/128)
            bad = psi - t * delta < 0
            if not bool(bad.any()):
                break
            t = torch.where(bad, t / 2, t)
        psi = (psi - t * delta).clamp_min(0)
        if z_prev is not None and float((z - z_prev).abs().max()) <= tol * float(z.abs().max()):
            break
        z_prev = z
    logk = -psi.view(-1, 1) * cost.view(1, -1) - 1
    alpha = lx - _lse_fast(beta, logk, k)
    z = (beta + _lse_fast(alpha, logk, k, mask=reach)).exp()
    if state is not None:
        state.update(beta=beta, psi=psi, sweeps=sweeps)
    # pixels with no mass of x in their window receive none
    z = torch.where(reach, z, torch.zeros_like(z))
    z = torch.where(x.flatten(1).sum(1).view(-1, 1, 1, 1) > 0, z, x)
    plan_cost = _plan_sums_fast(alpha, beta, logk, cost, k)[0]
    theta = torch.where(plan_cost > eps_t, eps_t / plan_cost.clamp_min(_TINY), torch.ones_like(plan_cost))
    z = x + theta.view(-1, 1, 1, 1) * (z - x)
    return z.clamp_min(0), plan_cost * theta


def local_plan_entries(shape: tuple[int, int, int], kernel_size: int | None, p: float):
    """The entries of a local transport plan on images of ``shape`` ``(C, H, W)``, for exact
    LP / QP oracles on tiny images: numpy arrays ``(src, dst, cost)`` of the flat source and
    target pixel index and the cost ``||offset||_2^p`` of every move within one channel at
    offset ``|da|, |db| <= kernel_size // 2`` (any offset when ``kernel_size`` is None),
    source-major.  ``O(C (H W)^2)`` entries at most."""
    import numpy as np

    c, h, w = shape
    r = h + w if kernel_size is None else kernel_size // 2
    src, dst, cst = [], [], []
    for ch in range(c):
        for i in range(h):
            for j in range(w):
                for a in range(max(-r, -i), min(r, h - 1 - i) + 1):
                    for b in range(max(-r, -j), min(r, w - 1 - j) + 1):
                        src.append((ch * h + i) * w + j)
                        dst.append((ch * h + i + a) * w + j + b)
                        cst.append((a * a + b * b) ** (p / 2))
    return np.asarray(src), np.asarray(dst), np.asarray(cst, dtype=np.float64)


def wasserstein_lp(x: torch.Tensor, y: torch.Tensor, *, p: float = 2,
                   kernel_size: int | None = None) -> float:
    """Exact optimal-transport cost between one pair of mass-normalised images by linear
    programming (``scipy.optimize.linprog``, HiGHS); for tiny images in tests.

    ``x``, ``y``: ``(C, H, W)`` non-negative, each divided by its own mass.  Moves are allowed
    within a channel, to pixels at offset ``|da|, |db| <= kernel_size // 2`` (any offset when
    ``kernel_size`` is None), at cost ``||offset||_2^p``.  Returns ``inf`` when ``y`` cannot be
    reached.  ``O((C H W)^2)`` variables: keep ``C*H*W`` below a few hundred.
    """
    import numpy as np
    from scipy.optimize import linprog
    from scipy.sparse import coo_matrix

    if x.dim() != 3 or x.shape != y.shape:
        raise ValueError(f"x and y must be (C, H, W) of the same shape, got {tuple(x.shape)} "
                         f"and {tuple(y.shape)}")
    a = x.double().clamp_min(0).flatten().numpy()
    b = y.double().clamp_min(0).flatten().numpy()
    a, b = a / a.sum(), b / b.sum()
    c, h, wd = x.shape
    src, dst, cst = local_plan_entries((c, h, wd), kernel_size, p)
    nv, npx = len(cst), a.size
    cols = np.arange(nv)
    a_eq = coo_matrix((np.ones(2 * nv), (np.concatenate([src, npx + np.asarray(dst)]),
                                         np.concatenate([cols, cols]))), shape=(2 * npx, nv))
    # masses scaled to O(1) per pixel for the solver's absolute tolerances; the last target
    # constraint is implied by the others (equal total masses) and is dropped
    scale = float(npx)
    a_eq = a_eq.tocsr()[:-1]
    res = linprog(np.asarray(cst), A_eq=a_eq, b_eq=scale * np.concatenate([a, b[:-1]]),
                  bounds=(0, None), method="highs")
    return float(res.fun) / scale if res.status == 0 else math.inf
