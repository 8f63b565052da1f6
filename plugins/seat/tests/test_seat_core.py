"""Digest §2.9 checks 1-6 for SEAT: the linearity error, flooding, the attack, the max-margin
loss and the reduction to FGSM-AT.  All fast (digits data / tiny models)."""

import pytest
import torch
import torch.nn.functional as F
from toolbox_seat import (
    SEAT,
    SEATAttack,
    flood,
    linear_residual,
    linearity_error,
    local_linearity_error,
    max_margin,
    random_vertex,
    reduce_residual,
    seat_perturb,
)
from torch import nn

import toolbox as tb


def _gen(seed=0):
    g = torch.Generator()
    g.manual_seed(seed)
    return g


# -- check 1: g is zero on a linear loss, and exact on a quadratic one -------------------------
def test_g_is_zero_for_a_linear_loss():
    g = _gen()
    x = torch.rand(6, 3, 4, 4, generator=g, dtype=torch.float64)
    delta = torch.randn(6, 3, 4, 4, generator=g, dtype=torch.float64)
    w = torch.randn(48, generator=g, dtype=torch.float64)
    f = lambda z: z.flatten(1) @ w + 3.0  # noqa: E731
    err = local_linearity_error(f, x, delta)
    assert err.shape == (6,)
    assert torch.allclose(err, torch.zeros(6, dtype=torch.float64), atol=1e-12)
    for red in ("mean", "batch", "sum"):
        assert float(local_linearity_error(f, x, delta, reduction=red).detach()) == pytest.approx(0.0, abs=1e-12)


def test_g_is_half_the_curvature_on_a_quadratic_loss():
    g = _gen(1)
    a = torch.randn(5, 5, generator=g, dtype=torch.float64)
    a = a @ a.T - 2 * torch.eye(5, dtype=torch.float64)  # indefinite: residuals of both signs
    x = torch.randn(8, 5, generator=g, dtype=torch.float64)
    delta = torch.randn(8, 5, generator=g, dtype=torch.float64)
    f = lambda z: 0.5 * ((z @ a) * z).sum(1)  # noqa: E731
    r = 0.5 * ((delta @ a) * delta).sum(1)   # exact Taylor remainder
    assert torch.allclose(local_linearity_error(f, x, delta), r.abs(), atol=1e-10)
    assert float(local_linearity_error(f, x, delta, reduction="mean").detach()) == pytest.approx(float(r.abs().mean()))
    assert float(local_linearity_error(f, x, delta, reduction="batch").detach()) == pytest.approx(float(r.mean().abs()))
    assert (r > 0).any() and (r < 0).any()  # so "batch" and "mean" really differ here
    assert float(r.mean().abs()) < float(r.abs().mean())


# -- check 2: quadratic scaling in double precision --------------------------------------------
def test_g_scales_quadratically_with_the_perturbation():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 4)).double()
    g = _gen(2)
    x = torch.randn(32, 10, generator=g, dtype=torch.float64)
    y = torch.randint(0, 4, (32,), generator=g)
    d = torch.randn(32, 10, generator=g, dtype=torch.float64)
    d = 1e-3 * d / d.norm(dim=1, keepdim=True)  # small enough to stay inside each ReLU region
    with torch.no_grad():
        pre = x @ net[0].weight.T + net[0].bias
        keep = (pre.abs() > (d @ net[0].weight.T).abs()).all(1)  # rows with no ReLU flip along d
    assert int(keep.sum()) >= 24
    x, y, d = x[keep], y[keep], d[keep]
    g1 = linearity_error(net, x, y, d).detach()
    assert bool((g1 > 0).all())
    for t in (1e-1, 1e-2):
        gt = linearity_error(net, x, y, t * d).detach()
        ratio = gt / g1
        assert torch.allclose(ratio, torch.full_like(ratio, t * t), rtol=1e-2)  # cubic term and rounding: < 0.5 %, (t, ratio)


