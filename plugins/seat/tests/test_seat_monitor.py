"""The CO diagnostic: LinearityMonitor in a Trainer run, its history columns and plot."""

import math

import pandas as pd
import pytest
import torch
from toolbox_seat import LinearityMonitor, measure_linearity
from toolbox_seat.plot import linearity_curves

import toolbox as tb


def test_registered_through_the_entry_point():
    assert "seat" in tb.names("attack") and "seat" in tb.names("defense")
    assert "linearity-monitor" in tb.names("callback")
    df = tb.plugins().set_index("plugin")
    assert df.loc["seat", "distribution"] == "toolbox-seat"


def test_monitor_logs_g_beside_pgd_accuracy_and_plots(tmp_path, toolbox_seed):
    train = tb.data.load("digits", split="train")
    test = tb.data.load("digits", split="test")
    model = tb.models.create("digits-cnn", seed=toolbox_seed)
    mon = LinearityMonitor(n=100, every=10, seed=toolbox_seed)
    d = tb.defense("seat", threat=tb.Linf(0.1), lam=0.5)
    trainer = tb.Trainer(model, d, optimizer=torch.optim.Adam(model.parameters(), lr=3e-3), batch_size=64,
                         seed=toolbox_seed, callbacks=[mon])
    hist = trainer.fit(train, epochs=2, val_data=test)
    for col in ("lin_err", "lin_err_batch", "lin_pgd_acc", "lin_clean_acc", "lin_probe_acc", "train_lin_err"):
        assert col in hist.columns, col
        assert hist[col].notna().all()
    spe = trainer.steps_per_epoch
    steps = sorted({0, spe, 2 * spe} | set(range(10, 2 * spe + 1, 10)))
    assert [r["step"] for r in mon.records] == steps
    rec = mon.dataframe()
    assert (rec["lin_err"] >= rec["lin_err_batch"] - 1e-9).all()   # mean |r| >= |mean r|
    assert ((rec["lin_pgd_acc"] >= 0) & (rec["lin_pgd_acc"] <= rec["lin_clean_acc"])).all()
    assert rec["lin_clean_acc"].iloc[-1] > rec["lin_clean_acc"].iloc[0]   # it trained
    assert hist["lin_err"].iloc[-1] == pytest.approx(rec["lin_err"].iloc[-1])
    fig = linearity_curves({"seat": rec, "history": hist}, tmp_path / "g.png")
    assert (tmp_path / "g.png").stat().st_size > 1000
    assert len(fig.axes) == 2 and fig.axes[0].get_yscale() == "log"
    # resumable state
    mon2 = LinearityMonitor(n=100)
    mon2.load_state_dict(mon.state_dict())
    assert mon2.records == mon.records


def test_measure_linearity_matches_the_function(digits_model, digits_data):
    from toolbox_seat import linearity_error

    x, y = digits_data[2][:60], digits_data[3][:60]
    fgsm = tb.attack("fgsm", threat=tb.Linf(0.2))
    m = measure_linearity(digits_model, x, y, fgsm, None)
    assert "lin_pgd_acc" not in m
    with tb.attack_mode(digits_model):
        delta = fgsm(digits_model, x, y) - x
        g = linearity_error(digits_model, x, y, delta, reduction="mean").detach()
    assert m["lin_err"] == pytest.approx(float(g), rel=1e-5)
    assert 0 < m["lin_probe_acc"] <= m["lin_clean_acc"]
    assert all(p.grad is None for p in digits_model.parameters())


def test_monitor_and_plot_bad_arguments():
    with pytest.raises(ValueError, match="n must"):
        LinearityMonitor(n=0)
    with pytest.raises(ValueError, match="every"):
        LinearityMonitor(every=0)
    with pytest.raises(ValueError, match="split"):
        LinearityMonitor(split="test")
    with pytest.raises(ValueError, match="runs"):
        linearity_curves({})
    with pytest.raises(ValueError, match="lin_err"):
        linearity_curves({"a": pd.DataFrame({"x": [1.0]})})
    assert math.isfinite(1.0)
