"""Union threat model and MSD attack: the digest's checks 6.5 (1–5)."""

import numpy as np
import pytest
import torch
from scipy.optimize import minimize
from toolbox_union import MSD, Union
from torch import nn

import toolbox as tb

torch.set_num_threads(1)


def _gen(seed=0):
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def _union():
    return Union([tb.Linf(0.3), tb.L2(1.5), tb.L1(12.0)])


# -- 1. projections ------------------------------------------------------------------------------
def _l1_box_qp(x, v, eps):
    """argmin ||x + d - v||^2 s.t. ||d||_1 <= eps, 0 <= x + d <= 1, by SLSQP on d = p - q."""
    d = x.size
    w = v - x

    def f(z):
        r = z[:d] - z[d:] - w
        return float(r @ r)

    def jac(z):
        r = 2 * (z[:d] - z[d:] - w)
        return np.concatenate([r, -r])

    cons = [{"type": "ineq", "fun": lambda z: eps - z.sum(), "jac": lambda z: -np.ones(2 * d)}]
    bounds = [(0, 1 - xi) for xi in x] + [(0, xi) for xi in x]
    z0 = np.zeros(2 * d)
    res = minimize(f, z0, jac=jac, bounds=bounds, constraints=cons, method="SLSQP",
                   options={"ftol": 1e-14, "maxiter": 500})
    return x + res.x[:d] - res.x[d:]


def test_l1_projection_matches_a_qp_solver():
    rng = np.random.default_rng(0)
    tm = tb.L1(1.0)
    for _ in range(6):
        x = rng.uniform(0, 1, 12)
        v = x + rng.normal(0, 0.6, 12)
        got = tm.project(torch.tensor(v)[None], torch.tensor(x)[None])[0].numpy()
        ref = _l1_box_qp(x, v, 1.0)
        assert np.abs(got - ref).max() < 1e-4
        assert np.abs(got - x).sum() <= 1.0 + 1e-9 and got.min() >= 0 and got.max() <= 1
    # inside: unchanged
    x = torch.full((1, 12), 0.5, dtype=torch.float64)
    v = x + 0.01
    assert torch.equal(tm.project(v, x), v)


def test_union_projection_is_the_nearest_ball_projection():
    u = Union([tb.Linf(0.1), tb.L2(0.5), tb.L1(2.0)])
    g = _gen(1)
    x = torch.rand(64, 1, 6, 6, generator=g, dtype=torch.float64)
    v = (x + torch.randn(x.shape, generator=g, dtype=torch.float64) * 0.3).clamp(-0.2, 1.2)
    p = u.project(v, x)
    assert u.contains(p, x).all()
    d_union = (p - v).flatten(1).norm(dim=1)
    d_each = torch.stack([(t.project(v, x) - v).flatten(1).norm(dim=1) for t in u.threats])
    torch.testing.assert_close(d_union, d_each.min(0).values)
    # brute force: no sampled point of the union is nearer than the projection
    for t in u.threats:
        for _ in range(5):
            z = t.random_init(x, g)
            assert ((z - v).flatten(1).norm(dim=1) >= d_union - 1e-9).all()
    # points already in the union do not move
    inside = u.random_init(x, g)
    torch.testing.assert_close(u.project(inside, x), inside)


def test_union_membership_norm_and_scale():
    u = _union()
    x = torch.full((3, 1, 4, 4), 0.5)
    d = torch.zeros_like(x)
    d[0] = 0.3                       # linf 0.3 (l2 1.2, l1 4.8): inside via linf and l2
    d[1, 0, 0, 0] = 0.5              # a single pixel: l2 0.5 inside
    d[2] = 0.31                      # linf 0.31, l2 1.24, l1 4.96: inside via l2 and l1
    assert u.contains(x + d, x).all()
    d[2] = 0.45                      # linf .45, l2 1.8, l1 7.2: inside l1 only
    assert u.contains(x + d, x).all()
    big = torch.full_like(x, 1.0)    # delta 0.5 everywhere: l1 8 <= 12 -> inside
    assert u.contains(big, x).all()
    half = u.with_eps(0.5)
    assert [t.eps for t in half.threats] == [0.15, 0.75, 6.0] and half.eps == 0.5
    assert not half.contains(big, x).any()
    n = u.norm(d)
    assert torch.allclose(n[2], torch.tensor(7.2 / 12), atol=1e-6)
    assert (n <= 1 + 1e-6).all() and torch.allclose(half.norm(d), n * 1.0)  # gauge is scale-free
    with pytest.raises(ValueError, match="threats"):
        Union([])
    with pytest.raises(ValueError, match="Union"):
        Union([u])
    with pytest.raises(ValueError, match="per-example"):
        Union([tb.Linf(torch.tensor([0.1, 0.2]))])
    assert tb.threat("union", threats=[("linf", 0.3), {"name": "l1", "eps": 12.0}]).threats[1].eps == 12.0


