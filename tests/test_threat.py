"""Property tests of the threat models (Linf, L2, L1 ∩ the [0, 1] box) and of every builtin
attack's output, with Hypothesis.

Shapes, radii (floats and per-example tensors), dtypes and seeds are generated; the inputs mix
interior pixels with pixels saturated at 0 and 1 (as in MNIST) and perturbations from tiny to
far outside the box.  Nearest-point claims are checked against scipy's SLSQP and against the
variational inequality that characterises a Euclidean projection onto a convex set.

``TOOLBOX_HYPOTHESIS_SCALE=10`` multiplies every example budget (a deeper local run).
"""

from __future__ import annotations

import inspect
import math
import os

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.optimize import minimize

import toolbox as tb
from toolbox.plugins import registry

torch.set_num_threads(1)

SCALE = float(os.environ.get("TOOLBOX_HYPOTHESIS_SCALE", "1"))
ATOL = 1e-6
THREATS = {"linf": tb.Linf, "l2": tb.L2, "l1": tb.L1}
P = {"linf": math.inf, "l2": 2.0, "l1": 1.0}


def budget(n: int, **kw) -> settings:
    """Hypothesis settings with ``n`` examples (times ``TOOLBOX_HYPOTHESIS_SCALE``)."""
    return settings(max_examples=max(1, int(n * SCALE)), deadline=None, database=None, **kw)


# ------------------------------------------------------------------------------------ strategies
@st.composite
def cases(draw, threat: str, chw: tuple[int, int, int] = (2, 5, 5), float64: bool | None = None):
    """``(tm, x, v, eps)``: a threat model, clean inputs ``x`` ``(n, c, h, w)`` in [0, 1] (``c, h,
    w`` at most ``chw``) and a point ``v`` anywhere (often outside the box and the ball);
    ``eps`` a float or an ``(n,)`` tensor."""
    n = draw(st.integers(1, 4))
    shape = (n, *(draw(st.integers(1, m)) for m in chw))
    dtype = torch.float64 if (draw(st.booleans()) if float64 is None else float64) else torch.float32
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    x = torch.rand(shape, generator=g, dtype=torch.float64)
    sat = draw(st.sampled_from([0.0, 0.3, 0.9]))  # pixels stuck at 0 or 1
    m = torch.rand(shape, generator=g, dtype=torch.float64) < sat
    x = torch.where(m, (torch.rand(shape, generator=g, dtype=torch.float64) < 0.5).double(), x)
    scale = draw(st.sampled_from([1e-3, 0.1, 0.5, 2.0]))
    v = x + scale * torch.randn(shape, generator=g, dtype=torch.float64)
    same = torch.rand(shape, generator=g, dtype=torch.float64) < draw(st.sampled_from([0.0, 0.5]))
    v = torch.where(same, x, v)  # coordinates the perturbation leaves alone
    radius = st.one_of(st.just(0.0), st.floats(1e-4, 4.0))
    if draw(st.booleans()):
        eps = draw(radius)
    else:
        eps = torch.tensor(draw(st.lists(radius, min_size=n, max_size=n)), dtype=torch.float64)
    kw = {}
    if threat == "l1":
        lo = draw(st.integers(1, 6))
        kw["k"] = draw(st.sampled_from([lo, (lo, lo + draw(st.integers(0, 5)))]))
    return THREATS[threat](eps, **kw), x.to(dtype), v.to(dtype), eps


def eps_col(eps, n: int) -> torch.Tensor:
    return eps.double() if isinstance(eps, torch.Tensor) else torch.full((n,), float(eps), dtype=torch.float64)


def assert_in_set(z: torch.Tensor, x: torch.Tensor, eps, p: float, *, box: bool = True) -> None:
    """``z`` lies in ball_p(x, eps) (and the [0, 1] box) with absolute tolerance ``ATOL``."""
    d = (z.double() - x.double()).flatten(1)
    norms = torch.linalg.vector_norm(d, ord=p, dim=1)
    assert (norms <= eps_col(eps, len(x)) + ATOL).all(), (norms, eps)
    if box:
        assert z.min() >= -ATOL and z.max() <= 1 + ATOL, (z.min(), z.max())


# --------------------------------------------------------------------------- project / contains
@pytest.mark.parametrize("name", THREATS)
@given(data=st.data())
@budget(150)
def test_project_lands_in_ball_and_box_and_is_idempotent(name, data):
    tm, x, v, eps = data.draw(cases(name))
    z = tm.project(v, x)
    assert z.shape == x.shape and z.dtype == x.dtype
    assert_in_set(z, x, eps, P[name])
    assert tm.contains(z, x, atol=ATOL, rtol=0).all()
    z2 = tm.project(z, x)
    torch.testing.assert_close(z2, z, atol=ATOL, rtol=0)
    # a point already inside the set is left where it is
    torch.testing.assert_close(tm.project(x, x), x, atol=0, rtol=0)


