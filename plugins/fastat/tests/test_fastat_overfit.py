"""Overfitting tools and schedule bookkeeping (digest §9, items 3, 4, 6, 7)."""

from __future__ import annotations

import pytest
import torch
from toolbox_fastat.overfit import (
    RobustErrorTracker,
    best_epoch,
    co_experiment,
    mean_std,
    perturbation_ratios,
    plot_perturbation_histogram,
    plot_robust_error,
    robust_overfitting_summary,
    validation_split,
)
from torch import nn

import toolbox as tb
from toolbox.train import Callback
from toolbox.train.callbacks import CODetector

torch.set_num_threads(1)


def tiny_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


def digits_ds(digits_data, n=None):
    x, y, _, _ = digits_data
    return tb.data.Dataset(x[:n], y[:n], num_classes=10, name="digits")


# ------------------------------------------------------------------------------ bookkeeping
def test_robust_overfitting_summary_on_a_given_sequence():
    errors = [0.62, 0.55, 0.49, 0.432, 0.44, 0.47, 0.50, 0.51, 0.52, 0.50, 0.53]
    s = robust_overfitting_summary(errors)
    tail = [0.50, 0.51, 0.52, 0.50, 0.53]
    mean = sum(tail) / 5
    std = (sum((v - mean) ** 2 for v in tail) / 5) ** 0.5
    assert s["best"] == 0.432 and s["best_epoch"] == 3 and s["epochs"] == 11
    assert s["final"] == pytest.approx(mean) and s["final_std"] == pytest.approx(std)
    assert s["diff"] == pytest.approx(mean - 0.432)
    # Table 4.10 arithmetic: CIFAR10-Linf final 51.4, best 43.2 -> diff 8.2
    flat = robust_overfitting_summary([60.0, 43.2, 51.0, 51.4, 51.8, 51.2, 51.6])
    assert flat["best"] == 43.2 and flat["final"] == pytest.approx(51.4) and flat["diff"] == pytest.approx(8.2)
    # fewer epochs than the window; ties keep the first minimum
    s2 = robust_overfitting_summary([0.3, 0.2, 0.2], last=5)
    assert s2["best_epoch"] == 1 and s2["final"] == pytest.approx(0.7 / 3)
    with pytest.raises(ValueError, match="errors"):
        robust_overfitting_summary([])
    with pytest.raises(ValueError, match="finite"):
        robust_overfitting_summary([0.1, float("nan")])
    with pytest.raises(ValueError, match="last"):
        robust_overfitting_summary([0.1], last=0)


def test_early_stopping_picks_argmax_of_validation_robust_accuracy():
    assert best_epoch([0.40, 0.47, 0.52, 0.52, 0.49]) == 2
    assert best_epoch([float("nan"), 0.1, 0.05]) == 1
    with pytest.raises(ValueError):
        best_epoch([])
    assert mean_std([86.0, 86.5, 87.0]) == pytest.approx((86.5, 0.5))
    assert mean_std([3.0]) == (3.0, 0.0)


def test_validation_split_holds_out_1000_disjoint_deterministic():
    ds = tb.data.load("synthetic", n=3000)
    train, val = validation_split(ds, 1000, seed=0)
    assert len(val) == 1000 and len(train) == len(ds) - 1000
    assert set(train.indices.tolist()).isdisjoint(val.indices.tolist())
    assert set(train.indices.tolist()) | set(val.indices.tolist()) == set(ds.indices.tolist())
    again = validation_split(ds, 1000, seed=0)[1]
    assert torch.equal(again.indices, val.indices)
    assert not torch.equal(validation_split(ds, 1000, seed=1)[1].indices, val.indices)
    assert val.indices.tolist() != list(range(1000))             # a permutation, not the first 1000


# ------------------------------------------------------------------------------ CO detector
class Scripted(CODetector):
    """The kernel's detector with scripted PGD accuracies (the digest's [0.4, 0.45, 0.05])."""

    def __init__(self, accs, **kw):
        super().__init__(**kw)
        self.script = list(accs)

    def measure(self, model, device):
        pgd = self.script[len(self.checks)]
        return pgd, pgd


class Snapshot(Callback):
    order = 5   # before the detector (order 10)

    def __init__(self):
        self.states = []

    def on_epoch_end(self, trainer, epoch, logs):
        self.states.append({k: v.clone() for k, v in trainer.model.state_dict().items()})


def test_detector_stops_after_the_drop_and_returns_the_previous_weights(digits_data):
    det = Scripted([0.4, 0.45, 0.05, 0.5], gap_threshold=None, threshold=0.2)
    snap = Snapshot()
    model = tiny_model()
    trainer = tb.Trainer(model, tb.defense("fgsm-rs", threat=tb.Linf(0.1)), callbacks=[det, snap],
                         batch_size=100)
    with pytest.warns(RuntimeWarning, match="catastrophic overfitting"):
        hist = trainer.fit(digits_ds(digits_data, 300), epochs=4)
    # checks: fit start 0.4, after epoch 0 0.45, after epoch 1 0.05 -> fires, stops
    assert [c[1] for c in det.checks] == [0.4, 0.45, 0.05]
    assert len(hist) == 2 and list(hist["co_event"]) == [0, 1]
    assert det.events[0]["good_pgd_acc"] == 0.45
    final = model.state_dict()
    assert all(torch.equal(final[k], v) for k, v in snap.states[0].items())        # epoch-0 weights
    assert not all(torch.equal(final[k], v) for k, v in snap.states[1].items())