def test_linearity_error_rejects_bad_arguments():
    x = torch.rand(4, 3)
    with pytest.raises(ValueError, match="delta"):
        local_linearity_error(lambda z: z.sum(1), x, torch.rand(4, 2))
    with pytest.raises(ValueError, match="reduction"):
        local_linearity_error(lambda z: z.sum(1), x, x, reduction="avg")
    with pytest.raises(ValueError, match="per-example"):
        local_linearity_error(lambda z: z.sum(), x, x)
    with pytest.raises(ValueError, match="y"):
        linearity_error(nn.Linear(3, 2), x, torch.zeros(3, dtype=torch.long), x)
    with pytest.raises(ValueError, match="loss_adv"):
        linear_residual(torch.zeros(3), torch.zeros(4), x, x)
    with pytest.raises(ValueError, match="r must"):
        reduce_residual(torch.zeros(2, 2), "mean")


# -- check 3: flooding algebra ------------------------------------------------------------------
def test_flooding_algebra_and_gradient_sign():
    b = 0.7
    for value, expect, dsign in ((1.5, 1.5, 1.0), (0.7, 0.7, None), (0.2, 2 * b - 0.2, -1.0)):
        L = torch.tensor(value, requires_grad=True)
        out = flood(L, b)
        assert float(out.detach()) == pytest.approx(expect)
        if dsign is not None:
            out.backward()
            assert float(L.grad) == dsign   # descent above b, ascent below
    L = torch.tensor(0.3)
    assert float(flood(L, 0.0)) == pytest.approx(0.3)


def test_seat_loss_with_b0_is_ce_plus_lambda_g_and_flooding_adds_up(digits_model, digits_data):
    x, y = digits_data[2][:64], digits_data[3][:64]
    lam = 0.5
    d0 = SEAT(tb.Linf(0.1), lam=lam, flood=0.0, seed=3)
    loss0, logs0 = d0.loss(digits_model, tb.Batch(x, y))
    # by hand, with the same adversarial examples (same seed)
    x_adv = SEATAttack(tb.Linf(0.1), lam, seed=3).step(digits_model, x, y, generator=_gen(3)).x_adv
    la = F.cross_entropy(digits_model(x_adv), y, reduction="none").detach()
    g = linearity_error(digits_model, x, y, x_adv - x, reduction="mean").detach()
    assert float(loss0.detach()) == pytest.approx(float(la.mean() + lam * g), rel=1e-5)
    assert float(logs0["lin_err"]) == pytest.approx(float(g), rel=1e-5)
    # SEAT-FL: a flood level above the adversarial loss mirrors it: 2b - CE + lam g
    b = float(la.mean()) + 1.0
    loss_b, _ = SEAT(tb.Linf(0.1), lam=lam, flood=b, seed=3).loss(digits_model, tb.Batch(x, y))
    assert float(loss_b.detach()) == pytest.approx(float(2 * b - la.mean() + lam * g), rel=1e-5)


# -- check 4: attack invariants -----------------------------------------------------------------
def _counting(model):
    calls = []
    h = model.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    return calls, h


@pytest.mark.parametrize("loss", ["mm", "mm-prob", "ce"])
def test_seat_attack_stays_in_the_ball_and_box(digits_model, digits_data, loss):
    x, y = digits_data[2][:100], digits_data[3][:100]
    eps = 0.15
    atk = tb.attack("seat", threat=tb.Linf(eps), lam=0.5, loss=loss, seed=0)
    x_adv = atk(digits_model, x, y)
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype
    assert float((x_adv - x).abs().max()) <= eps + 1e-6
    assert float(x_adv.min()) >= 0 and float(x_adv.max()) <= 1
    assert not torch.equal(x_adv, x)
    assert all(p.grad is None for p in digits_model.parameters())
    assert not digits_model.training


