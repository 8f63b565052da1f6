"""Wasserstein PGD with the growing-radius schedule: schedule, per-example radii, ball
membership, warm starts, curves and plots (checks 5.5 item 9)."""

from __future__ import annotations

import math

import pytest
import torch
from toolbox_wasserstein import (
    RadiusSearch,
    Wasserstein,
    WassersteinPGD,
    accuracy_vs_eps,
    perturbation_grid,
    plot_accuracy_vs_eps,
    projected_sinkhorn,
)
from toolbox_wasserstein.attack import _GrowingRule

import toolbox as tb


def _search(model, x, y, **kw):
    kw.setdefault("steps", 60)
    atk = WassersteinPGD(Wasserstein(kw.pop("cap", 1.0)), eps0=kw.pop("eps0", 0.02),
                         growth=kw.pop("growth", 1.25), every=kw.pop("every", 4), **kw)
    return atk, atk.search(model, x, y)


def test_schedule_is_exact_and_capped():
    th = Wasserstein(0.5)
    rule = _GrowingRule(th, 3, torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64), 0.1, 1.5, 4,
                        False, torch.device("cpu"))
    for t in range(20):
        want = torch.tensor([min(e * 1.5 ** (t // 4), 0.5) for e in (0.1, 0.2, 0.3)], dtype=torch.float64)
        assert torch.allclose(rule.radius(t), want)


def test_search_radii_and_membership(digits_data, digits_model):
    x, y = digits_data[2][:40], digits_data[3][:40]
    atk, r = _search(digits_model, x, y)
    with torch.no_grad():
        clean_ok = digits_model(x).argmax(1) == y
        adv_pred = digits_model(r.x_adv).argmax(1)
    assert r.x_adv.shape == x.shape and r.x_adv.dtype == x.dtype
    assert (r.x_adv >= 0).all() and (r.x_adv <= 1).all()
    # misclassified already: radius 0; broken ones are misclassified, the others are not
    assert (r.eps[~clean_ok] == 0).all()
    assert torch.equal(r.success, adv_pred != y)
    assert torch.equal(r.success, torch.isfinite(r.eps))
    assert r.success.float().mean() > 0.8  # digits models break easily at radius <= 1
    # each found radius is one of the schedule's values, and the example lies in that ball
    sched = torch.tensor([0.0] + [min(0.02 * 1.25 ** i, 1.0) for i in range(15)], dtype=torch.float64)
    fin = r.eps[torch.isfinite(r.eps)]
    assert ((fin.view(-1, 1) - sched.view(1, -1)).abs().min(1).values < 1e-9).all()
    th = Wasserstein(1.0)
    ok = r.success & (r.eps > 0)
    assert th.with_eps(r.eps[ok].float()).contains(r.x_adv[ok], x[ok]).all()
    # the radii are not trivially the largest: many examples break well inside the cap
    assert (r.eps[ok] < 0.3).float().mean() > 0.5
    # accuracy at radius e is the fraction whose radius exceeds e (non-increasing in e)
    assert r.max_radius == pytest.approx(min(0.02 * 1.25 ** 14, 1.0))
    acc = r.accuracy([0.0, 0.05, 0.1, 0.5, 1.0])
    assert acc == sorted(acc, reverse=True) and acc[0] == pytest.approx(float(clean_ok.float().mean()))


@pytest.mark.slow
def test_breaking_radius_is_tight(digits_data, digits_model):
    """An example first broken at schedule radius ``eps_i = 0.02 * 1.25**i`` survives the
    same attack stopped before that radius (``4 i`` steps, all at smaller radii): the
    recorded radius is the first one that broke it, not a later one."""
    x, y = digits_data[2][:24], digits_data[3][:24]
    _, r = _search(digits_model, x, y, steps=40)
    k = (r.eps > 0.03) & torch.isfinite(r.eps)
    assert k.sum() >= 5
    level = torch.round(torch.log(r.eps[k] / 0.02) / math.log(1.25)).long()
    xs, ys = x[k], y[k]
    surv = []
    for i in level.unique().tolist():
        rows = level == i
        atk = WassersteinPGD(Wasserstein(1.0), steps=4 * i, eps0=0.02, growth=1.25, every=4)
        with torch.no_grad():
            xa = atk(digits_model, xs[rows], ys[rows])
            surv.append(digits_model(xa).argmax(1) == ys[rows])
    surv = torch.cat(surv)
    # the same iterates up to Sinkhorn's batch-dependent stopping: nearly all survive
    assert surv.float().mean() >= 0.8, surv


@pytest.mark.slow
def test_warm_start_matches_cold(digits_data, digits_model):
    x, y = digits_data[2][:20], digits_data[3][:20]
    a1, warm = _search(digits_model, x, y, steps=24)
    a2, cold = _search(digits_model, x, y, steps=24, warm_start=False, sinkhorn_iters=100)
    assert len(a1.last_sweeps) > 0 and max(a1.last_sweeps) <= 20
    grid = [0.02, 0.05, 0.1, 0.2]
    for aw, ac in zip(warm.accuracy(grid), cold.accuracy(grid), strict=True):
        assert abs(aw - ac) <= 0.2


def test_keep_best_false_and_pgd_registry(digits_data, digits_model):
    x, y = digits_data[2][:16], digits_data[3][:16]
    atk = tb.attack("wasserstein-pgd", threat=tb.threat("wasserstein", eps=0.05), steps=5, eps0=None,
                    keep_best=False)
    assert isinstance(atk, WassersteinPGD)
    xa = atk(digits_model, x, y)
    assert Wasserstein(0.05).contains(xa, x).all()
    r = atk.search(digits_model, x, y)
    with torch.no_grad():
        assert torch.equal(r.success, digits_model(r.x_adv).argmax(1) != y)
    # a fixed radius (eps0=None) records that radius for every broken example after step 0
    assert ((r.eps[r.success] == 0.05) | (r.eps[r.success] == 0)).all()


def test_projection_pre_clamp_in_ball_along_attack(digits_data):
    """Attack invariant: every pre-clamp projected iterate has exact (LP) cost <= eps_t."""
    from toolbox_wasserstein import wasserstein_lp

    x = digits_data[2][:3].double()
    m = x.flatten(1).sum(1).view(-1, 1, 1, 1)
    g = torch.Generator().manual_seed(3)
    xa, state = x.clone(), {}
    for t in range(4):
        eps_t = 0.05 * 1.5 ** t
        w = xa + 0.1 * torch.randn(x.shape, generator=g, dtype=torch.float64).sign()
        z, cost = projected_sinkhorn(x / m, w / m, eps_t, reg=1e-3, iters=15, state=state)
        assert (cost <= eps_t * (1 + 1e-9)).all()
        for i in range(3):
            assert wasserstein_lp(x[i] / m[i], z[i]) <= eps_t * (1 + 1e-6)
        xa = (z * m).clamp(0, 1)


def test_curve_and_plots(tmp_path):
    r = torch.tensor([0.0, 0.1, 0.1, 0.5, math.inf], dtype=torch.float64)
    df = accuracy_vs_eps(r)
    assert list(df["eps"]) == [0.0, 0.1, 0.5]
    assert list(df["accuracy"]) == pytest.approx([0.8, 0.4, 0.2])
    assert list(accuracy_vs_eps(r, [0.05, 1.0])["accuracy"]) == pytest.approx([0.8, 0.2])
    fig = plot_accuracy_vs_eps({"a": r, "b": RadiusSearch(r, r / 2, r < 1, max_radius=0.2)},
                               path=tmp_path / "curve.png")
    assert len(fig.axes[0].lines) == 2 and (tmp_path / "curve.png").stat().st_size > 1000
    assert max(fig.axes[0].lines[1].get_xdata()) == pytest.approx(0.2)  # stops at max_radius
    x = torch.rand(4, 1, 8, 8)
    fig = perturbation_grid(x, (x + 0.1).clamp(0, 1), titles=["a", "b"], n=3, path=tmp_path / "h.png")
    assert (tmp_path / "h.png").stat().st_size > 1000 and len(fig.axes) == 10
    with pytest.raises(ValueError, match="found_eps"):
        accuracy_vs_eps([0.1])
    with pytest.raises(ValueError, match="x_adv"):
        perturbation_grid(x, x[:2])


def test_argument_checks():
    with pytest.raises(ValueError, match="threat must be a Wasserstein"):
        WassersteinPGD(tb.Linf(0.1))
    with pytest.raises(ValueError, match="growth"):
        WassersteinPGD(Wasserstein(1.0), growth=0.5)
    with pytest.raises(ValueError, match="every"):
        WassersteinPGD(Wasserstein(1.0), every=0)
    with pytest.raises(ValueError, match="eps0"):
        WassersteinPGD(Wasserstein(1.0), eps0=-1.0)
    with pytest.raises(ValueError, match="sinkhorn_iters"):
        WassersteinPGD(Wasserstein(1.0), sinkhorn_iters=0)
    with pytest.raises(ValueError, match="state"):
        projected_sinkhorn(torch.ones(1, 1, 4, 4) / 16, torch.ones(1, 1, 4, 4) / 16, 0.1, state=[])