@pytest.mark.parametrize("name", THREATS)
@given(data=st.data())
@budget(80)
def test_contains_agrees_with_the_definition(name, data):
    tm, x, v, eps = data.draw(cases(name))
    got = tm.contains(v, x, atol=ATOL, rtol=0)
    d = (v.double() - x.double()).flatten(1)
    norms = torch.linalg.vector_norm(d, ord=P[name], dim=1)
    e = eps_col(eps, len(x))
    flat = v.double().flatten(1)
    in_box = (flat >= -ATOL).all(1) & (flat <= 1 + ATOL).all(1)
    want = (norms <= e + ATOL) & in_box
    clear = (norms - e - ATOL).abs() > 1e-9  # leave exact ties on the boundary alone
    assert torch.equal(got[clear], want[clear])


@pytest.mark.parametrize("name", THREATS)
@given(data=st.data())
@budget(80)
def test_norm_matches_torch_vector_norm(name, data):
    tm, x, v, _ = data.draw(cases(name))
    want = torch.linalg.vector_norm((v - x).flatten(1), ord=P[name], dim=1)
    torch.testing.assert_close(tm.norm(v - x), want)


# ------------------------------------------------------------------------------- random_init
@pytest.mark.parametrize("name", THREATS)
@given(data=st.data(), seed=st.integers(0, 2**31 - 1))
@budget(80)
def test_random_init_is_inside_and_reproducible(name, data, seed):
    tm, x, _, eps = data.draw(cases(name))
    x0 = tm.random_init(x, torch.Generator().manual_seed(seed))
    assert x0.shape == x.shape and x0.dtype == x.dtype
    assert_in_set(x0, x, eps, P[name])
    assert tm.contains(x0, x, atol=ATOL, rtol=0).all()
    assert torch.equal(x0, tm.random_init(x, torch.Generator().manual_seed(seed)))
    # box=False: inside the ball, not necessarily the box
    assert_in_set(tm.random_init(x, torch.Generator().manual_seed(seed), box=False), x, eps,
                  P[name], box=False)


@pytest.mark.parametrize("name", THREATS)
def test_random_init_spreads_over_the_ball(name):
    """Not a point mass: starts differ between draws and reach well into the ball."""
    x = torch.full((64, 1, 4, 4), 0.5, dtype=torch.float64)
    eps = {"linf": 0.2, "l2": 0.5, "l1": 1.0}[name]
    tm = THREATS[name](eps)
    x0 = tm.random_init(x, torch.Generator().manual_seed(0))
    n = tm.norm(x0 - x)
    assert n.max() > 0.6 * eps and n.std() > 0 and (x0[0] != x0[1]).any()


# ----------------------------------------------------------------------------------- nearest
def _scipy_projection(x: np.ndarray, v: np.ndarray, eps: float, p: str) -> np.ndarray:
    """argmin ||z - v||^2 over ball_p(x, eps) ∩ [0, 1]^d with SLSQP (ℓ1 in epigraph form)."""
    d = x.size
    if p == "l2":
        cons = [{"type": "ineq", "fun": lambda z: eps**2 - np.sum((z - x) ** 2),
                 "jac": lambda z: -2 * (z - x)}]
        res = minimize(lambda z: 0.5 * np.sum((z - v) ** 2), x.copy(), jac=lambda z: z - v,
                       bounds=[(0, 1)] * d, constraints=cons, method="SLSQP",
                       options={"ftol": 1e-14, "maxiter": 1000})
        return res.x
    # variables (z, s): s_i >= |z_i - x_i|, sum s <= eps
    eye = np.eye(d)
    cons = [
        {"type": "ineq", "fun": lambda u: u[d:] - (u[:d] - x), "jac": lambda u: np.hstack([-eye, eye])},
        {"type": "ineq", "fun": lambda u: u[d:] + (u[:d] - x), "jac": lambda u: np.hstack([eye, eye])},
        {"type": "ineq", "fun": lambda u: np.array([eps - u[d:].sum()]),
         "jac": lambda u: np.hstack([np.zeros(d), -np.ones(d)])[None]},
    ]
    res = minimize(lambda u: 0.5 * np.sum((u[:d] - v) ** 2), np.concatenate([x, np.zeros(d)]),
                   jac=lambda u: np.concatenate([u[:d] - v, np.zeros(d)]),
                   bounds=[(0, 1)] * d + [(0, None)] * d, constraints=cons, method="SLSQP",
                   options={"ftol": 1e-14, "maxiter": 1000})
    return res.x[:d]


