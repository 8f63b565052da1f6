"""Builtin Trainer callbacks, each through the real Trainer on small data (digits)."""

from __future__ import annotations

import copy

import pandas as pd
import pytest
import torch
from torch import nn

import toolbox as tb
from toolbox.train.callbacks import (
    Callback,
    CODetector,
    CurvePlot,
    History,
    ProgressBar,
    RobustEarlyStopping,
)

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def digits():
    train = tb.data.load("digits", split="train")
    test = tb.data.load("digits", split="test")
    return tb.data.subset(train, torch.arange(400)), tb.data.subset(test, torch.arange(100))


def tiny(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


def fgsm_defense(eps: float = 0.1):
    return tb.defense("adversarial", attack=tb.attack("fgsm", threat=tb.Linf(eps)))


def make_trainer(model, defense, callbacks, tmp_path=None, lr=0.05, batch_size=50):
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    return tb.Trainer(model, defense, optimizer=opt, callbacks=callbacks, batch_size=batch_size,
                      seed=0, run_dir=tmp_path)


def weights(model: nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


class Record(Callback):
    """Test helper: the model weights after each epoch's training, before `order`-later callbacks."""

    def __init__(self, order: int = 0):
        self.order = order
        self.snapshots: list[dict] = []

    def on_epoch_end(self, trainer, epoch, logs):
        self.snapshots.append(weights(trainer.model))


class Scripted(Callback):
    """Test helper: writes a fixed value sequence into the history column ``score``."""

    order = 5

    def __init__(self, values):
        self.values = list(values)

    def on_epoch_end(self, trainer, epoch, logs):
        logs["score"] = self.values[epoch]


def test_callback_base_is_noop_and_builtins_registered():
    cb = Callback()
    assert cb.order == 0 and cb.state_dict() == {}
    for hook in ("on_fit_start", "on_fit_end"):
        assert getattr(cb, hook)(None) is None
    names = tb.names("callback")
    for n in ("progress-bar", "history", "curve-plot", "robust-early-stopping", "co-detector"):
        assert n in names
    from toolbox.plugins import registry

    assert isinstance(registry().create("callback", "history", csv=False), History)
    with pytest.raises(KeyError, match="history"):
        registry().create("callback", "histroy")


def test_history_csv_and_curve_png(digits, tmp_path):
    train, val = digits
    hist, plot = History(), CurvePlot("plots/curves.png")
    trainer = make_trainer(tiny(), tb.defense("standard"), [plot, hist], tmp_path)
    df = trainer.fit(train, epochs=3, val_data=val)
    csv = tmp_path / "history.csv"
    assert csv.is_file()
    on_disk = pd.read_csv(csv)
    assert len(on_disk) == 3 == len(df)
    assert list(on_disk["epoch"]) == [0, 1, 2]  # 0-based, as in the callback hooks
    for col in df.columns:  # the CSV holds every numeric history column with the same values
        if pd.api.types.is_numeric_dtype(df[col]):
            assert col in on_disk
            pd.testing.assert_series_equal(on_disk[col].astype(float), df[col].astype(float),
                                           check_names=False, rtol=1e-6)
    assert len(hist.dataframe) == 3 and hist.path == csv
    png = tmp_path / "plots" / "curves.png"
    assert png.is_file() and png.stat().st_size > 1000
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in tmp_path.rglob("*.tmp")], "atomic writes left temporary files"


def test_history_csv_written_each_epoch(digits, tmp_path):
    train, _ = digits
    seen = []

    class Peek(Callback):
        order = 99  # after History (90)

        def on_epoch_end(self, trainer, epoch, logs):
            seen.append(len(pd.read_csv(tmp_path / "history.csv")))

    make_trainer(tiny(), tb.defense("standard"), [History(), Peek()], tmp_path).fit(train, epochs=2)
    assert seen == [1, 2]


def test_progress_bar_prints_lines_in_ci_and_nothing_when_disabled(digits, capfd, monkeypatch):
    train, _ = digits
    monkeypatch.setenv("CI", "1")
    bar = ProgressBar()
    assert not bar.active  # no tqdm bar off a terminal ...
    make_trainer(tiny(), tb.defense("standard"), [bar]).fit(train, epochs=2)
    err = capfd.readouterr().err
    assert "it/s" not in err
    # ... but one plain line per epoch, with the epoch's mean loss and accuracy
    lines = [ln for ln in err.splitlines() if ln.startswith("epoch ")]
    assert [ln.split(":")[0] for ln in lines] == ["epoch 1/2", "epoch 2/2"], err
    assert all("8 steps, loss " in ln and ", acc " in ln and ln.endswith(" s") for ln in lines), lines
    make_trainer(tiny(), tb.defense("standard"), [ProgressBar(enabled=False)]).fit(train, epochs=1)
    assert capfd.readouterr().err == ""


def test_progress_bar_enabled_draws(digits, capfd, monkeypatch):
    train, _ = digits
    monkeypatch.setenv("CI", "1")
    bar = ProgressBar(enabled=True)
    assert bar.active
    make_trainer(tiny(), tb.defense("standard"), [bar]).fit(train, epochs=1)
    err = capfd.readouterr().err
    assert "epoch 1/1" in err and "loss=" in err and "8/8" in err
    with pytest.raises(ValueError, match="enabled"):
        ProgressBar(enabled="yes")


def test_robust_early_stopping_measures_and_keeps_best(digits, tmp_path):
    train, val = digits
    rec = Record(order=30)  # after RobustEarlyStopping (20): sees the weights it evaluated
    es = RobustEarlyStopping(n=60, restore_best=True)
    model = tiny()
    trainer = make_trainer(model, fgsm_defense(), [es, rec], tmp_path, lr=0.2)
    df = trainer.fit(train, epochs=4, val_data=val)
    assert {"val_clean_acc", "val_robust_acc", "best_epoch"} <= set(df.columns)
    assert (df["val_robust_acc"] <= df["val_clean_acc"] + 1e-9).all()
    best = int(df["val_robust_acc"].to_numpy().argmax())  # first maximum
    assert es.best_epoch == best and es.best_score == pytest.approx(df["val_robust_acc"].max())
    # the restored model is the best epoch's model, in memory and on disk
    assert same(weights(model), rec.snapshots[best])
    on_disk = torch.load(tmp_path / "best.pt", weights_only=True)
    assert same(on_disk, rec.snapshots[best])
    # the logged robust accuracy is PGD-10 in the defense's threat model on the first 60 examples
    x, y, _ = val.tensors()
    x, y = x[:60], y[:60]
    pgd = tb.attack("pgd", threat=tb.Linf(0.1), steps=10)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        clean = model.eval()(x).argmax(1) == y
    rob = (model(pgd(model, x, y, generator=g)).argmax(1) == y) & clean
    assert rob.float().mean().item() == pytest.approx(df["val_robust_acc"][best])
    assert clean.float().mean().item() == pytest.approx(df["val_clean_acc"][best])


def test_early_stopping_patience_and_restore(digits, tmp_path):
    train, val = digits
    rec = Record(order=30)
    es = RobustEarlyStopping(n=20, patience=2, metric="score")
    model = tiny()
    trainer = make_trainer(model, fgsm_defense(), [Scripted([0.3, 0.9, 0.5, 0.4, 0.95, 1.0]), es, rec], tmp_path)
    df = trainer.fit(train, epochs=6, val_data=val)
    assert len(df) == 4  # best at epoch 1, no improvement in 2 and 3 -> stop after epoch 3
    assert es.best_epoch == 1 and list(df["best_epoch"]) == [0, 1, 1, 1]
    assert same(weights(model), rec.snapshots[1]) and not same(rec.snapshots[1], rec.snapshots[3])
    no_restore = RobustEarlyStopping(n=20, patience=2, metric="score", restore_best=False)
    model2, rec2 = tiny(), Record(order=30)
    make_trainer(model2, fgsm_defense(), [Scripted([0.3, 0.9, 0.5, 0.4]), no_restore, rec2]).fit(
        train, epochs=4, val_data=val)
    assert same(weights(model2), rec2.snapshots[-1])


def test_early_stopping_bad_input(digits):
    train, _ = digits
    with pytest.raises(ValueError, match="patience"):
        RobustEarlyStopping(patience=0)
    with pytest.raises(ValueError, match="n must"):
        RobustEarlyStopping(n=-5)
    with pytest.raises(ValueError, match="attack"):
        RobustEarlyStopping(attack="pgd")
    with pytest.raises(ValueError, match="val"):  # no validation data anywhere
        make_trainer(tiny(), fgsm_defense(), [RobustEarlyStopping()]).fit(train, epochs=1)
    with pytest.raises(ValueError, match="attack="):  # standard training has no threat model
        make_trainer(tiny(), tb.defense("standard"), [RobustEarlyStopping()]).fit(train, epochs=1, val_data=train)


class FakeMeasure(CODetector):
    """The real detector with scripted (PGD, FGSM) accuracies instead of attacks."""

    def __init__(self, values, **kw):
        super().__init__(**kw)
        self.values = list(values)

    def measure(self, model, device):
        return self.values.pop(0)


def test_co_detector_rule_rolls_back_and_stops(digits):
    # the digests' unit case: PGD accuracies 0.4, 0.45, 0.05 -> fire at the third epoch check,
    # return the weights of the second
    train, _ = digits
    rec = Record(order=5)  # before the detector (10): the weights each check sees
    det = FakeMeasure([(0.1, 0.1), (0.4, 0.5), (0.45, 0.5), (0.05, 0.9), (0.9, 0.9)])
    model = tiny()
    trainer = make_trainer(model, fgsm_defense(), [rec, det])
    opt = trainer.optimizer
    with pytest.warns(RuntimeWarning, match="catastrophic overfitting detected at epoch 2"):
        df = trainer.fit(train, epochs=5)
    assert len(df) == 3 and det.stopped
    assert list(df["co_event"]) == [0, 0, 1]
    assert same(weights(model), rec.snapshots[1]) and not same(rec.snapshots[1], rec.snapshots[2])
    assert same(det.good_state, rec.snapshots[1])
    ev = det.events
    assert len(ev) == 1 and ev[0]["rule"] == "pgd-drop" and ev[0]["epoch"] == 2
    assert ev[0]["pgd_acc"] == 0.05 and ev[0]["good_pgd_acc"] == 0.45
    assert ev[0]["good_step"] == 2 * trainer.steps_per_epoch and ev[0]["step"] == 3 * trainer.steps_per_epoch
    # the optimizer state went back too (SGD momentum buffers of epoch 1)
    mom = [opt.state[p]["momentum_buffer"] for p in model.parameters()]
    good_mom = [s["momentum_buffer"] for s in det.good_optimizer_state["state"].values()]
    assert all(torch.equal(a, b) for a, b in zip(mom, good_mom, strict=True))


def test_co_detector_gap_rule_and_continue(digits):
    train, _ = digits
    det = FakeMeasure([(0.1, 0.1), (0.3, 0.5), (0.25, 0.9), (0.35, 0.4), (0.4, 0.45)],
                      gap_threshold=0.5, action="continue")
    with pytest.warns(RuntimeWarning, match="fgsm-pgd-gap"):
        df = make_trainer(tiny(), fgsm_defense(), [det]).fit(train, epochs=4)
    assert len(df) == 4 and not det.stopped
    assert [e["rule"] for e in det.events] == ["fgsm-pgd-gap"] and det.events[0]["epoch"] == 1
    assert list(df["co_event"]) == [0, 1, 0, 0]
    assert det.good_pgd_acc == 0.4
    # a drop of exactly the threshold does not fire; gap_threshold=None turns the gap rule off
    det2 = FakeMeasure([(0.5, 0.5), (0.3, 1.0), (0.3, 1.0)], every=4, action="continue", gap_threshold=None)
    make_trainer(tiny(), fgsm_defense(), [det2]).fit(train, epochs=1)
    assert det2.events == [] and [c[0] for c in det2.checks] == [0, 4, 8]


def test_co_detector_real_attacks_on_held_batch(digits):
    train, _ = digits
    det = CODetector(every="epoch", batch=64, seed=3)
    model = tiny()
    df = make_trainer(model, fgsm_defense(), [det]).fit(train, epochs=2)
    assert det.batch_index.shape == (64,) and len(set(det.batch_index.tolist())) == 64
    assert len(det.checks) == 3  # fit start + two epochs
    pgd_acc, fgsm_acc = det.measure(model, "cpu")
    assert (df["co_pgd_acc"].iloc[-1], df["co_fgsm_acc"].iloc[-1]) == (pgd_acc, fgsm_acc)
    # default attacks: PGD-5 (step eps/4) and FGSM in the defense's threat model
    x, y = det._x, det._y
    with torch.no_grad():
        clean = model.eval()(x).argmax(1) == y
    f = tb.attack("fgsm", threat=tb.Linf(0.1))(model, x, y)
    with torch.no_grad():
        expect = ((model(f).argmax(1) == y) & clean).float().mean().item()
    assert fgsm_acc == pytest.approx(expect)
    pgd = tb.attack("pgd", threat=tb.Linf(0.1), steps=5, step_size=0.025)
    p = pgd(model, x, y, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expect = ((model(p).argmax(1) == y) & clean).float().mean().item()
    assert pgd_acc == pytest.approx(expect)


def test_co_detector_bad_input():
    for kw, word in (({"every": 0}, "every"), ({"every": "batch"}, "every"), ({"threshold": 1.5}, "threshold"),
                     ({"gap_threshold": -0.1}, "gap_threshold"), ({"action": "halt"}, "action"),
                     ({"batch": 0}, "batch"), ({"attack_strong": "pgd"}, "attack_strong")):
        with pytest.raises(ValueError, match=word):
            CODetector(**kw)


def _roundtrip(state):
    import io

    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def test_state_dict_roundtrip(digits, tmp_path):
    train, val = digits
    es = RobustEarlyStopping(n=20)
    det = CODetector(every=3, batch=32)
    make_trainer(tiny(), fgsm_defense(), [es, det, History(csv=False)], tmp_path).fit(train, epochs=2, val_data=val)
    for cb, fresh in ((es, RobustEarlyStopping(n=20)), (det, CODetector(every=3, batch=32))):
        state = _roundtrip(cb.state_dict())
        fresh.load_state_dict(state)
        again = fresh.state_dict()
        assert again.keys() == cb.state_dict().keys()
        for k, v in cb.state_dict().items():
            w = again[k]
            if isinstance(v, dict) and v and all(isinstance(t, torch.Tensor) for t in v.values()):
                assert same(v, w)
            elif isinstance(v, torch.Tensor):
                assert torch.equal(v, w)
            elif k != "good_optimizer_state":
                assert v == w or (isinstance(v, (list, tuple)) and list(map(list, v)) == list(map(list, w))), k
    assert es.best_epoch is not None and len(det.checks) == 1 + 2 * 8 // 3
    # a resumed detector keeps its held batch and rollback point instead of starting over
    resumed = CODetector(every=3, batch=32, threshold=1.0, gap_threshold=None)  # never fires
    resumed.load_state_dict(_roundtrip(det.state_dict()))
    before = copy.deepcopy(resumed.good_state)
    make_trainer(tiny(), fgsm_defense(), [resumed]).fit(train, epochs=1)
    assert torch.equal(resumed.batch_index, det.batch_index)
    assert len(resumed.checks) > len(det.checks) and before is not None
    assert ProgressBar().state_dict() == {} and History().state_dict() == {}