def test_seat_attack_is_one_signed_step_with_delta_on_the_vertex_grid(digits_model, digits_data):
    eps = 0.2
    x, y = digits_data[2][:80], digits_data[3][:80]
    # pixels in {0, 1} or [eps, 1 - eps]: the random start is never clipped to a fraction
    x = torch.where(x < eps / 2, 0.0, torch.where(x > 1 - eps / 2, 1.0, x.clamp(eps, 1 - eps)))
    calls, h = _counting(digits_model)
    try:
        with tb.attack_mode(digits_model):
            s = seat_perturb(digits_model, x, y, eps, lam=0.5, generator=_gen(5))
    finally:
        h.remove()
    assert calls == [80, 80]          # one clean pass + one pass at the start: no loop
    assert s.grad_evals == 2
    # up to float rounding of (x + eps) - x
    on_grid = ((s.delta_pre.abs() - eps).abs() < 1e-6) | (s.delta_pre.abs() < 1e-6)
    assert bool(on_grid.all())
    assert torch.equal(s.x_adv, (x + s.delta_pre).clamp(0, 1))
    # the start is the clipped random vertex drawn from the same generator
    d0 = random_vertex(x, eps, _gen(5))
    assert bool((d0.abs() == eps).all())
    assert torch.equal(s.x_start, (x + d0).clamp(0, 1))
    # and the step is exactly clip(start - x + eps * sign(grad), -eps, eps)
    assert torch.allclose(s.delta_pre, (s.x_start - x + eps * s.grad.sign()).clamp(-eps, eps))
    # generic inputs: where the start was not clipped by the box, the grid property holds as well
    x2 = digits_data[2][:80]
    with tb.attack_mode(digits_model):
        s2 = seat_perturb(digits_model, x2, y, eps, lam=0.5, generator=_gen(6))
    free = (s2.x_start - x2).abs() > eps - 1e-6
    dp = s2.delta_pre[free]
    assert bool((((dp.abs() - eps).abs() < 1e-6) | (dp.abs() < 1e-6)).all())


def test_seat_attack_gradient_matches_its_objective(digits_model, digits_data):
    """The step direction is the sign of the gradient of MM + lam * sum |r| at the start."""
    eps, lam = 0.1, 0.5
    x, y = digits_data[2][:30].double(), digits_data[3][:30]
    m = digits_model.double()
    d0 = random_vertex(x, eps, _gen(7))
    s = seat_perturb(m, x, y, eps, lam=lam, start=d0)
    xs = (x + d0).clamp(0, 1).requires_grad_(True)
    logits = m(xs)
    obj = max_margin(logits, y).sum() + lam * linearity_error(m, x, y, xs - x, reduction="sum")
    (gref,) = torch.autograd.grad(obj, xs)
    assert torch.allclose(s.grad, gref, atol=1e-9)
    with tb.attack_mode(m):
        s0 = seat_perturb(m, x, y, eps, lam=0.0, start=d0)
    assert s0.grad_evals == 1


def test_seat_attack_in_evaluate_and_bad_arguments(digits_model, digits_data):
    x, y = digits_data[2][:200], digits_data[3][:200]
    th = tb.Linf(0.2)
    rep = tb.evaluate(digits_model, (x, y), {"seat": tb.attack("seat", threat=th, seed=0),
                                             "pgd": tb.attack("pgd", threat=th, steps=10, seed=0)}, progress=False)
    acc = rep["accuracy"]
    assert acc["pgd"] <= acc["seat"] < acc["clean"]
    with pytest.raises(ValueError, match="lam"):
        tb.attack("seat", threat=th, lam=-1)
    with pytest.raises(ValueError, match="loss"):
        tb.attack("seat", threat=th, loss="kl")
    with pytest.raises(ValueError, match="reduction"):
        tb.attack("seat", threat=th, reduction="none")
    with pytest.raises(ValueError, match="threat"):
        tb.attack("seat", threat=tb.L2(0.5))
    with pytest.raises(ValueError, match="step_size"):
        tb.attack("seat", threat=th, step_size=0)
    with pytest.raises(ValueError, match="threat"):
        tb.defense("seat")
    with pytest.raises(ValueError, match="flood"):
        tb.defense("seat", threat=th, flood=-0.1)


def test_seat_attack_seeded_reproducible(digits_model, digits_data):
    x, y = digits_data[2][:50], digits_data[3][:50]
    atk = tb.attack("seat", threat=tb.Linf(0.1), seed=11)
    assert torch.equal(atk(digits_model, x, y), atk(digits_model, x, y))


# -- check 5: the max-margin loss is negative exactly on correct predictions -----------------
@pytest.mark.parametrize("probs", [False, True])
def test_max_margin_sign(probs):
    g = _gen(4)
    logits = 3 * torch.randn(500, 7, generator=g)
    y = torch.randint(0, 7, (500,), generator=g)
    mm = max_margin(logits, y, probs=probs)
    correct = logits.argmax(1) == y
    assert bool(((mm < 0) == correct).all())
    assert correct.any() and (~correct).any()
    if probs:
        assert float(mm.abs().max()) <= 1
    else:
        assert torch.allclose(mm, tb.losses.cw(logits, y))