def test_co_experiment_logs_pgd5_on_a_fixed_training_batch(digits_data):
    res = co_experiment(tiny_model(), tb.defense("fgsm-zero", threat=tb.Linf(0.2)), digits_ds(digits_data, 400),
                        epochs=2, optimizer={"name": "adam", "lr": 1e-2}, batch_size=100, detect=False)
    assert list(res.checks.columns) == ["step", "pgd_acc", "fgsm_acc"]
    assert list(res.checks["step"]) == [0, 4, 8] and not res.collapsed
    assert len(res.history) == 2 and "co_pgd_acc" in res.history
    assert res.detector.attack_strong is None and res.detector._strong.steps == 5
    assert res.detector._strong.step_size == pytest.approx(0.05)          # eps / 4
    assert res.checks["fgsm_acc"].iloc[-1] > res.checks["fgsm_acc"].iloc[0]   # it trained
    assert res.detector.batch_index.numel() == 100


# ------------------------------------------------------------------------------ tracker, plots
def test_robust_error_tracker_and_plots(digits_data, digits_model, tmp_path):
    test = (digits_data[2], digits_data[3])
    tracker = RobustErrorTracker(tb.attack("pgd", threat=tb.Linf(0.1), steps=3), data=test, n=200)
    trainer = tb.Trainer(tiny_model(), tb.defense("pgd-at", threat=tb.Linf(0.1), steps=2),
                         callbacks=[tracker], batch_size=100, optimizer={"name": "adam", "lr": 1e-2})
    hist = trainer.fit(digits_ds(digits_data, 400), epochs=3)
    assert len(tracker.errors) == 3 and list(hist["test_robust_err"]) == tracker.errors
    assert all(0 <= c <= r <= 1 for c, r in zip(hist["test_clean_err"], hist["test_robust_err"], strict=True))
    assert tracker.errors[-1] < tracker.errors[0]
    s = tracker.summary()
    assert s["best"] == min(tracker.errors)
    png = tmp_path / "robust.png"
    plot_robust_error(hist, png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    plot_robust_error({"a": [0.5, 0.4, 0.45], "b": [0.6, 0.5, 0.4]}, tmp_path / "two.png")
    assert (tmp_path / "two.png").stat().st_size > 1000

    x, y = digits_data[2][:100], digits_data[3][:100]
    pgd = tb.attack("pgd", threat=tb.Linf(0.1), steps=10, step_size=0.025)
    r = perturbation_ratios(digits_model, pgd, x, y, generator=torch.Generator().manual_seed(0))
    assert r.shape == (100,) and bool(((r >= 0) & (r <= 1)).all())
    full = perturbation_ratios(digits_model, pgd, x, y, reduce="none", generator=torch.Generator().manual_seed(0))
    assert full.shape == (100, 64) and torch.allclose(full.mean(1), r)
    zero = perturbation_ratios(digits_model, tb.attack("pgd", threat=tb.Linf(0.1), steps=0, random_start=False), x, y)
    assert float(zero.max()) == 0.0
    plot_perturbation_histogram({"pgd": r, "none": zero}, tmp_path / "hist.png")
    assert (tmp_path / "hist.png").stat().st_size > 1000
    with pytest.raises(ValueError, match="test_robust_err"):
        plot_robust_error(hist.drop(columns=["test_robust_err"]))


def test_cyclic_schedule_values_per_step(digits_data):
    """0 at the start, the peak at 2/5 of training, 0 at the end, linear in between, one value
    per optimizer step (evaluated at the progress reached after the step)."""
    lrs = []

    class LR(Callback):
        def on_batch_end(self, trainer, batch, logs):
            lrs.append(trainer.current_lr)

    trainer = tb.Trainer(tiny_model(), tb.defense("fgsm-rs", threat=tb.Linf(0.1)), batch_size=100,
                         lr_schedule={"kind": "cyclic", "peak": 5e-3, "peak_at": 0.4}, callbacks=[LR()])
    trainer.fit(digits_ds(digits_data, 500), epochs=4)           # 5 steps per epoch, 20 in all
    assert len(lrs) == 20
    total, peak_step = 20, 8                                      # peak at 0.4 * 20 steps
    want = [5e-3 * s / peak_step if s <= peak_step else 5e-3 * (total - s) / (total - peak_step)
            for s in range(1, total + 1)]
    assert lrs == pytest.approx(want)
    assert max(lrs) == pytest.approx(5e-3) and lrs.index(max(lrs)) == peak_step - 1 and lrs[-1] == 0.0
    sched = trainer.lr_schedule
    assert sched(0.0) == 0.0 and sched(1.6) == pytest.approx(5e-3) and sched(4.0) == 0.0
