"""Unit tests of the ATTA/ATAS defenses (digest section 3.9, checks 1-6, and the ATTA reduction)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from toolbox_atas import ATAS, ATTA, store_bytes_per_example
from torch import nn

import toolbox as tb
from toolbox.train.store import Store

EPS = 0.1


def _data(digits_data, n=300):
    x, y, _, _ = digits_data
    return tb.data.Dataset(x[:n], y[:n], num_classes=10, name="digits-sub")


def _model(seed=0):
    torch.manual_seed(seed)
    return tb.models.create("digits-cnn")


def _trainer(defense, seed=0, **kw):
    kw.setdefault("batch_size", 50)
    return tb.Trainer(_model(seed), defense, optimizer={"name": "sgd", "lr": 0.05, "momentum": 0.9}, seed=seed, **kw)


def _batch(x, y, index, store, epoch=0, gen_seed=0, extra=None):
    g = torch.Generator().manual_seed(gen_seed)
    ex = dict(extra or {})
    ex["generator"] = g
    return tb.Batch(x, y, index, epoch=epoch, step=0, store=store, extra=ex)


# ----------------------------------------------------------------------------------- check 1
def test_step_size_math():
    d = ATAS(eps=EPS, c=0.01, step_max=16 / 255, clamp=None)
    assert d.gamma == pytest.approx(0.01 * 16 / 255)
    v = torch.tensor([0.0, 1e-6, 1e-4, 1e-2, 1.0])
    a = d.alpha(v)
    assert a[0].item() == pytest.approx(16 / 255)                 # v = 0: gamma / c
    assert bool((a[1:] < a[:-1]).all())                             # strictly decreasing in v
    torch.testing.assert_close(a, d.gamma / (d.c + v.sqrt()))      # Eq. 4
    clamped = ATAS(eps=EPS, clamp=(4 / 255, 14 / 255)).alpha(v)
    assert clamped.max().item() == pytest.approx(14 / 255) and clamped.min().item() == pytest.approx(4 / 255)
    # c -> inf with gamma/c fixed: a constant step
    for c in (1e3, 1e6, math.inf):
        big = ATAS(eps=EPS, c=c, step_max=0.05, clamp=None).alpha(v)
        torch.testing.assert_close(big, torch.full_like(v, 0.05), atol=0.05 * 1.0 / c, rtol=0)   # |1 - 1/(1 + sqrt(v)/c)| <= sqrt(v)/c
    assert ATAS(eps=EPS, c=0.5, gamma=0.1).step_max == pytest.approx(0.2)


def test_bad_arguments():
    with pytest.raises(ValueError, match="threat"):
        ATAS()
    with pytest.raises(ValueError, match="beta"):
        ATAS(eps=EPS, beta=1.0)
    with pytest.raises(ValueError, match="clamp"):
        ATAS(eps=EPS, clamp=(0.2, 0.1))
    with pytest.raises(ValueError, match="grad_scale"):
        ATAS(eps=EPS, grad_scale="sum")
    with pytest.raises(ValueError, match="step_max"):
        ATAS(eps=EPS, gamma=0.1, step_max=0.1)
    with pytest.raises(ValueError, match="l-inf"):
        ATTA(threat=tb.L2(0.5))
    with pytest.raises(ValueError, match="step_size"):
        ATTA(eps=EPS, step_size=-1)
    with pytest.raises(ValueError, match="store"):
        ATTA(eps=EPS).loss(_model(), tb.Batch(torch.rand(2, 1, 8, 8), torch.tensor([0, 1])))
    d = tb.defense("atas", threat=tb.Linf(0.3), c=0.2, step_max=0.6, clamp=[0.1, 0.6])
    assert isinstance(d, ATAS) and d.clamp == (0.1, 0.6)


# ----------------------------------------------------------------------------------- check 2
def test_ema_update_only_for_visited_rows(digits_data):
    x, y, _, _ = digits_data
    model = _model().eval()
    store = Store(40)
    d = ATAS(eps=EPS, beta=0.5, warmup_epochs=0, grad_scale="per-example", reset_every=0)
    idx = torch.arange(40)[torch.tensor([3, 7, 11, 20])]
    xb, yb = x[idx], y[idx]
    d0 = (torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1) * EPS
    store.set("atas_delta", torch.arange(40), torch.zeros(40, 1, 8, 8))
    store.set("atas_gen", torch.arange(40), torch.zeros(40, dtype=torch.int64))   # no init draw
    store.set("atas_delta", idx, d0)
    d.loss(model, _batch(xb, yb, idx, store))
    v1 = store.tensor("atas_v").clone()
    g1 = store.tensor("atas_gnorm")[idx].clone()
    assert bool((g1 > 0).all())
    torch.testing.assert_close(v1[idx], (1 - 0.5) * g1.pow(2))      # first visit: (1-beta)||g||^2
    others = torch.ones(40, dtype=torch.bool)
    others[idx] = False
    assert bool((v1[others] == 0).all())                            # untouched rows
    # second visit from the same start (same gradient): (1 - beta^2)||g||^2
    store.set("atas_delta", idx, d0)
    d.loss(model, _batch(xb, yb, idx, store))
    torch.testing.assert_close(store.tensor("atas_gnorm")[idx], g1)
    torch.testing.assert_close(store.tensor("atas_v")[idx], (1 - 0.5**2) * g1.pow(2))
    # a batch of other examples leaves these rows alone
    v2 = store.tensor("atas_v")[idx].clone()
    other = torch.tensor([0, 1, 2])
    d.loss(model, _batch(x[other], y[other], other, store))
    assert torch.equal(store.tensor("atas_v")[idx], v2)
    assert bool((store.tensor("atas_v")[other] > 0).all())


def test_batch_mean_scaling(digits_data):
    """grad_scale='batch-mean' stores ||g_i / B||^2 in v (the official code's convention)."""
    x, y, _, _ = digits_data
    model = _model().eval()
    idx = torch.arange(8)
    sa, sb = Store(8), Store(8)
    ATAS(eps=EPS, warmup_epochs=0, grad_scale="batch-mean").loss(model, _batch(x[idx], y[idx], idx, sa))
    ATAS(eps=EPS, warmup_epochs=0, grad_scale="per-example").loss(model, _batch(x[idx], y[idx], idx, sb))
    torch.testing.assert_close(sa.tensor("atas_v") * 8**2, sb.tensor("atas_v"))


# ----------------------------------------------------------------------------------- check 4
def test_projection_invariants_and_broadcast(digits_data):
    x, y, _, _ = digits_data
    model = _model().eval()
    store = Store(100)
    d = ATAS(eps=EPS, c=1e-3, step_max=3 * EPS, clamp=None, warmup_epochs=0, grad_scale="per-example")
    seen = {}

    def spy(module, inp, out):
        seen.setdefault("inputs", []).append(inp[0].detach())

    h = model.register_forward_hook(spy)
    idx = torch.arange(64)
    d.loss(model, _batch(x[idx], y[idx], idx, store))
    h.remove()
    x_adv = seen["inputs"][1]
    delta = store.tensor("atas_delta")[idx]
    assert float(delta.abs().max()) <= EPS + 1e-6
    assert float(x_adv.min()) >= 0 and float(x_adv.max()) <= 1
    torch.testing.assert_close(x_adv - x[idx], delta)
    steps = store.tensor("atas_step")[idx]
    assert steps.shape == (64,) and float(steps.std()) > 0          # per-example, not one number
    # each example moved from its start by at most its own step (per-example broadcast)
    x0 = seen["inputs"][0]
    moved = (x_adv - x0).abs().flatten(1).max(1).values
    assert bool((moved <= steps + 1e-6).all())


# ----------------------------------------------------------------------------------- check 5
def test_two_forwards_two_backwards(digits_data):
    data = _data(digits_data, 100)
    d = ATAS(eps=EPS, warmup_epochs=0)
    tr = _trainer(d, batch_size=50)
    counts = {"fwd": 0, "bwd": 0}
    first = next(m for m in tr.model.modules() if isinstance(m, nn.Conv2d))
    first.register_forward_hook(lambda *a: counts.__setitem__("fwd", counts["fwd"] + 1))
    first.register_full_backward_hook(lambda *a: counts.__setitem__("bwd", counts["bwd"] + 1))
    tr.fit(data, epochs=1)
    assert tr.step == 2
    assert counts == {"fwd": 4, "bwd": 4}                           # 2 + 2 per batch, 2 batches


# ----------------------------------------------------------------------------------- check 6
def test_step_rank_is_anti_correlated_with_ema(digits_data):
    x, y, _, _ = digits_data
    model = _model().eval()
    store = Store(64)
    d = ATAS(eps=EPS, c=0.5, step_max=0.2, clamp=None, warmup_epochs=0, grad_scale="per-example")
    idx = torch.arange(64)
    d.loss(model, _batch(x[idx], y[idx], idx, store))
    v, a = store.tensor("atas_v"), store.tensor("atas_step")
    rv, ra = v.argsort().argsort().double(), a.argsort().argsort().double()
    spearman = torch.corrcoef(torch.stack([rv, ra]))[0, 1].item()
    assert len(set(v.tolist())) == 64                               # no ties, so the rank test is sharp
    assert spearman == pytest.approx(-1.0, abs=1e-9)
    # with a clamp, the order is kept where it does not saturate
    lo, hi = float(a.quantile(0.25)), float(a.quantile(0.75))
    d2 = ATAS(eps=EPS, c=0.5, step_max=0.2, clamp=(lo, hi), warmup_epochs=0, grad_scale="per-example")
    a2 = d2.alpha(v)
    inside = (a2 > lo) & (a2 < hi)
    assert 0 < int(inside.sum()) < 64
    assert bool((a2[v.argsort()][:-1] >= a2[v.argsort()][1:]).all())


# ------------------------------------------------------------------------------- ATTA reduction
@pytest.mark.parametrize("c", [math.inf, 1e9])
def test_atas_reduces_to_atta(digits_data, c):
    """c -> inf with gamma/c fixed: ATAS trains exactly like ATTA with step gamma/c."""
    data = _data(digits_data, 200)
    a = _trainer(ATTA(eps=EPS, step_size=0.07, reset_every=2))
    b = _trainer(ATAS(eps=EPS, c=c, step_max=0.07, clamp=None, warmup_epochs=0, reset_every=2))
    ha, hb = a.fit(data, epochs=3), b.fit(data, epochs=3)
    for (na, pa), (nb, pb) in zip(a.model.state_dict().items(), b.model.state_dict().items(), strict=True):
        assert na == nb
        if c == math.inf:
            assert torch.equal(pa, pb), na
        else:
            torch.testing.assert_close(pa, pb, rtol=1e-4, atol=1e-5)
    assert torch.equal(a.store.tensor("atta_delta"), b.store.tensor("atas_delta")) or c != math.inf
    assert ha["train_loss"].tolist() == pytest.approx(hb["train_loss"].tolist(), rel=1e-4)
    # and a finite c really differs
    f = _trainer(ATAS(eps=EPS, c=1e-3, step_max=0.07, clamp=None, warmup_epochs=0, reset_every=2))
    f.fit(data, epochs=2)
    assert not torch.equal(f.store.tensor("atas_delta"), b.store.tensor("atas_delta"))


# ------------------------------------------------------------------------------ warm-up, clamp
def test_warmup_constant_step_and_no_ema(digits_data):
    data = _data(digits_data, 100)
    d = ATAS(eps=EPS, c=0.01, step_max=0.3, clamp=(0.02, 0.25), warmup_epochs=2, grad_scale="per-example")
    tr = _trainer(d)
    h = tr.fit(data, epochs=2)
    assert "atas_v" not in tr.store or bool((tr.store.tensor("atas_v") == 0).all())
    assert h["train_step"].tolist() == pytest.approx([EPS, EPS])
    assert bool((tr.store.tensor("atas_step") == EPS).all())
    # after warm-up: adaptive and clamped
    tr2 = _trainer(ATAS(eps=EPS, c=0.01, step_max=0.3, clamp=(0.02, 0.25), warmup_epochs=1,
                        grad_scale="per-example"))
    h2 = tr2.fit(data, epochs=2)
    s = tr2.store.tensor("atas_step")
    assert h2["train_step"][0] == pytest.approx(EPS)
    assert float(s.min()) >= 0.02 - 1e-7 and float(s.max()) <= 0.25 + 1e-7
    assert float(s.std()) > 0
    assert bool((tr2.store.tensor("atas_v") > 0).all())
    assert 0 <= h2["train_clamped"][1] <= 1


# ------------------------------------------------------------------------------------- resets
def test_reset_schedule_and_redraw(digits_data):
    d = ATTA(eps=EPS, reset_every=2)
    # 1-based epochs 2, 4 open a new generation; not the last (6th) epoch
    assert [d.generation(e, 6) for e in range(6)] == [0, 1, 1, 2, 2, 2]
    assert [d.generation(e, None) for e in range(6)] == [0, 1, 1, 2, 2, 3]
    assert ATTA(eps=EPS, reset_every=0).generation(5, 6) == 0
    x, y, _, _ = digits_data
    model = _model().eval()
    store = Store(16)
    idx = torch.arange(16)
    d.loss(model, _batch(x[idx], y[idx], idx, store, epoch=0, gen_seed=1))
    after0 = store.tensor("atta_delta").clone()
    # the stored delta is the start of the next visit in the same generation (epoch 0 -> still 0)
    seen = []
    h = model.register_forward_hook(lambda m, i, o: seen.append(i[0].detach()))
    d.loss(model, _batch(x[idx], y[idx], idx, store, epoch=0, gen_seed=2))
    torch.testing.assert_close(seen[0], (x[idx] + after0).clamp(0, 1))
    # epoch 1 is a reset epoch: the start is a fresh U(-eps, eps) draw, not the stored delta
    before = store.tensor("atta_delta").clone()
    seen.clear()
    d.loss(model, _batch(x[idx], y[idx], idx, store, epoch=1, gen_seed=3))
    h.remove()
    start = seen[0] - x[idx]
    assert not torch.allclose(start, (x[idx] + before).clamp(0, 1) - x[idx])
    assert bool((store.tensor("atta_gen") == 1).all())


def test_init_is_uniform_in_ball(digits_data):
    x, y, _, _ = digits_data
    model = _model().eval()
    store = Store(500)
    d = ATTA(eps=EPS, step_size=1e-9)        # a negligible step: the stored delta ~ the init
    idx = torch.arange(500)
    xm = torch.full_like(x[idx], 0.5)        # mid-grey images: no clipping by the box
    d.loss(model, _batch(xm, y[idx], idx, store))
    dl = store.tensor("atta_delta")
    assert float(dl.abs().max()) <= EPS + 1e-6
    assert dl.mean().abs().item() < 0.01 * EPS * 10
    assert dl.std().item() == pytest.approx(EPS / math.sqrt(3), rel=0.03)   # U(-eps, eps)


# ------------------------------------------------------------------------- state bookkeeping
def test_store_matches_per_example_recomputation_under_shuffling(digits_data):
    """After an epoch with shuffled batches, delta[i] equals the perturbation recomputed for
    example i alone from its initial delta, with the model frozen (lr 0)."""
    data = _data(digits_data, 120)
    d = ATAS(eps=EPS, c=0.05, step_max=0.2, clamp=None, warmup_epochs=0, grad_scale="per-example",
             reset_every=0)
    tr = tb.Trainer(_model(), d, optimizer={"name": "sgd", "lr": 0.0}, batch_size=40, seed=3)
    tr.fit(data, epochs=1)
    delta1 = tr.store.tensor("atas_delta").clone()
    v1 = tr.store.tensor("atas_v").clone()
    tr2 = tb.Trainer(_model(), ATAS(eps=EPS, c=0.05, step_max=0.2, clamp=None, warmup_epochs=0,
                                    grad_scale="per-example", reset_every=0),
                     optimizer={"name": "sgd", "lr": 0.0}, batch_size=40, seed=3)
    tr2.fit(data, epochs=2)
    delta2, v2 = tr2.store.tensor("atas_delta"), tr2.store.tensor("atas_v")
    # the epoch-2 state, example by example, from the epoch-1 state
    model = _model().eval()
    xs, ys = data.x.float(), data.y
    for i in range(len(data)):
        x0 = (xs[i:i + 1] + delta1[i:i + 1]).clamp(0, 1).requires_grad_(True)
        (g,) = torch.autograd.grad(F.cross_entropy(model(x0), ys[i:i + 1], reduction="sum"), x0)
        v = 0.5 * v1[i] + 0.5 * g.norm() ** 2
        a = 0.2 / (1 + v.sqrt() / 0.05)
        xa = (xs[i:i + 1] + (x0.detach() + a * g.sign() - xs[i:i + 1]).clamp(-EPS, EPS)).clamp(0, 1)
        torch.testing.assert_close(v2[i], v, rtol=1e-4, atol=1e-9)
        torch.testing.assert_close(delta2[i:i + 1], xa - xs[i:i + 1], rtol=0, atol=2e-6)


# --------------------------------------------------------------------- augmentation round trip
def test_crop_flip_round_trip_and_write_back(digits_data):
    x, y, _, _ = digits_data
    g = torch.Generator().manual_seed(0)
    t = tb.data.RandomCropFlip(padding=2)
    n = 32
    stored = torch.randn(n, 1, 12, 12, generator=g)
    _, _, extra = t(x[:n], y[:n], g)
    assert bool(extra["flip"].any()) and not bool(extra["flip"].all())
    crop = tb.data.RandomCropFlip.crop(stored, extra)
    back = tb.data.RandomCropFlip.uncrop(crop, extra)
    window = tb.data.RandomCropFlip.uncrop(torch.ones_like(crop), extra) > 0
    assert int(window.sum()) == n * 8 * 8
    torch.testing.assert_close(back[window], stored[window])         # identity on the window

    # the defense: stored on the padded frame, new perturbation written into the window only
    model = _model().eval()
    store = Store(n)
    idx = torch.arange(n)
    xa, _, ex = t(x[:n], y[:n], torch.Generator().manual_seed(5))
    d = ATAS(eps=EPS, warmup_epochs=0, grad_scale="per-example", c=0.05, step_max=0.2, clamp=None)
    seen = []
    h = model.register_forward_hook(lambda m, i, o: seen.append(i[0].detach()))
    d.loss(model, _batch(xa, y[:n], idx, store, extra=ex))
    before = store.tensor("atas_delta").clone()
    assert before.shape == (n, 1, 12, 12)
    _, _, ex2 = t(x[:n], y[:n], torch.Generator().manual_seed(6))
    xb = tb.data.RandomCropFlip.apply(x[:n], ex2)
    seen.clear()
    d.loss(model, _batch(xb, y[:n], idx, store, extra=ex2))
    h.remove()
    # the start point was the stored delta seen through this batch's crop+flip
    torch.testing.assert_close(seen[0], (xb + tb.data.RandomCropFlip.crop(before, ex2)).clamp(0, 1))
    after = store.tensor("atas_delta")
    win2 = tb.data.RandomCropFlip.uncrop(torch.ones_like(xb), ex2) > 0
    assert torch.equal(after[~win2], before[~win2])                 # outside the window: unchanged
    x_adv = seen[1]
    torch.testing.assert_close(tb.data.RandomCropFlip.crop(after, ex2), x_adv - xb)


# -------------------------------------------------------------------- trainer + augmentation
def test_trainer_with_crop_flip_transform(digits_data):
    data = _data(digits_data, 100)
    tr = _trainer(ATAS(eps=EPS, warmup_epochs=1, c=0.05, step_max=0.2, clamp=None, grad_scale="per-example"),
                  transform=tb.data.RandomCropFlip(padding=2))
    h = tr.fit(data, epochs=2)
    delta = tr.store.tensor("atas_delta")
    assert delta.shape == (100, 1, 12, 12)
    assert float(delta.abs().max()) <= EPS + 1e-6
    assert bool(torch.isfinite(torch.tensor(h["train_loss"].tolist())).all())
    assert store_bytes_per_example(tr.store, "atas_") == 12 * 12 * 4 + 8 + 4 + 4 + 4