def test_random_init_covers_every_ball_and_stays_inside():
    u = Union([tb.Linf(0.1), tb.L2(1.0), tb.L1(4.0)])
    x = torch.rand(300, 1, 8, 8, generator=_gen(2))
    z = u.random_init(x, _gen(3))
    assert u.contains(z, x).all()
    inside = torch.stack([t.contains(z, x) for t in u.threats])
    # the l2 and l1 starts are mostly outside the linf ball, the linf starts outside the l1 ball
    assert (~inside[0]).sum() > 50 and (~inside[2]).sum() > 50


# -- 2./3. iterate invariants and selection ------------------------------------------------------
class RecordingUnion(Union):
    """Records every step's candidates, their losses and the chosen iterate."""

    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.log = []

    def step(self, x_adv, x, grad, step_size, *, loss_fn=None, generator=None):
        cands = self.step_candidates(x_adv, x, grad, step_size, generator=generator)
        chosen, choice, scores = self.select(cands, x_adv, grad, loss_fn)
        self.log.append((x.clone(), cands.clone(), chosen.clone(), choice.clone(), scores.clone(),
                         loss_fn(chosen)))
        return chosen


def test_msd_iterate_invariants_and_per_example_max(digits_data, digits_model):
    _, _, xt, yt = digits_data
    x, y = xt[:64], yt[:64]
    u = RecordingUnion([tb.Linf(0.1), tb.L2(0.6), tb.L1(2.0)])
    atk = MSD(u, steps=8, step_size=(0.03, 0.15, 0.5), seed=0)
    x_adv = atk(model=digits_model, x=x, y=y)
    assert len(u.log) == 8
    for xs, cands, chosen, choice, scores, chosen_loss in u.log:
        for t, c in zip(u.threats, cands, strict=True):  # each candidate in its own ball and the box
            assert t.contains(c, xs, atol=1e-6).all()
        assert u.contains(chosen, xs).all()
        # selection: the chosen candidate has the per-example max loss over candidates
        torch.testing.assert_close(scores.max(0).values, chosen_loss.float(), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(chosen, cands[choice, torch.arange(len(choice))])
    assert u.contains(x_adv, x).all()
    # MSD is stronger than doing nothing and moves between balls
    picks = torch.cat([c[3] for c in u.log])
    assert picks.unique().numel() >= 2


def test_msd_returns_the_best_iterate(digits_data, digits_model):
    _, _, xt, yt = digits_data
    x, y = xt[:48], yt[:48]
    seen = []

    def ce(logits, yy):
        out = nn.functional.cross_entropy(logits, yy, reduction="none")
        if logits.shape[0] == yy.shape[0] == x.shape[0]:
            seen.append(out.detach().clone())
        return out

    u = Union([tb.Linf(0.05), tb.L2(0.3), tb.L1(1.0)])
    x_adv = MSD(u, steps=6, step_size=(0.02, 0.1, 0.3), loss=ce, seed=0)(digits_model, x, y)
    with torch.no_grad():
        logits = digits_model(x_adv)
        final = nn.functional.cross_entropy(logits, y, reduction="none")
    robust = logits.argmax(1) == y
    best = torch.stack(seen).max(0).values
    assert robust.any()
    assert (final[robust] >= best[robust] - 1e-5).all()


def test_msd_restarts_keep_the_stronger_result(digits_data, digits_model):
    _, _, xt, yt = digits_data
    x, y = xt[:100], yt[:100]
    u = Union([tb.Linf(0.1), tb.L2(0.6), tb.L1(2.0)])
    one = MSD(u, steps=5, step_size=(0.03, 0.15, 0.5), seed=0)
    three = MSD(u, steps=5, step_size=(0.03, 0.15, 0.5), restarts=3, seed=0)
    with torch.no_grad():
        acc1 = (digits_model(one(digits_model, x, y)).argmax(1) == y).float().mean()
        acc3 = (digits_model(three(digits_model, x, y)).argmax(1) == y).float().mean()
    assert acc3 <= acc1
    # MSD on the union is at least as strong as each single-norm PGD of the same budget
    for t, a in zip(u.threats, (0.03, 0.15, 0.5), strict=True):
        xp = tb.attack("pgd", threat=t, steps=5, step_size=a, random_start=False)(digits_model, x, y)
        with torch.no_grad():
            accp = (digits_model(xp).argmax(1) == y).float().mean()
        assert acc1 <= accp + 0.05


# -- 4. the l1 top-k step --------------------------------------------------------------------------
def test_l1_topk_step_properties():
    tm = tb.L1(100.0, k=(5, 20))
    g = _gen(4)
    x = torch.rand(16, 1, 8, 8, generator=g)
    x[:, :, :2] = 0.0
    x[:, :, -2:] = 1.0
    grad = torch.randn(x.shape, generator=g)
    grad[:, :, :2] = -torch.rand(x[:, :, :2].shape, generator=g) * 10 - 5   # push below 0: ineligible
    grad[:, :, -2:] = torch.rand(x[:, :, -2:].shape, generator=g) * 10 + 5  # push above 1: ineligible
    ks = set()
    for s in range(20):
        direction = tm.ascent(grad, x, generator=_gen(s))
        nz = (direction != 0).flatten(1).sum(1)
        assert (nz == nz[0]).all()
        k = int(nz[0])
        ks.add(k)
        assert 5 <= k <= 20
        mags = direction.abs()[direction != 0]
        torch.testing.assert_close(mags, torch.full_like(mags, 1.0 / k))
        assert (direction[:, :, :2] == 0).all() and (direction[:, :, -2:] == 0).all()
        assert torch.equal(direction.sign()[direction != 0], grad.sign()[direction != 0])
        # the chosen coordinates have the largest |grad| among the eligible ones
        elig = grad.abs().clone()
        elig[:, :, :2] = 0
        elig[:, :, -2:] = 0
        kth = elig.flatten(1).topk(k, 1).values[:, -1]
        chosen_min = torch.where(direction != 0, grad.abs(), torch.full_like(grad, float("inf"))).flatten(1).min(1).values
        assert (chosen_min >= kth - 1e-7).all()
        # a step with these coordinates leaves the ineligible pixels untouched
        xn = tm.step(x, x, grad, 1.0, generator=_gen(s))
        assert torch.equal(xn[:, :, :2], x[:, :, :2]) and torch.equal(xn[:, :, -2:], x[:, :, -2:])
    assert len(ks) > 3


# -- 5. linear sanity check -------------------------------------------------------------------------
class Linear(nn.Module):
    """logits = [w·x, -1e6]: the loss w·x is linear and the label 0 is never lost."""

    def __init__(self, w):
        super().__init__()
        self.w = nn.Parameter(w.flatten().clone())

    def forward(self, x):
        s = x.flatten(1) @ self.w
        return torch.stack([s, torch.full_like(s, -1e6)], 1)


def _lin_loss(logits, y):
    return logits[:, 0]


@pytest.mark.parametrize("winner", ["linf", "l2", "l1"])
def test_linear_model_msd_reaches_the_best_ball(winner):
    """On ``loss = w·x`` (box never binding) the optimum over each ball is eps_inf ||w||_1,
    eps_2 ||w||_2, eps_1 ||w||_inf; MSD must reach the largest, each PGD its own.  The l1 ball
    uses k = 1 (the exact steepest l1 step): with the top-k step the mass spreads evenly over
    the k largest weights and the gain stops at eps_1 * mean(top-k |w|)."""
    d = 20
    w = torch.randn(d, generator=_gen(5), dtype=torch.float64)
    if winner == "l1":
        w = w * 0.05
        w[3] = 5.0                                   # one dominant coordinate favours l1
    elif winner == "linf":
        w = w.sign()                                 # flat weights favour linf
    else:
        w = torch.zeros(d, dtype=torch.float64)
        w[:3] = torch.tensor([1.0, -1.0, 1.0])       # a few equal weights favour l2
    eps = {"linf": 0.1, "l2": 0.3, "l1": 0.45}
    opt = {"linf": eps["linf"] * w.abs().sum(), "l2": eps["l2"] * w.norm(), "l1": eps["l1"] * w.abs().max()}
    assert max(opt, key=opt.get) == winner
    x = torch.full((2, 1, 4, 5), 0.5, dtype=torch.float64)   # the box never binds at these radii
    y = torch.zeros(2, dtype=torch.long)
    model = Linear(w).double()
    base = float(model(x)[0, 0].detach())
    u = Union([tb.Linf(eps["linf"]), tb.L2(eps["l2"]), tb.L1(eps["l1"], k=1)])
    sizes = {"linf": 0.01, "l2": 0.05, "l1": 0.05}
    x_adv = MSD(u, steps=60, step_size=tuple(sizes.values()), loss=_lin_loss, seed=0)(model, x, y)
    with torch.no_grad():
        gain = model(x_adv)[:, 0] - base
    torch.testing.assert_close(gain, torch.full_like(gain, float(opt[winner])), rtol=1e-4, atol=1e-6)
    for t in u.threats:  # single-norm PGD reaches each ball's own optimum
        xp = tb.attack("pgd", threat=t, steps=60, step_size=sizes[t.name], loss=_lin_loss,
                       random_start=False)(model, x, y)
        with torch.no_grad():
            gp = model(xp)[:, 0] - base
        torch.testing.assert_close(gp, torch.full_like(gp, float(opt[t.name])), rtol=1e-4, atol=1e-6)


def test_linear_model_topk_l1_spreads_over_k_coordinates():
    w = torch.zeros(20, dtype=torch.float64)
    w[:8] = torch.arange(8, 0, -1, dtype=torch.float64)
    x = torch.full((1, 1, 4, 5), 0.5, dtype=torch.float64)
    model = Linear(w).double()
    xp = tb.attack("pgd", threat=tb.L1(0.45, k=4), steps=60, step_size=0.05, loss=_lin_loss,
                   random_start=False)(model, x, torch.zeros(1, dtype=torch.long))
    gain = float((model(xp)[0, 0] - model(x)[0, 0]).detach())
    assert gain == pytest.approx(0.45 * w[:4].mean().item(), rel=1e-3)


def test_ascent_is_the_best_linearised_corner():
    u = Union([tb.Linf(0.05), tb.L2(0.3), tb.L1(0.45)])
    g = torch.randn(8, 20, generator=_gen(6), dtype=torch.float64)
    g[:4, 0] = 20.0
    dirs = u.ascent(g)
    gain = (dirs * g).sum(1)
    best = torch.stack([0.05 * g.abs().sum(1), 0.3 * g.norm(dim=1), 0.45 * g.abs().max(1).values]).max(0).values
    # the l1 ascent is top-k (k in 5..20), so its linear gain is below 0.45 * max|g|
    assert (gain <= best + 1e-9).all()
    assert (gain >= torch.stack([0.05 * g.abs().sum(1), 0.3 * g.norm(dim=1)]).max(0).values - 1e-9).all()


def test_msd_argument_errors():
    with pytest.raises(ValueError, match="step_size"):
        MSD(_union(), step_size=(0.1, 0.2))
    with pytest.raises(ValueError, match="step_size"):
        MSD(_union(), step_size=(0.1, -0.2, 0.3))
    with pytest.raises(ValueError, match="restarts"):
        MSD(_union(), restarts=0)
    with pytest.raises(ValueError, match="threat"):
        MSD("linf")
    with pytest.raises(KeyError):
        MSD(_union(), loss="nope")
    a = tb.attack("msd", threat=Union([tb.Linf(0.3), tb.L2(1.5)]), steps=10, step_size=(0.01, 0.2))
    b = a.with_eps(0.5)
    assert b.step_size == (0.005, 0.1) and [t.eps for t in b.threat.threats] == [0.15, 0.75]
    assert a.spec()["threats"][1] == {"threat": "l2", "eps": 1.5}


def test_per_example_scale_and_early_stop(digits_data, digits_model):
    _, _, xt, yt = digits_data
    x, y = xt[:30], yt[:30]
    scale = torch.linspace(0.2, 1.0, 30)
    u = Union([tb.Linf(0.1), tb.L2(0.6), tb.L1(2.0)], eps=scale)
    assert torch.allclose(u.threats[2].eps, 2.0 * scale)
    x_adv = MSD(u, steps=6, step_size=(0.03, 0.15, 0.5), early_stop=True, restarts=2, seed=0)(digits_model, x, y)
    assert u.contains(x_adv, x).all()
    # the per-example radii bind: the small-scale rows stay inside their own (small) union
    small = Union([tb.Linf(0.1), tb.L2(0.6), tb.L1(2.0)], eps=0.2)
    assert small.contains(x_adv[:1], x[:1]).all()
    with pytest.raises(ValueError, match="eps"):
        Union([tb.Linf(0.1)], eps=-1.0)


def test_attack_factory_turns_a_list_of_threats_into_a_union():
    atk = tb.attack("msd", threat=[tb.Linf(0.1), tb.L2(1.0), tb.L1(5.0)])
    assert isinstance(atk.threat, Union)