@pytest.mark.parametrize("name", ["l2", "l1"])
@given(data=st.data())
@budget(60)
def test_project_is_the_nearest_point(name, data):
    """Compared with SLSQP, and certified by <v - p, c - p> <= 0 for sampled feasible c."""
    tm, x, v, eps = data.draw(cases(name, chw=(1, 2, 3), float64=True))  # dim <= 6
    p = tm.project(v, x)
    e = eps_col(eps, len(x))
    for i in range(len(x)):
        xi, vi, pi = x[i].flatten().numpy(), v[i].flatten().numpy(), p[i].flatten().numpy()
        q = _scipy_projection(xi, vi, float(e[i]), name)
        f_p, f_q = np.sum((pi - vi) ** 2), np.sum((q - vi) ** 2)
        assert f_p <= f_q + 1e-7, (f_p, f_q)
        # strong convexity: ||q - p||^2 <= f(q) - f(p) for any feasible q (q is, to SLSQP's tol)
        assert np.sum((q - pi) ** 2) <= max(f_q - f_p, 0) + 1e-6
    # variational inequality against feasible points: random starts, the centre, box corners
    g = torch.Generator().manual_seed(0)
    cands = [x, tm.project(torch.rand(x.shape, generator=g, dtype=x.dtype), x)]
    cands += [tm.random_init(x, g) for _ in range(30)]
    cands += [tm.project(torch.randint(0, 2, x.shape, generator=g).to(x.dtype), x) for _ in range(10)]
    for c in cands:
        ip = ((v - p) * (c - p)).flatten(1).sum(1)
        assert (ip <= 1e-9).all(), ip


@given(data=st.data())
@budget(60)
def test_linf_project_is_the_coordinatewise_clip(data):
    tm, x, v, eps = data.draw(cases("linf"))
    e = eps_col(eps, len(x)).view(-1, 1, 1, 1).numpy()
    xn, vn = x.double().numpy(), v.double().numpy()
    want = np.clip(vn, np.maximum(xn - e, 0), np.minimum(xn + e, 1))
    np.testing.assert_allclose(tm.project(v, x).double().numpy(), want, atol=ATOL, rtol=0)


# -------------------------------------------------------------------------------------- ascent
@given(data=st.data())
@budget(60)
def test_linf_ascent_is_the_sign(data):
    tm, x, v, _ = data.draw(cases("linf"))
    g = v - x
    assert torch.equal(tm.ascent(g), g.sign())


@given(data=st.data())
@budget(60)
def test_l2_ascent_is_the_unit_gradient(data):
    tm, x, v, _ = data.draw(cases("l2"))
    g = (v - x).flatten(1)
    d = tm.ascent(v - x).flatten(1)
    nonzero = g.norm(dim=1) > 1e-6
    torch.testing.assert_close(d.norm(dim=1)[nonzero], torch.ones_like(d[:, 0])[nonzero].to(d.dtype))
    cos = (d * g).sum(1)[nonzero] / g.norm(dim=1)[nonzero]
    torch.testing.assert_close(cos, torch.ones_like(cos))
    assert torch.equal(d[g.norm(dim=1) == 0], torch.zeros_like(d[g.norm(dim=1) == 0]))


@given(data=st.data(), seed=st.integers(0, 2**31 - 1), at_box=st.booleans())
@budget(150)
def test_l1_ascent_is_the_msd_top_k_direction(data, seed, at_box):
    """MSD's ℓ1 steepest ascent: the k largest |grad| among coordinates that can still move in
    their gradient's direction, each moved by sign(grad)/k; k from ``tm.k``."""
    tm, x, v, _ = data.draw(cases("l1"))
    grad = (v - x) * 3
    x_adv = x if at_box else None
    dirn = tm.ascent(grad, x_adv, generator=torch.Generator().manual_seed(seed))
    g, d = grad.flatten(1), dirn.flatten(1)
    movable = torch.ones_like(g, dtype=torch.bool)
    if at_box:
        xa = x.flatten(1)
        movable = ~(((g < 0) & (xa <= 0)) | ((g > 0) & (xa >= 1)))
    chosen = d != 0
    assert not (chosen & ~movable).any()  # never pushes against the box
    assert torch.equal(d[chosen].sign(), g[chosen].sign())
    mags = d[chosen].abs()
    if mags.numel():
        k = round(1 / float(mags[0]))
        torch.testing.assert_close(mags, torch.full_like(mags, 1 / k))  # all moves are 1/k
        lo, hi = tm.k
        assert lo <= k <= hi or k == g.shape[1] < lo
        cand = movable & (g != 0)
        want = torch.clamp(cand.sum(1), max=k)  # exactly k moves when k coordinates can move
        assert torch.equal(chosen.sum(1), want)
        for i in range(len(g)):  # each chosen |grad| >= every other movable |grad|
            if chosen[i].any() and (cand[i] & ~chosen[i]).any():
                assert g[i][chosen[i]].abs().min() >= g[i][cand[i] & ~chosen[i]].abs().max()
        full = want == k
        torch.testing.assert_close(d.abs().sum(1)[full], torch.ones_like(d[:, 0])[full])


