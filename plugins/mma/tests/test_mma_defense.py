"""MMA defense bookkeeping and loss (digest §1.10 check 4), PGDLS ramp, metric arithmetic (check 7)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from toolbox_mma import (
    MMA,
    PGDLS,
    STORE_KEY,
    BestMargin,
    MarginSearch,
    MarginTracker,
    avg_accuracies,
    slm,
)
from torch import nn

import toolbox as tb
from toolbox.defense import Batch
from toolbox.train.store import Store


class FakeMargin(tb.Attack):
    """A stand-in minimal-margin attack returning scripted margins (records its eps_init)."""

    def __init__(self, eps_by_index):
        super().__init__(tb.Linf(1.0))
        self.eps_by_index = eps_by_index
        self.calls = []

    def margin(self, model, x, y, eps_init, generator=None):
        idx = self.current[self.mask]
        self.calls.append((idx.clone(), eps_init.clone()))
        eps = self.eps_by_index[idx]
        x_adv = (x + 0.05 * torch.sign(torch.randn_like(x))).clamp(0, 1)
        return MarginSearch(x_adv, eps, torch.ones_like(eps, dtype=torch.bool), eps, x_adv)



def _run(defense, model, x, y, index, store, fake=None):
    if fake is not None:
        with torch.no_grad():
            fake.mask = slm(model(x), y) < 0
        fake.current = index
    return defense.loss(model, Batch(x=x, y=y, index=index, store=store))


def test_store_bookkeeping_and_eps_init():
    n, k = 12, 8
    labels = torch.arange(n) % 10
    # a per-example "oracle" model: logits = 20 * onehot(labels[index]) keyed by the input's first pixel
    x = torch.zeros(n, 1, 4, 4)
    x[:, 0, 0, 0] = torch.arange(n) / n
    key = (x[:, 0, 0, 0] * n).round().long()

    class Oracle(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.ones(()))

        def forward(self, z):
            i = (z[:, 0, 0, 0] * n).round().long().clamp(0, n - 1)
            return 20 * self.w * F.one_hot(labels[i], 10).float()

    model = Oracle()
    y = labels[key].clone()
    y[k:] = (y[k:] + 1) % 10                  # misclassified
    index = torch.arange(100, 100 + n)
    eps_table = torch.zeros(200)
    eps_table[100:100 + n] = torch.linspace(0.05, 0.5, n)
    fake = FakeMargin(eps_table)
    d = MMA(tb.Linf(0.4), eps_min=0.1, attack=fake)
    store = Store(200)
    _run(d, model, x, y, index, store, fake)
    idx0, e0 = fake.calls[0]
    assert torch.equal(idx0, index[:k])
    assert torch.allclose(e0, torch.full((k,), 0.1))            # first visit: eps_min
    got = store.tensor(STORE_KEY)[index]
    assert torch.allclose(got[:k], eps_table[index[:k]])        # correct: the found margin
    assert torch.all(got[k:] == 0)                              # misclassified: 0
    # second visit: eps_init = max(eps_min, stored)
    eps_table[100:100 + n] = 0.3
    _run(d, model, x, y, index, store, fake)
    _, e1 = fake.calls[1]
    assert torch.allclose(e1, torch.linspace(0.05, 0.5, n)[:k].clamp_min(0.1))
    assert torch.allclose(store.tensor(STORE_KEY)[index][:k], torch.full((k,), 0.3))  # last visit wins
    # an example misclassified now stores 0 and restarts from eps_min next time
    y2 = y.clone()
    y2[0] = (y2[0] + 1) % 10
    _run(d, model, x, y2, index, store, fake)
    assert float(store.tensor(STORE_KEY)[index[0]]) == 0.0
    _run(d, model, x, y, index, store, fake)
    assert float(fake.calls[-1][1][0]) == pytest.approx(0.1)


def test_mma_gradient_matches_manual_and_omma():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 10))
    x = torch.rand(16, 1, 4, 4)
    with torch.no_grad():
        model[1].weight.mul_(40)              # confident logits: argmax-correct rows have SLM < 0
        y = model(x).argmax(1)
        y[12:] = (y[12:] + 3) % 10                             # 4 misclassified
    index = torch.arange(16)
    eps_table = torch.tensor([0.1, 0.2, 0.5, 0.3, 0.45, 0.05, 0.5, 0.2, 0.1, 0.39, 0.41, 0.2, 0, 0, 0, 0.])
    for w in (1 / 3, 0.0):
        fake = FakeMargin(eps_table)
        d = MMA(tb.Linf(0.4), eps_min=0.1, attack=fake, clean_weight=w)
        torch.manual_seed(1)
        loss, logs = _run(d, model, x, y, index, Store(16), fake)
        g = torch.autograd.grad(loss, list(model.parameters()))
        # manual: rebuild the same adversarial rows
        torch.manual_seed(1)
        correct = fake.mask
        assert correct.sum() >= 8 and not correct[12:].any()
        xs = x[correct]
        x_adv = (xs + 0.05 * torch.sign(torch.randn_like(xs))).clamp(0, 1)
        x_mix = x.clone()
        x_mix[correct] = x_adv
        ce_mix = F.cross_entropy(model(x_mix), y, reduction="none")
        use = ~correct | (eps_table < 0.4)
        l_mma = (ce_mix * use).sum() / 16
        l_clean = F.cross_entropy(model(x), y)
        manual = (1 - w) * l_mma + w * l_clean
        gm = torch.autograd.grad(manual, list(model.parameters()))
        assert torch.allclose(loss, manual, atol=1e-6)
        for a, b in zip(g, gm, strict=True):
            assert torch.allclose(a, b, atol=1e-6)
        hinged = (correct & (eps_table >= 0.4)).float().mean()
        assert float(logs["frac_hinged"]) == pytest.approx(float(hinged))
    # OMMA really drops the clean term: gradients differ from MMA's
    assert not torch.allclose(loss, (2 / 3) * l_mma + (1 / 3) * l_clean)


def test_mma_with_anpgd_in_trainer(digits_data):
    xtr, ytr, _, _ = digits_data
    torch.manual_seed(0)
    model = tb.models.create("digits-cnn")
    d = tb.defense("mma", threat=tb.Linf(0.3), eps_min=0.05, steps=5, seed=0)
    assert d.eps_max == pytest.approx(0.315)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    tracker = MarginTracker(n=200, plot=None)
    tr = tb.Trainer(model, d, optimizer=opt, batch_size=100, seed=0, callbacks=[tracker])
    data = tb.data.Dataset(xtr[:400], ytr[:400], num_classes=10, name="digits")
    hist = tr.fit(data, epochs=2)
    eps = tr.store.tensor(STORE_KEY)
    assert eps.shape[0] >= 400
    assert float(eps.min()) >= 0 and float(eps.max()) <= 0.315 + 1e-6
    assert "train_eps_mean" in hist.columns and "train_frac_hinged" in hist.columns
    assert hist["margin_mean"].notna().all() and len(tracker.records) == 2
    assert tracker.records[0][1].shape == (200,)
    assert all(p.requires_grad for p in model.parameters())


def test_mma_arguments():
    with pytest.raises(ValueError, match="clean_weight"):
        MMA(tb.Linf(0.3), clean_weight=1.5)
    with pytest.raises(ValueError, match="eps_min"):
        MMA(tb.Linf(0.3), eps_min=0.5)
    with pytest.raises(ValueError, match="correct_by"):
        MMA(tb.Linf(0.3), correct_by="ce")
    with pytest.raises(ValueError, match="margin"):
        MMA(tb.Linf(0.3), attack=tb.attack("pgd", threat=tb.Linf(0.3)))
    assert MMA(tb.L2(2.0)).eps_max == pytest.approx(2.1)


def test_pgdls_ramp():
    atk = tb.attack("pgd", threat=tb.Linf(0.45), steps=4, keep_best=False)
    d = PGDLS(atk, ramp_epochs=10)

    class T:
        steps_per_epoch = 100

    assert d.current_eps(Batch(x=torch.zeros(1), y=torch.zeros(1), step=0, trainer=T())) == 0.0
    assert d.current_eps(Batch(x=torch.zeros(1), y=torch.zeros(1), step=250, trainer=T())) == pytest.approx(0.1125)
    assert d.current_eps(Batch(x=torch.zeros(1), y=torch.zeros(1), step=5000, trainer=T())) == pytest.approx(0.45)
    assert d.current_eps(Batch(x=torch.zeros(1), y=torch.zeros(1), epoch=5)) == pytest.approx(0.225)
    assert PGDLS(atk, ramp_epochs=0).current_eps(Batch(x=torch.zeros(1), y=torch.zeros(1))) == 0.45
    # at radius 0 it trains on the clean batch; later on adversarial points
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 10))
    x, y = torch.rand(8, 1, 4, 4), torch.randint(0, 10, (8,))
    loss0, logs0 = d.loss(model, Batch(x=x, y=y, step=0, trainer=T()))
    assert torch.allclose(loss0, F.cross_entropy(model(x), y))
    loss1, logs1 = d.loss(model, Batch(x=x, y=y, step=1000, trainer=T()))
    assert float(loss1.detach()) > float(loss0.detach()) and logs1["eps"] == pytest.approx(0.45)
    with pytest.raises(ValueError, match="ramp_epochs"):
        PGDLS(atk, ramp_epochs=-1)


# -- check 7: AvgAcc / AvgRobAcc golden values from the paper's tables ----------------------
GOLDEN = [
    # (clean, robust grid, AvgAcc, AvgRobAcc)  -- Table 4 (MNIST-Linf, combined)
    (98.95, [97.87, 96.01, 92.59, 85.24], 94.13, 92.93),     # MMA-0.45-sd0
    (98.89, [97.91, 96.34, 93.29, 87.28], 94.74, 93.70),     # PGDLS-0.45
    (11.35, [11.35] * 4, 11.35, 11.35),                      # PGD-0.45 (constant predictor)
    (98.53, [97.08, 94.83, 89.64, 0.11], 76.04, 70.41),      # PGD-Madry et al.
    # Table 6 (MNIST-L2, combined)
    (98.71, [93.93, 74.01, 39.34, 5.24], 62.25, 53.13),      # MMA-4.0-sd0
    (99.27, [95.59, 68.37, 6.03, 0.01], 53.85, 42.50),       # MMA-2.0-sd0
    # Table 5 (CIFAR10-Linf, 8 radii)
    (84.36, [64.82, 47.18, 31.49, 18.91, 10.16, 4.77, 1.97, 0.81], 29.39, 22.51),  # MMA-32-sd0
    # Table 10 (MNIST-L2, white-box)
    (93.68, [82.73, 67.37, 44.59, 11.07], 59.89, 51.44),     # PGDLS-4.0
]


@pytest.mark.parametrize("clean,robust,avg,avg_rob", GOLDEN)
def test_avg_accuracies_golden(clean, robust, avg, avg_rob):
    a, r = avg_accuracies(clean, robust)
    assert a == pytest.approx(avg, abs=0.011)
    assert r == pytest.approx(avg_rob, abs=0.011)


def test_avg_accuracies_errors():
    with pytest.raises(ValueError, match="robust"):
        avg_accuracies(99.0, [])
    with pytest.raises(ValueError, match="finite"):
        avg_accuracies(float("nan"), [1.0])


def test_best_margin_keeps_the_largest_validation_margin(digits_data):
    xtr, ytr, xte, yte = digits_data
    torch.manual_seed(0)
    model = tb.models.create("digits-cnn")
    d = MMA(tb.Linf(0.3), eps_min=0.05, steps=3, seed=0)
    best = BestMargin(n=100, steps=5)
    tr = tb.Trainer(model, d, optimizer=torch.optim.Adam(model.parameters(), 3e-3), batch_size=100, seed=0,
                    callbacks=[best])
    train = tb.data.Dataset(xtr[:300], ytr[:300], num_classes=10, name="digits")
    val = tb.data.Dataset(xte[:100], yte[:100], num_classes=10, name="digits")
    hist = tr.fit(train, epochs=3, val_data=val)
    vals = list(hist["val_margin_mean"])
    assert len(vals) == 3 and best.best_value == pytest.approx(max(vals))
    assert best.best_epoch == int(torch.tensor(vals).argmax())
    # the restored weights are the best epoch's
    for k, v in model.state_dict().items():
        assert torch.equal(v, best.best_state[k])
    assert list(hist["val_margin_best"]) == [max(vals[: i + 1]) for i in range(3)]


def test_checkpoint_resume_restores_margins_exactly(digits_data, tmp_path):
    xtr, ytr, _, _ = digits_data
    train = tb.data.Dataset(xtr[:500], ytr[:500], num_classes=10, name="digits")

    class StopAndSave(tb.train.Callback):
        order = 99

        def on_epoch_end(self, trainer, epoch, logs):
            if epoch == 0:
                trainer.save_checkpoint(tmp_path / "ck.pt")
                trainer.stop_training = True

    def trainer(*extra):
        torch.manual_seed(0)
        model = tb.models.create("digits-cnn")
        d = MMA(tb.Linf(0.3), eps_min=0.05, steps=3, correct_by="lm")
        return tb.Trainer(model, d, optimizer={"name": "adam", "lr": 1e-2}, batch_size=50,
                          seed=0, callbacks=[MarginTracker(n=50, plot=None), *extra])

    straight = trainer()
    straight.fit(train, epochs=2)
    trainer(StopAndSave()).fit(train, epochs=2)
    resumed = trainer()
    resumed.fit(train, epochs=2, resume=tmp_path / "ck.pt")
    assert torch.equal(straight.store.tensor(STORE_KEY), resumed.store.tensor(STORE_KEY))
    assert float(straight.store.tensor(STORE_KEY).max()) > 0
    for a, b in zip(straight.model.parameters(), resumed.model.parameters(), strict=True):
        assert torch.equal(a, b)
