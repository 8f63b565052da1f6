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


@pytest.mark.slow  # ~8-13 s on a loaded machine
def test_monitor_logs_g_beside_pgd_accuracy_and_plots(tmp_path, toolbox_seed):
    train = tb.data.load("digits", split="train")
    test = tb.data.load("digits", split="test")
    model = tb.models.create("digits-cnn", seed=toolbox_seed)
    mon = LinearityMonitor(n=100, every=10, seed=toolbox_seed)
    d = tb.defense("seat", threat=tb.Linf(0.1), lam=0.5)
    trainer = tb.Trainer(model, d, optimizer=torch.optim.Adam(model.parameters(), lr=3e-3), batch_size=64,
                         seed=toolbox_seed, callbacks=[mon])
    hist = trainer.fit(train, epochs=2, val_data=test)
    for col in ("lin_err", "lin_err_batch", "lin_err_pgd", "lin_err_max", "lin_pgd_acc", "lin_clean_acc",
                "lin_probe_acc", "train_lin_err"):
        assert col in hist.columns, col
        assert hist[col].notna().all()
    spe = trainer.steps_per_epoch
    steps = sorted({0, spe, 2 * spe} | set(range(10, 2 * spe + 1, 10)))
    assert [r["step"] for r in mon.records] == steps
    rec = mon.dataframe()
    assert (rec["lin_err"] >= rec["lin_err_batch"] - 1e-9).all()   # mean |r| >= |mean r|
    # the maximised error is at least the error at the FGSM and the PGD points, per example
    assert (rec["lin_err_max"] >= rec[["lin_err", "lin_err_pgd"]].max(axis=1) - 1e-6).all()
    assert ((rec["lin_pgd_acc"] >= 0) & (rec["lin_pgd_acc"] <= rec["lin_clean_acc"])).all()
    assert rec["lin_clean_acc"].iloc[-1] > rec["lin_clean_acc"].iloc[0]   # it trained
    assert hist["lin_err"].iloc[-1] == pytest.approx(rec["lin_err"].iloc[-1])
    fig = linearity_curves({"seat": rec, "history": hist}, tmp_path / "g.png")
    assert (tmp_path / "g.png").stat().st_size > 1000
    assert len(fig.axes) == 3 and fig.axes[0].get_yscale() == "log" and fig.axes[1].get_yscale() == "log"
    assert len(linearity_curves({"fgsm only": rec[["epoch", "lin_err"]]}).axes) == 2
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
    assert m["lin_err_max"] > m["lin_err"]          # the ascent finds more than the FGSM point
    assert all(p.grad is None for p in digits_model.parameters())
    # an l2 probe: g of its delta, but no l-inf maximisation
    m2 = measure_linearity(digits_model, x, y, tb.attack("fgsm", threat=tb.L2(1.0)), None)
    assert "lin_err_max" not in m2 and m2["lin_err"] > 0


def test_monitor_and_plot_bad_arguments():
    with pytest.raises(ValueError, match="n must"):
        LinearityMonitor(n=0)
    with pytest.raises(ValueError, match="every"):
        LinearityMonitor(every=0)
    with pytest.raises(ValueError, match="split"):
        LinearityMonitor(split="test")
    with pytest.raises(ValueError, match="max_steps"):
        LinearityMonitor(max_steps=-1)
    with pytest.raises(ValueError, match="max_restarts"):
        LinearityMonitor(max_restarts=1.5)
    with pytest.raises(ValueError, match="runs"):
        linearity_curves({})
    with pytest.raises(ValueError, match="lin_err"):
        linearity_curves({"a": pd.DataFrame({"x": [1.0]})})
    assert math.isfinite(1.0)


def test_max_linearity_error_is_a_maximum_over_the_ball(digits_model, digits_data):
    from toolbox_seat import linearity_error, max_linearity_error

    x, y = digits_data[2][:80], digits_data[3][:80]
    eps = 0.2
    fgsm = tb.attack("fgsm", threat=tb.Linf(eps))
    with tb.attack_mode(digits_model):
        x_f = fgsm(digits_model, x, y)
        g_f = linearity_error(digits_model, x, y, x_f - x).detach()
        gam, x_best = max_linearity_error(digits_model, x, y, eps, steps=10, starts=[x_f],
                                          generator=torch.Generator().manual_seed(0))
        # the value is g at the returned points, which lie in the ball and the box
        g_best = linearity_error(digits_model, x, y, x_best - x).detach()
        assert torch.allclose(gam, g_best, rtol=1e-4, atol=1e-6)
        assert (x_best - x).abs().max() <= eps + 1e-6 and x_best.min() >= 0 and x_best.max() <= 1
        assert (gam >= g_f - 1e-6).all()            # never below a given start
        # the ascent finds more than random vertices alone, and more than FGSM on average
        gam0, _ = max_linearity_error(digits_model, x, y, eps, steps=0, restarts=1,
                                      generator=torch.Generator().manual_seed(0))
        assert gam.mean() > 1.5 * gam0.mean() and gam.mean() > g_f.mean()
        # more budget can only raise the estimate (same first restart, then more)
        gam3, _ = max_linearity_error(digits_model, x, y, eps, steps=10, restarts=3, starts=[x_f],
                                      generator=torch.Generator().manual_seed(0))
        assert (gam3 >= gam - 1e-6).all()
    assert all(p.grad is None for p in digits_model.parameters())
    with pytest.raises(ValueError, match="steps"):
        max_linearity_error(digits_model, x, y, eps, steps=-1)
    with pytest.raises(ValueError, match="starts or restarts"):
        max_linearity_error(digits_model, x, y, eps, restarts=0)
    with pytest.raises(ValueError, match="shape"):
        max_linearity_error(digits_model, x, y, eps, starts=[x[:3]])


def _res(method, seed, clean, pgd20, g, gamma):
    return {"method": method, "seed": seed, "clean": clean, "pgd20": pgd20, "g_final": g, "gamma_final": gamma}


def test_check_uses_the_maximised_measure_and_reports_ratios():
    from toolbox_seat.experiments import check

    # seed 0: FGSM-AT robust (no g requirement); seed 1: collapsed, 2.5x in g but 20x in gamma
    rs = [_res("seat", 0, 97, 85, 0.1, 0.4), _res("fgsm-at", 0, 96, 70, 0.3, 1.0),
          _res("seat", 1, 97, 85, 0.1, 0.4), _res("fgsm-at", 1, 95, 10, 0.25, 8.0)]
    r = check(rs)
    assert r["ok"] and r["collapsed_seeds"] == [1] and r["ratios"][1] == pytest.approx(20.0)
    r = check(rs, measure="g")
    assert not r["ok"] and "2.5x" in r["failures"][0]
    rs[0]["pgd20"] = 70.0
    assert check(rs)["failures"] == ["seed 0: SEAT PGD-20 70.0 < 75.0"]
    with pytest.raises(ValueError, match="measure"):
        check(rs, measure="median")