# -- check 6: lam = 0, b = 0, CE attack loss is FGSM-AT with a random-vertex start, step eps ------
def test_reduces_to_fgsm_at_with_random_vertex_start(digits_data):
    torch.manual_seed(0)
    x, y = digits_data[0][:64], digits_data[1][:64]
    eps = 0.2
    m1 = tb.models.create("digits-cnn", seed=1)
    m2 = tb.models.create("digits-cnn", seed=1)
    d = SEAT(tb.Linf(eps), lam=0.0, flood=0.0, loss="ce")
    m1.train()
    loss1, logs = d.loss(m1, tb.Batch(x, y, extra={"generator": _gen(9)}))
    loss1.backward()
    assert "lin_err" not in logs      # lam = 0: no clean pass at all
    # standalone FGSM-AT, written out
    g = _gen(9)
    u = torch.rand(x.shape, generator=g)
    start = (x + eps * torch.where(u < 0.5, -1.0, 1.0)).clamp(0, 1).requires_grad_(True)
    m2.eval()
    (grad,) = torch.autograd.grad(F.cross_entropy(m2(start), y), start)
    x_adv = (x + (start.detach() - x + eps * grad.sign()).clamp(-eps, eps)).clamp(0, 1)
    m2.train()
    loss2 = F.cross_entropy(m2(x_adv), y)
    loss2.backward()
    assert float(loss1.detach()) == pytest.approx(float(loss2.detach()), rel=1e-6)
    for p1, p2 in zip(m1.parameters(), m2.parameters(), strict=True):
        assert torch.allclose(p1.grad, p2.grad, rtol=1e-5, atol=1e-7)


def test_shared_clean_pass_matches_the_separate_one(digits_data):
    """Without batch-norm the fused step (3 forwards) gives the loss and gradients of the plain
    attack-then-loss computation (4 forwards)."""
    x, y = digits_data[0][:64], digits_data[1][:64]
    out = []
    for share in (True, False):
        m = tb.models.create("digits-cnn", seed=2)
        m.train()
        d = SEAT(tb.Linf(0.15), lam=0.5, share_clean_pass=share)
        calls, h = _counting(m)
        loss, logs = d.loss(m, tb.Batch(x, y, extra={"generator": _gen(1)}))
        h.remove()
        loss.backward()
        out.append((float(loss.detach()), float(logs["lin_err"]), [p.grad.clone() for p in m.parameters()], len(calls)))
    assert out[0][0] == pytest.approx(out[1][0], rel=1e-5)
    assert out[0][1] == pytest.approx(out[1][1], rel=1e-5)
    for a, b in zip(out[0][2], out[1][2], strict=True):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)
    # the plain path also runs the attack's label check forward (x[:1]) when check=True; the
    # Trainer passes check=False, so it is 4 full passes against 3
    assert out[0][3] == 3 and out[1][3] == 4


def test_double_backprop_changes_gradients_not_the_loss(digits_data):
    x, y = digits_data[0][:64], digits_data[1][:64]
    res = []
    for db in (True, False):
        m = tb.models.create("digits-cnn", seed=3)
        loss, _ = SEAT(tb.Linf(0.2), lam=0.5, double_backprop=db).loss(m, tb.Batch(x, y, extra={"generator": _gen(2)}))
        loss.backward()
        res.append((float(loss.detach()), torch.cat([p.grad.flatten() for p in m.parameters()])))
    assert res[0][0] == pytest.approx(res[1][0], rel=1e-6)
    assert not torch.allclose(res[0][1], res[1][1])


def test_any_attack_drives_the_defense(digits_data):
    x, y = digits_data[0][:64], digits_data[1][:64]
    m = tb.models.create("digits-cnn", seed=4)
    pgd = tb.attack("pgd", threat=tb.Linf(0.1), steps=3, seed=0)
    d = tb.defense("seat", attack=pgd, lam=0.3)
    assert d.attack is pgd
    loss, logs = d.loss(m, tb.Batch(x, y))
    loss.backward()
    assert float(logs["lin_err"]) > 0 and torch.isfinite(loss)
    assert all(p.grad is not None for p in m.parameters())
