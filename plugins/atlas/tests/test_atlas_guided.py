"""The validation-guided LR schedule (toolbox/train/guided.py) through the real Trainer."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import toolbox as tb
from toolbox.train.callbacks import Callback, RobustEarlyStopping
from toolbox.train.guided import GuidedLR, guided_schedule

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def digits():
    train = tb.data.load("digits", split="train")
    test = tb.data.load("digits", split="test")
    return tb.data.subset(train, torch.arange(300)), tb.data.subset(test, torch.arange(60))


def tiny(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


class Script(Callback):
    """Writes a scripted metric into the row before GuidedLR sees it; records the LR."""

    order = 10

    def __init__(self, values):
        self.values, self.lrs = values, []

    def on_epoch_end(self, trainer, epoch, logs):
        logs["val_robust_acc"] = self.values[epoch]

    def on_epoch_start(self, trainer, epoch):
        self.lrs.append(trainer.optimizer.param_groups[0]["lr"])


def _trainer(model, cbs, **kw):
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    return tb.Trainer(model, tb.defense("standard"), optimizer=opt, callbacks=cbs, batch_size=100, **kw)


def test_lr_divided_after_plateau_epochs_without_improvement(digits):
    train, _ = digits
    # best at epochs 0,1; no improvement at 2,3 -> decay after epoch 3; 4 improves; 5,6 flat -> decay after 6
    script = Script([0.1, 0.2, 0.2, 0.15, 0.3, 0.3, 0.29, 0.5])
    guided = GuidedLR(plateau=2, factor=5)
    df = _trainer(tiny(), [script, guided]).fit(train, epochs=8)
    expect = [0.1, 0.1, 0.1, 0.1, 0.02, 0.02, 0.02, 0.004]
    assert script.lrs == pytest.approx(expect)
    assert list(df["lr_decays"]) == [0, 0, 0, 1, 1, 1, 2, 2]
    assert df["lr"].iloc[-1] == pytest.approx(0.004)
    assert guided.state_dict() == {"best": 0.5, "wait": 0, "decays": 2}


def test_guided_schedule_keeps_best_and_decays(digits):
    train, val = digits
    es, guided = guided_schedule(tb.attack("pgd", threat=tb.Linf(0.1), steps=3), n=60, plateau=1, patience=3)
    assert isinstance(es, RobustEarlyStopping) and isinstance(guided, GuidedLR) and es.order < guided.order
    model = tiny()
    tr = _trainer(model, [es, guided])
    df = tr.fit(train, epochs=6, val_data=val)
    assert {"val_robust_acc", "lr_decays", "best_epoch"} <= set(df.columns)
    # each epoch that did not improve the best robust accuracy divided the LR by 5
    acc = df["val_robust_acc"].to_numpy()
    running = [acc[: i + 1].max() for i in range(len(acc))]
    n_bad = sum(1 for i in range(1, len(acc)) if running[i] <= running[i - 1])
    assert int(df["lr_decays"].iloc[-1]) == n_bad
    assert tr.optimizer.param_groups[0]["lr"] == pytest.approx(0.1 / 5 ** n_bad)
    assert es.best_epoch == int(acc.argmax())


def test_guided_lr_rejects_bad_use(digits):
    train, _ = digits
    for bad in ({"plateau": 0}, {"factor": 1.0}, {"min_lr": -1}, {"metric": ""}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            GuidedLR(**bad)
    with pytest.raises(ValueError, match="lr_schedule"):
        _trainer(tiny(), [GuidedLR()], lr_schedule={"kind": "constant", "value": 0.1}).fit(train, epochs=1)
    with pytest.raises(ValueError, match="RobustEarlyStopping"):
        _trainer(tiny(), [GuidedLR()]).fit(train, epochs=1)


def test_state_round_trip():
    g = GuidedLR()
    g.load_state_dict({"best": 0.4, "wait": 1, "decays": 3})
    assert g.state_dict() == {"best": 0.4, "wait": 1, "decays": 3}
