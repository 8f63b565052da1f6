"""MNIST CPU scale-down in CI: ATAS at eps 0.3 with the aggressive largest step 2 eps.

The issue's bar: clean >= 95 % and PGD-20 >= 75 % in <= 4 epochs; and FGSM-RS at the same
fixed step overfits catastrophically.  One seed (0) and no strong attacks here (about 35 s per
run on one idle thread, 2-3 minutes on a loaded 2-core machine); ``python
-m toolbox_atas.compare --seeds 0 1 2 --check`` (``tox -e repro-atas``) runs the 3-seed
comparison with FGSM-RS at the same step, PGD-50x5 and APGD-CE.  Measured over seeds 0-2 (3
epochs, first 1,000 test images): see the plugin README.

The cheap tests below check the comparison's helpers (the no-rollback CO monitor, the claim
checker) on the digits data.
"""

from __future__ import annotations

import warnings

import pandas as pd
import pytest
import torch
from toolbox_atas.compare import COMonitor, check, make_defense, run_one

import toolbox as tb


@pytest.mark.slow
def test_atas_mnist_scale_down_reaches_the_bar():
    row = run_one("atas", 0, epochs=3, n_eval=500, strong=False)
    print(row)
    assert row["clean"] >= 0.95, row
    assert row["pgd20"] >= 0.75, row
    assert row["co_events"] == 0 and row["co_first_step"] == -1, row   # monitored every 100 steps
    assert row["co_max_gap"] <= 0.5, row
    assert 0.075 <= row["mean_step"] < 0.6, row                         # the adaptive step did shrink
    assert check(pd.DataFrame([row])) == []


@pytest.mark.slow
def test_fgsm_rs_at_two_eps_overfits_catastrophically():
    # the baseline at the same (fixed) step: FGSM-RS collapses within the first epoch.  Seeds
    # 0-2 measured: first CO check at step 300-600, held-batch FGSM - PGD gap 0.78-0.92,
    # final PGD-20 0-24 % (see the README); the bounds below leave room for other seeds
    row = run_one("fgsm-rs", 0, epochs=3, n_eval=500, strong=False)
    print(row)
    assert row["co_events"] >= 1 and 0 < row["co_first_step"] <= 1200, row
    assert row["co_max_gap"] > 0.5, row                                 # FGSM acc >> PGD acc
    assert row["pgd20"] <= 0.5, row


def test_co_monitor_records_events_without_rollback(digits_data):
    x, y, _, _ = digits_data
    data = tb.data.Dataset(x[:200], y[:200], num_classes=10, name="digits-sub")
    torch.manual_seed(0)
    model = tb.models.create("digits-cnn")
    # a near-clean "weak" attack and a strong PGD: the FGSM - PGD gap is about the clean
    # accuracy, so every check after the model has learned something fires
    weak = tb.attack("fgsm", threat=tb.Linf(1e-4))
    strong = tb.attack("pgd", threat=tb.Linf(0.5), steps=5, step_size=0.2)
    mon = COMonitor(strong, weak, batch=50, action="continue", every=4, gap_threshold=0.3, seed=0)
    tr = tb.Trainer(model, make_defense("fgsm-rs", eps=0.1, step=0.2), optimizer={"name": "adam", "lr": 0.01},
                    batch_size=20, seed=0, callbacks=[mon])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)               # no "rolled back" warning
        tr.fit(data, epochs=2)
    assert [c[0] for c in mon.checks] == [0, 4, 8, 12, 16, 20]
    assert len(mon.events) >= 2
    assert all(e["good_step"] == mon.events[0]["good_step"] for e in mon.events)
    # no rollback: the final weights are the trained ones, not the last good check's
    after = tr.model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert any(not torch.equal(mon.good_state[k], after[k]) for k in after)


def test_check_names_each_failed_claim():
    ok = {"method": "atas", "seed": 0, "clean": 0.97, "pgd20": 0.9, "co_events": 0}
    fg = {"method": "fgsm-rs", "seed": 0, "clean": 0.9, "pgd20": 0.1, "co_events": 4}
    assert check(pd.DataFrame([ok, fg])) == []
    bad = dict(ok, seed=1, clean=0.94, pgd20=0.7, co_events=2)
    fails = check(pd.DataFrame([ok, bad, fg]))
    assert len(fails) == 3 and all("seed 1" in f for f in fails)
    fails = check(pd.DataFrame([ok, dict(fg, pgd20=0.95)]))
    assert len(fails) == 1 and "does not beat FGSM-RS" in fails[0]
    with pytest.raises(ValueError, match="co_action"):
        run_one("atas", 0, co_action="stop")
    with pytest.raises(ValueError, match="method"):
        make_defense("pgd")
