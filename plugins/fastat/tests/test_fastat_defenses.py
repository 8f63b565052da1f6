"""Defenses of the fastat plugin: registration, the paper-exact FGSM-RS step, R+FGSM, Free's
replay mechanics, TRADES' loss, mixup and cutout (digest §9, items 5, 6, 8, 9, 10)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from toolbox_fastat import (
    RFGSM,
    Free,
    InsideCutout,
    TradesKL,
    cutout,
    free_epochs,
    mixed_ce,
    trades_loss,
    with_mixed_loss,
)
from torch import nn

import toolbox as tb
from toolbox.defense import Batch
from toolbox.train import Callback

torch.set_num_threads(1)

EPS = 0.3


def tiny_model(seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    m = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return m


def digits_ds(digits_data, n: int | None = None) -> tb.data.Dataset:
    x, y, _, _ = digits_data
    if n is not None:
        x, y = x[:n], y[:n]
    return tb.data.Dataset(x, y, num_classes=10, name="digits")


# ------------------------------------------------------------------------------ registration
def test_registered_and_any_attack_drives_them(digits_data, digits_model):
    for name in ("fgsm-rs", "fgsm-zero", "rfgsm", "free", "pgd-at", "trades"):
        assert name in tb.names("defense")
    assert {"rfgsm", "trades-kl"} <= set(tb.names("attack"))
    assert "robust-early-stopping" in tb.names("callback") and "robust-error-tracker" in tb.names("callback")
    x, y = digits_data[2][:32], digits_data[3][:32]
    apgd = tb.attack("apgd-ce", threat=tb.Linf(EPS), steps=5)
    for name in ("fgsm-rs", "fgsm-zero", "rfgsm", "pgd-at", "trades"):
        d = tb.defense(name, attack=apgd)
        assert d.attack is apgd
        model = copy.deepcopy(digits_model).train()
        loss, logs = d.loss(model, Batch(x, y, torch.arange(32)))
        assert loss.dim() == 0 and torch.isfinite(loss) and "loss" in logs
        loss.backward()
        assert all(p.grad is not None for p in model.parameters())
    # by name + threat, and by dict
    d = tb.defense("pgd-at", attack={"name": "apgd-ce", "steps": 3}, threat=tb.Linf(EPS))
    assert d.attack.name == "apgd" and d.attack.steps == 3
    with pytest.raises(ValueError, match="either attack="):
        tb.defense("fgsm-rs", attack=apgd, step_size=0.1)
    with pytest.raises(ValueError, match="threat="):
        tb.defense("pgd-at")
    with pytest.raises(ValueError, match="mixup"):
        tb.defense("fgsm-rs", threat=tb.Linf(EPS), mixup=-1.0)
    with pytest.raises(ValueError, match="cutout"):
        tb.defense("fgsm-rs", threat=tb.Linf(EPS), cutout=0)
    with pytest.raises(ValueError, match="replays"):
        tb.defense("free", threat=tb.Linf(EPS), replays=0)
    with pytest.raises(ValueError, match="beta"):
        tb.defense("trades", threat=tb.Linf(EPS), beta=-1)


def test_defaults_follow_the_paper():
    d = tb.defense("fgsm-rs", threat=tb.Linf(EPS))
    assert d.attack.step_size == pytest.approx(1.25 * EPS)          # alpha = 1.25 eps = 0.375
    assert d.attack.random_start and not d.attack.clamp_start
    assert tb.defense("fgsm-zero", threat=tb.Linf(EPS)).attack.step_size == pytest.approx(EPS)
    r = tb.defense("rfgsm", threat=tb.Linf(EPS)).attack
    assert isinstance(r, RFGSM) and r.init == "hypercube" and r.step_size is None and r.init_radius is None
    p = tb.defense("pgd-at", threat=tb.Linf(EPS), steps=40, step_size=0.01).attack
    assert (p.steps, p.step_size, p.keep_best) == (40, 0.01, False)
    assert isinstance(tb.defense("trades", threat=tb.Linf(EPS)).attack, TradesKL)


# ------------------------------------------------------------------------------ FGSM-RS order
def test_fgsm_rs_is_the_paper_exact_step(digits_data, digits_model):
    """delta ~ U(-eps, eps) NOT clamped; grad at x + delta; clip to [-eps, eps]; then to [-x, 1-x]."""
    x, y = digits_data[2][:64], digits_data[3][:64]
    alpha = 0.375
    d = tb.defense("fgsm-rs", threat=tb.Linf(EPS), step_size=alpha)
    model = copy.deepcopy(digits_model).eval()
    got = d.run_attack(model, Batch(x, y, extra={"generator": torch.Generator().manual_seed(3)}), x, y, None, 1.0)

    g = torch.Generator().manual_seed(3)
    delta = (2 * torch.rand(x.shape, generator=g) - 1) * EPS
    assert ((x + delta) < 0).any()                       # the start leaves the box: not clamped
    delta.requires_grad_(True)
    grad, = torch.autograd.grad(F.cross_entropy(model(x + delta), y, reduction="sum"), delta)
    delta = (delta.detach() + alpha * grad.sign()).clamp(-EPS, EPS)
    delta = torch.max(torch.min(delta, 1 - x), -x)
    assert torch.allclose(got, x + delta, atol=1e-6)

    # the box-clamped start (a CO trigger) is a different step
    dc = tb.defense("fgsm-rs", threat=tb.Linf(EPS), step_size=alpha, clamp_start=True)
    other = dc.run_attack(model, Batch(x, y, extra={"generator": torch.Generator().manual_seed(3)}), x, y, None, 1.0)
    assert not torch.allclose(other, got)
    assert bool(tb.Linf(EPS).contains(other, x).all()) and bool(tb.Linf(EPS).contains(got, x).all())


def test_rfgsm_hypercube_start_and_ablation_inits(digits_data, digits_model):
    x, y = digits_data[2][:64], digits_data[3][:64]
    atk = RFGSM(tb.Linf(EPS))
    g = torch.Generator().manual_seed(0)
    x0 = atk.start(x, g)
    assert torch.allclose((x0 - x).abs(), torch.full_like(x, EPS / 2))       # corners of (eps/2)-cube
    u = RFGSM(tb.Linf(EPS), init="uniform", init_radius=EPS).start(x, torch.Generator().manual_seed(0))
    dev = (u - x).abs()
    assert dev.max() <= EPS + 1e-6 and dev.std() > 0.05                         # spread over the ball
    assert torch.equal(RFGSM(tb.Linf(EPS), init="zero").start(x), x)
    out = atk(digits_model, x, y, generator=torch.Generator().manual_seed(0))
    assert bool(tb.Linf(EPS).contains(out, x).all())
    # start eps/2 + step eps/2 reaches at most eps; from the zero start one step of eps/2 is exact
    z = RFGSM(tb.Linf(EPS), init="zero")(digits_model, x, y)
    assert (z - x).abs().max() <= EPS / 2 + 1e-6
    with pytest.raises(ValueError, match="hypercube"):
        RFGSM(tb.L2(1.0))
    with pytest.raises(ValueError, match="init"):
        RFGSM(tb.Linf(EPS), init="gauss")


# ------------------------------------------------------------------------------ TRADES
def test_trades_beta0_is_ce_and_kl_zero_at_x(digits_data, digits_model):
    x, y = digits_data[2][:64], digits_data[3][:64]
    model = copy.deepcopy(digits_model).eval()
    x_adv = TradesKL(tb.Linf(EPS), steps=5)(model, x, y, generator=torch.Generator().manual_seed(0))
    assert bool(tb.Linf(EPS).contains(x_adv, x).all())
    loss, ce, kl, _ = trades_loss(model, x, x_adv, y, beta=0.0)
    assert torch.allclose(loss, F.cross_entropy(model(x), y)) and torch.allclose(loss, ce)
    assert kl > 0                                    # the maximiser found a disagreement
    loss_x, ce_x, kl_x, _ = trades_loss(model, x, x.clone(), y, beta=6.0)
    assert abs(kl_x.item()) < 1e-6 and torch.allclose(loss_x, ce_x, atol=1e-6)
    # the KL maximiser increases the KL over its random start
    start = TradesKL(tb.Linf(EPS), steps=0)(model, x, y, generator=torch.Generator().manual_seed(0))
    assert trades_loss(model, x, start, y, 1.0)[2] < kl
    # the defense's loss is CE + beta KL at its own x_adv
    d = tb.defense("trades", threat=tb.Linf(EPS), beta=2.0, steps=3)
    out, logs = d.loss(model, Batch(x, y, extra={"generator": torch.Generator().manual_seed(1)}))
    assert out.item() == pytest.approx(float(logs["clean_loss"]) + 2.0 * float(logs["kl"]), rel=1e-5)


# ------------------------------------------------------------------------------ mixup / cutout
def test_mixup_lambda_one_is_plain(digits_data, digits_model):
    x, y = digits_data[2][:64], digits_data[3][:64]
    y2 = y.roll(1)
    pgd = tb.attack("pgd", threat=tb.Linf(EPS), steps=5, step_size=0.1)
    plain = pgd(digits_model, x, y, generator=torch.Generator().manual_seed(0))
    mixed = with_mixed_loss(pgd, y2, 1.0)(digits_model, x, y, generator=torch.Generator().manual_seed(0))
    assert torch.equal(plain, mixed)
    # lam = 0 attacks the second labels (last iterate: "success" is judged against y)
    pgd = tb.attack("pgd", threat=tb.Linf(EPS), steps=5, step_size=0.1, keep_best=False)
    other = pgd(digits_model, x, y2, generator=torch.Generator().manual_seed(0))
    flipped = with_mixed_loss(pgd, y2, 0.0)(digits_model, x, y, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(other, flipped)
    logits = digits_model(x)
    assert torch.equal(mixed_ce(logits, y, y2, 1.0), F.cross_entropy(logits, y, reduction="none"))
    # the same through a defense, with the labels a Mixup batch transform leaves in batch.extra
    d = tb.defense("pgd-at", attack=pgd)
    model = copy.deepcopy(digits_model)
    a, _ = d.loss(model, Batch(x, y, extra={"generator": torch.Generator().manual_seed(0)}))
    b, _ = d.loss(model, Batch(x, y, extra={"generator": torch.Generator().manual_seed(0), "y2": y2, "lam": 1.0}))
    assert torch.equal(a, b)
    c, _ = d.loss(model, Batch(x, y, extra={"generator": torch.Generator().manual_seed(0), "y2": y2, "lam": 0.3}))
    assert not torch.equal(a, c)
    with pytest.raises(ValueError, match="early_stop"):
        with_mixed_loss(tb.attack("apgd-ce", threat=tb.Linf(EPS)), y2, 0.5)
    with pytest.raises(ValueError, match="already mixed"):
        tb.defense("pgd-at", attack=pgd, mixup=1.0).prepare(Batch(x, y, extra={"y2": y2, "lam": 0.5}))


def test_mixup_option_mixes_inputs_and_labels(digits_data):
    x, y = digits_data[2][:64], digits_data[3][:64]
    d = tb.defense("fgsm-rs", threat=tb.Linf(EPS), mixup=1.0)
    xm, ym, y2, lam = d.prepare(Batch(x, y, extra={"generator": torch.Generator().manual_seed(0)}))
    assert torch.equal(ym, y) and y2 is not None and 0 < lam < 1
    # every mixed image is lam x_i + (1 - lam) x_j for a partner j whose label is y2_i
    rest = (xm - lam * x).flatten(1)                                   # (N, D)
    dist = (rest[:, None, :] - (1 - lam) * x.flatten(1)[None]).abs().amax(2)   # (N, N)
    match = dist < 1e-5
    assert bool(match.any(1).all())
    assert all(bool((y[match[i]] == y2[i]).any()) for i in range(64))
    partners = match.float().argmax(1)
    assert len(set(partners.tolist())) > 32                          # a permutation, not one image


@pytest.mark.parametrize("size", [1, 3, 8])
def test_cutout_zeroes_exactly_LxL_inside(size):
    x = torch.rand(200, 3, 8, 8) * 0.9 + 0.1          # no zeros to start with
    g = torch.Generator().manual_seed(0)
    out, corners = cutout(x, size, g)
    zero = out == 0
    assert torch.equal(zero.sum(dim=(2, 3)), torch.full((200, 3), size * size))   # per channel
    assert bool((corners >= 0).all()) and bool((corners <= 8 - size).all())
    for i in range(200):
        r, c = corners[i].tolist()
        assert bool(zero[i, :, r:r + size, c:c + size].all())
        assert torch.equal(out[i][~zero[i]], x[i][~zero[i]])
    # placement covers the whole image (fully inside, uniformly placed)
    if size == 3:
        assert set(corners[:, 0].tolist()) == set(range(6))
    with pytest.raises(ValueError, match="size"):
        cutout(x, 9)
    xt, yt, extra = InsideCutout(size)(x, torch.zeros(200, dtype=torch.long), g)
    assert torch.equal((xt == 0).sum(dim=(2, 3)), torch.full((200, 3), size * size))
    assert extra["cutout_corners"].shape == (200, 2)


def test_cutout_option_applies_before_the_attack(digits_data, digits_model):
    x, y = digits_data[2][:32], digits_data[3][:32] + 0
    d = tb.defense("pgd-at", threat=tb.Linf(EPS), steps=2, cutout=4)
    xc, _, _, _ = d.prepare(Batch(x, y, extra={"generator": torch.Generator().manual_seed(0)}))
    assert bool(((xc == 0) & (x > 0)).any()) and bool((xc <= x).all())
    assert int((xc == 0).sum()) >= 32 * 16


# ------------------------------------------------------------------------------ Free
class Record(Callback):
    def __init__(self):
        self.indices, self.lrs = [], []

    def on_batch_end(self, trainer, batch, logs):
        self.indices.append(batch.index.clone())


def test_free_matches_manual_replays(digits_data):
    """m = 2 replays on one batch equal two hand-written SGD steps, each taking the gradient at
    the pre-update delta; delta is then carried on."""
    ds = digits_ds(digits_data, 50)
    model = tiny_model(0)
    ref = copy.deepcopy(model)
    lr, m = 0.5, 2
    d = Free(tb.Linf(EPS), replays=m)
    rec = Record()
    trainer = tb.Trainer(model, d, optimizer=torch.optim.SGD(model.parameters(), lr=lr), batch_size=50,
                         callbacks=[rec])
    trainer.fit(ds, epochs=1)
    idx = rec.indices[0]
    pos = {int(v): i for i, v in enumerate(ds.indices.tolist())}
    x = ds.x[[pos[int(i)] for i in idx]]
    y = ds.y[[pos[int(i)] for i in idx]]
    delta = torch.zeros_like(x)
    for _ in range(m):
        xa = (x + delta).requires_grad_(True)
        loss = F.cross_entropy(ref(xa), y)
        ref.zero_grad()
        loss.backward()
        with torch.no_grad():
            for p in ref.parameters():
                p -= lr * p.grad
            delta = (torch.clamp(xa + EPS * xa.grad.sign(), 0, 1) - x).clamp(-EPS, EPS)
            delta = torch.clamp(x + delta, 0, 1) - x
    for a, b in zip(model.parameters(), ref.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-5)
    assert d.optimizer_steps == m
    state = d.state_dict()                              # flushes the last replay's delta update
    assert torch.allclose(state["delta"], delta, atol=1e-6)


def test_free_step_count_partial_batches_and_schedule(digits_data):
    """Optimizer steps = m x batches x ceil(T/m); the buffer has the batch shape and a partial
    last batch uses its first rows; the LR schedule is evaluated per replay."""
    ds = digits_ds(digits_data, 230)                    # batches of 100, 100, 30
    m, T = 3, 4
    passes = free_epochs(T, m)
    assert passes == 2 and free_epochs(8, 8) == 1 and free_epochs(96, 8) == 12
    model = tiny_model(1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    lrs: list[float] = []
    step = opt.step

    def counting_step(*a, **k):
        lrs.append(opt.param_groups[0]["lr"])
        return step(*a, **k)

    opt.step = counting_step
    d = tb.defense("free", threat=tb.Linf(EPS), replays=m)
    trainer = tb.Trainer(model, d, optimizer=opt, batch_size=100,
                         lr_schedule={"kind": "cyclic", "peak": 1e-2, "peak_at": 0.5})
    hist = trainer.fit(ds, epochs=passes)
    batches = 3
    assert len(lrs) == m * batches * passes == d.optimizer_steps
    assert trainer.step == batches * passes
    assert all(int(s["step"]) == m * batches * passes for s in opt.state.values())   # Adam's own count
    assert d.delta.shape == (100, 1, 8, 8)
    sched = trainer.lr_schedule
    want = [sched((b + (r + 1) / m) / batches) for b in range(batches * passes) for r in range(m)]
    assert lrs == pytest.approx(want)
    assert max(lrs) == pytest.approx(1e-2) and lrs[-1] == pytest.approx(0.0)
    assert len(hist) == passes and "train_adv_acc" in hist
    # delta stays inside the ball and carries over: not reset to zero between batches
    assert d.delta.abs().max() <= EPS + 1e-6 and d.delta.abs().max() > 0.5 * EPS


def test_free_resume_keeps_delta(digits_data, tmp_path):
    d = tb.defense("free", threat=tb.Linf(EPS), replays=2)
    t = tb.Trainer(tiny_model(2), d, batch_size=100)
    t.fit(digits_ds(digits_data, 200), epochs=1)
    path = t.save_checkpoint(tmp_path / "c.pt")
    d2 = tb.defense("free", threat=tb.Linf(EPS), replays=2)
    t2 = tb.Trainer(tiny_model(2), d2, batch_size=100)
    t2.fit(digits_ds(digits_data, 200), epochs=1)   # builds the store, then load
    t2.load_checkpoint(path)
    assert torch.equal(d2.delta, d.delta) and d2.optimizer_steps == d.optimizer_steps == 4
    with pytest.raises(ValueError, match="Trainer"):
        Free(tb.Linf(EPS), replays=2).loss(tiny_model(), Batch(digits_data[0][:4], digits_data[1][:4]))


def test_kernel_mixup_transform_reaches_the_defense(digits_data):
    """tb.Trainer(transform=toolbox.data.Mixup) + any fastat defense: the mixed labels arrive in
    batch.extra and the defense trains on the mixed loss."""
    seen = []

    class Spy(tb.defense("pgd-at", threat=tb.Linf(0.1), steps=2).__class__):
        def prepare(self, batch):
            out = super().prepare(batch)
            seen.append((out[2] is not None, out[3]))
            return out

    d = Spy(tb.Linf(0.1), steps=2)
    trainer = tb.Trainer(tiny_model(3), d, batch_size=100, transform=tb.data.Mixup(1.0))
    hist = trainer.fit(digits_ds(digits_data, 300), epochs=1)
    assert len(seen) == 3 and all(has for has, _ in seen)
    assert len({lam for _, lam in seen}) == 3 and all(0 < lam < 1 for _, lam in seen)
    assert "train_adv_loss" in hist
    # with the defense's own mixup on top: a clear error
    both = tb.Trainer(tiny_model(3), tb.defense("pgd-at", threat=tb.Linf(0.1), steps=2, mixup=1.0),
                      batch_size=100, transform=tb.data.Mixup(1.0))
    with pytest.raises(ValueError, match="already mixed"):
        both.fit(digits_ds(digits_data, 300), epochs=1)
