"""Checkpoint/resume of the ATAS store, diagnostics (histograms, long-tail statistic, plot)."""

from __future__ import annotations

import pytest
import torch
from toolbox_atas import ATAS, GradNormStats, long_tail, plot_gradnorm

import toolbox as tb

EPS = 0.1


def _data(digits_data, n=200):
    x, y, _, _ = digits_data
    return tb.data.Dataset(x[:n], y[:n], num_classes=10, name="digits-sub")


def _defense():
    return ATAS(eps=EPS, c=0.05, step_max=0.25, clamp=(0.02, 0.2), warmup_epochs=1, reset_every=2,
                grad_scale="per-example")


def _trainer(callbacks=(), transform=None):
    torch.manual_seed(0)
    model = tb.models.create("digits-cnn")
    return tb.Trainer(model, _defense(), optimizer={"name": "sgd", "lr": 0.05, "momentum": 0.9},
                      batch_size=50, seed=1, callbacks=list(callbacks), transform=transform)


class _StopAndSave(tb.train.Callback):
    order = 99

    def __init__(self, path, at):
        self.path, self.at, self.saved = path, at, None

    def on_epoch_end(self, trainer, epoch, logs):
        if epoch == self.at:
            trainer.save_checkpoint(self.path)
            self.saved = {n: trainer.store.tensor(n).clone() for n in trainer.store.names()}
            trainer.stop_training = True


def test_resume_restores_store_exactly(digits_data, tmp_path):
    data = _data(digits_data)
    full = _trainer(transform=tb.data.RandomCropFlip(padding=2))
    h_full = full.fit(data, epochs=4)
    ck = tmp_path / "mid.pt"
    stopper = _StopAndSave(ck, at=1)
    part = _trainer([stopper], transform=tb.data.RandomCropFlip(padding=2))
    part.fit(data, epochs=4)
    assert sorted(stopper.saved) == ["atas_delta", "atas_gen", "atas_gnorm", "atas_step", "atas_v"]
    # a fresh trainer loads the store exactly as saved
    state = torch.load(ck, weights_only=True)
    for name, t in stopper.saved.items():
        assert torch.equal(state["store"]["tensors"][name], t), name
    assert bool((stopper.saved["atas_v"] > 0).all())                 # ATAS state was live at the save
    # resuming continues exactly as the uninterrupted run (store, weights, history)
    again = _trainer(transform=tb.data.RandomCropFlip(padding=2))
    h = again.fit(data, epochs=4, resume=ck)
    for name in full.store.names():
        assert torch.equal(again.store.tensor(name), full.store.tensor(name)), name
    for (n, a), (_, b) in zip(full.model.state_dict().items(), again.model.state_dict().items(), strict=True):
        assert torch.equal(a, b), n
    assert h["train_loss"].tolist() == h_full["train_loss"].tolist()


def test_gradnorm_stats_and_plot(digits_data, tmp_path):
    data = _data(digits_data)
    stats = GradNormStats(bins=12)
    tr = _trainer([stats])
    h = tr.fit(data, epochs=3)
    assert len(stats.histograms) == 3
    for hist in stats.histograms:
        assert sum(hist["counts"]) == len(data) and len(hist["edges"]) == 13
    assert stats.histograms[0]["edges"] == stats.histograms[2]["edges"]     # one axis for all epochs
    lt = h["gnorm_longtail"].tolist()
    assert all(v >= 1.0 for v in lt)
    # every example is visited once per epoch: the epoch statistic equals the stored norms'
    g = tr.store.tensor("atas_gnorm")
    assert lt[-1] == pytest.approx(long_tail(g), rel=1e-4)
    assert h["gnorm_p50"].iloc[-1] == pytest.approx(float(g.double().median()), rel=0.05)
    assert h["store_bytes_per_example"].iloc[-1] == 8 * 8 * 4 + 8 + 3 * 4
    assert 0.02 - 1e-7 <= h["step_p10"].iloc[-1] <= h["step_p90"].iloc[-1] <= 0.2 + 1e-7
    fig = plot_gradnorm(stats, h, path=tmp_path / "gn.png")
    assert (tmp_path / "gn.png").stat().st_size > 1000
    assert len(fig.axes) >= 2
    # checkpoint state round trip
    s2 = GradNormStats()
    s2.load_state_dict(stats.state_dict())
    assert s2.histograms == stats.histograms


def test_long_tail_statistic():
    assert long_tail(torch.ones(10)) == pytest.approx(1.0)
    g = torch.tensor([1.0] * 99 + [100.0])
    assert long_tail(g) == pytest.approx((99 + 1e4) / 100 / (199 / 100) ** 2)
    assert long_tail(g) > 20
    with pytest.raises(ValueError, match="bins"):
        GradNormStats(bins=0)
    with pytest.raises(ValueError, match="histograms"):
        plot_gradnorm([])


def test_registered_through_entry_point():
    assert {"atas", "atta"} <= set(tb.names("defense"))
    assert "atas-gradnorm" in tb.names("callback")
    plugins = tb.plugins()
    assert "atas" in set(plugins.iloc[:, 0].astype(str)) or "atas" in plugins.to_string()
    from toolbox.testing import check_repro_configs

    configs = check_repro_configs("atas", includes={"cifar10_atas_preactresnet18.toml"},
                                  quick={"mnist_atas_cpu.toml"})
    assert {c.build_defense().name for c in configs.values()} == {"atas", "atta"}