def test_l1_ascent_samples_k_in_range_reproducibly():
    tm = tb.L1(1.0, k=(2, 7))
    grad = torch.randn(3, 1, 6, 6, generator=torch.Generator().manual_seed(1))
    ks = set()
    for s in range(60):
        d = tm.ascent(grad, generator=torch.Generator().manual_seed(s))
        ks.add(int((d[0] != 0).sum()))
        assert torch.equal(d, tm.ascent(grad, generator=torch.Generator().manual_seed(s)))
    assert ks == set(range(2, 8))


@pytest.mark.parametrize("name", THREATS)
@given(data=st.data(), seed=st.integers(0, 2**31 - 1), per_example_step=st.booleans())
@budget(50)
def test_step_stays_inside(name, data, seed, per_example_step):
    tm, x, v, eps = data.draw(cases(name))
    start = tm.random_init(x, torch.Generator().manual_seed(seed))
    grad = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed + 1), dtype=x.dtype)
    size = torch.rand(len(x), dtype=torch.float64) * 2 if per_example_step else 0.7
    nxt = tm.step(start, x, grad, size, generator=torch.Generator().manual_seed(seed))
    assert nxt.shape == x.shape and nxt.dtype == x.dtype
    assert_in_set(nxt, x, eps, P[name])


def test_linf_fused_step_equals_the_generic_step():
    """Linf.step's one-buffer fast path computes exactly project(x + size * sign(g))."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(5, 1, 6, 6, generator=g)
    x_adv = tb.Linf(0.2).random_init(x, g)
    grad = torch.randn(x.shape, generator=g)
    for eps, size in [(0.2, 0.05), (torch.rand(5, generator=g) * 0.3, torch.rand(5, generator=g) * 0.1)]:
        tm = tb.Linf(eps)
        want = tm.project(x_adv + (size.view(-1, 1, 1, 1) if isinstance(size, torch.Tensor) else size)
                          * grad.sign(), x)
        assert torch.equal(tm.step(x_adv, x, grad, size), want)


def test_linf_bounds_cache_follows_eps_and_x():
    x = torch.full((2, 1, 2, 2), 0.5)
    far = torch.ones_like(x)
    tm = tb.Linf(0.1)
    assert torch.allclose(tm.project(far, x), x + 0.1)
    tm.eps = 0.2  # assigned directly: the cached bounds must not be reused
    assert torch.allclose(tm.project(far, x), x + 0.2)
    x.add_(-0.25)  # changed in place
    assert torch.allclose(tm.project(far, x), x + 0.2)
    e = torch.tensor([0.1, 0.3])
    tm2 = tb.Linf(e)
    assert torch.allclose(tm2.project(far, x)[:, 0, 0, 0], x[:, 0, 0, 0] + e)
    e.mul_(0.5)  # per-example radii changed in place
    assert torch.allclose(tm2.project(far, x)[:, 0, 0, 0], x[:, 0, 0, 0] + e)


# ------------------------------------------------------------------ every builtin attack's output
def builtin_attacks() -> list[str]:
    """Attacks registered by the kernel's own plugins (not by installed third-party plugins)."""
    return sorted(e.name for e in registry().entries()
                  if e.kind == "attack" and e.plugin.startswith("builtin"))


def test_the_builtin_attacks_are_all_there():
    assert {"fgsm", "pgd", "apgd", "apgd-ce", "apgd-dlr", "apgd-t"} <= set(builtin_attacks())


def _make(name: str, tm, seed: int):
    params = inspect.signature(registry().get("attack", name)).parameters
    kw = {k: v for k, v in {"steps": 4, "seed": seed, "n_target_classes": 2}.items() if k in params}
    return tb.attack(name, threat=tm, **kw)


@pytest.mark.parametrize("name", THREATS)
@pytest.mark.parametrize("attack", builtin_attacks())
@given(seed=st.integers(0, 2**31 - 1), per_example=st.booleans(), scale=st.floats(0.05, 3.0))
@settings(max_examples=max(1, int(4 * SCALE)), deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_attack_outputs_lie_in_ball_and_box(attack, name, seed, per_example, scale, digits_model, digits_data):
    _, _, xt, yt = digits_data
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(xt), generator=g)[:12]
    x, y = xt[idx], yt[idx]
    base = {"linf": 0.1, "l2": 0.8, "l1": 3.0}[name] * scale
    eps = base * (0.5 + torch.rand(len(x), generator=g)) if per_example else base
    tm = THREATS[name](eps)
    x_adv = _make(attack, tm, seed)(digits_model, x, y)
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype and not x_adv.requires_grad
    assert_in_set(x_adv, x, eps, P[name])
    assert tm.contains(x_adv, x, atol=ATOL, rtol=0).all()
