"""Adaptive-radius Wasserstein adversarial training (``wasserstein-at``) with the Trainer's store."""

from __future__ import annotations

import pytest
import torch
from toolbox_wasserstein import Wasserstein, WassersteinAT, WassersteinPGD
from toolbox_wasserstein.defense import STORE_KEY

import toolbox as tb
from toolbox.defense import Batch
from toolbox.train.callbacks import Callback
from toolbox.train.store import Store


def _defense(**kw):
    kw.setdefault("eps_min", 0.02)
    kw.setdefault("growth", 1.5)
    kw.setdefault("every", 2)
    kw.setdefault("steps", 10)
    return WassersteinAT(Wasserstein(kw.pop("eps_max", 0.5)), **kw)


def test_loss_store_and_adaptive_start(digits_data, digits_model):
    x, y = digits_data[2][:24], digits_data[3][:24]
    store = Store(100)
    idx = torch.arange(24) + 10
    d = _defense()
    b = Batch(x=x, y=y, index=idx, store=store)
    assert torch.allclose(d.start_eps(b), torch.full((24,), 0.02, dtype=torch.float64))
    loss, logs = d.loss(digits_model, b)
    assert loss.dim() == 0 and loss.requires_grad and torch.isfinite(loss)
    stored = store.get(STORE_KEY, idx).double()
    # every example got a radius: the one that broke it (on the schedule) or the last tried
    top = 0.02 * 1.5 ** 4
    assert ((stored >= 0) & (stored <= top + 1e-6)).all()
    assert float(logs["broken"]) > 0.2
    # the unbroken rows' last iterates are classified correctly, the broken ones are not
    assert float(logs["adv_acc"]) == pytest.approx(1 - float(logs["broken"]))
    assert float(logs["eps_mean"]) == pytest.approx(float(stored.mean()), rel=1e-5)
    # next time: start at stored / growth, clamped to [eps_min, eps_max]
    want = torch.where(stored > 0, stored / 1.5, torch.full_like(stored, 0.02)).clamp(0.02, 0.5)
    assert torch.allclose(d.start_eps(b), want, rtol=1e-6)
    # rows never written keep the thesis's start
    other = Batch(x=x[:2], y=y[:2], index=torch.tensor([0, 1]), store=store)
    assert torch.allclose(d.start_eps(other), torch.full((2,), 0.02, dtype=torch.float64))
    # non-adaptive: always eps_min; no store: eps_min
    assert torch.allclose(_defense(adaptive=False).start_eps(b), torch.full((24,), 0.02, dtype=torch.float64))
    assert torch.allclose(d.start_eps(Batch(x=x, y=y)), torch.full((24,), 0.02, dtype=torch.float64))


def test_training_points_are_first_adversarial(digits_data, digits_model):
    """The defense trains on the attack with keep_best=False: the first adversarial iterate
    for broken examples, inside the cap ball."""
    x, y = digits_data[2][:16], digits_data[3][:16]
    d = _defense()
    assert isinstance(d.attack, WassersteinPGD) and d.attack.keep_best is False
    atk = d.attack
    res = atk.search(digits_model, x, y)
    assert Wasserstein(0.5).contains(res.x_adv, x).all()
    with torch.no_grad():
        assert torch.equal(digits_model(res.x_adv).argmax(1) != y, res.success)


@pytest.mark.slow
def test_trainer_fit_two_epochs(digits_data):
    """Two short epochs under the Trainer: the store fills and is reused (the mean start of
    the second epoch is above eps_min), the history carries the defense's logs."""
    xtr, ytr = digits_data[0][:200], digits_data[1][:200]
    ds = torch.utils.data.TensorDataset(xtr, ytr, torch.arange(200))
    model = tb.models.create("digits-cnn", seed=0)
    d = _defense(steps=6, eps_max=0.3)
    starts = []

    class Spy(Callback):
        def on_epoch_start(self, trainer, epoch):
            if STORE_KEY in trainer.store.names():
                b = Batch(x=xtr, y=ytr, index=torch.arange(200), store=trainer.store)
                starts.append(float(d.start_eps(b).mean()))

    tr = tb.Trainer(model, d, optimizer={"name": "adam", "lr": 3e-3}, batch_size=100, seed=0,
                    callbacks=[Spy()])
    hist = tr.fit(ds, epochs=2)
    assert len(hist) == 2 and "train_eps_mean" in hist and "train_broken" in hist
    assert STORE_KEY in tr.store.names()
    assert starts and starts[0] > 0.02 + 1e-6


def test_argument_checks():
    with pytest.raises(ValueError, match="threat must be a Wasserstein"):
        WassersteinAT(tb.Linf(0.1))
    with pytest.raises(ValueError, match="eps_min"):
        WassersteinAT(Wasserstein(0.5), eps_min=1.0)
    with pytest.raises(ValueError, match="clean_weight"):
        WassersteinAT(Wasserstein(0.5), clean_weight=2.0)
    with pytest.raises(ValueError, match="attack must be a WassersteinPGD"):
        WassersteinAT(Wasserstein(0.5), attack=tb.attack("pgd", threat=tb.Linf(0.1)))
    d = tb.defense("wasserstein-at", threat=tb.threat("wasserstein", eps=1.0), steps=3)
    assert isinstance(d, WassersteinAT) and d.eps_max == 1.0 and d.attack.steps == 3
