"""MNIST CPU scale-down in CI: ATAS vs FGSM-RS at the aggressive step 2 eps (eps = 0.3).

One seed (0) here; ``python -m toolbox_atas.compare --seeds 0 1 2 --check`` (``tox -e
repro-atas``) runs the full comparison with PGD-50x5 and APGD-CE.  About 3-4 minutes on one
thread of a loaded 2-core machine (2 x 3 epochs of full MNIST).
"""

from __future__ import annotations

import pytest
from toolbox_atas.compare import check, run_one


@pytest.mark.slow
def test_atas_beats_fgsm_rs_at_two_eps():
    import pandas as pd

    rows = [run_one(m, 0, epochs=3, n_eval=500, strong=False) for m in ("atas", "fgsm-rs")]
    df = pd.DataFrame(rows).set_index("method")
    print(df.to_string())
    atas, fgsm = df.loc["atas"], df.loc["fgsm-rs"]
    # the bar for the scale-down: clean >= 95 %, PGD-20 >= 75 % in <= 4 epochs
    assert atas["clean"] >= 0.95, atas
    assert atas["pgd20"] >= 0.75, atas
    # at the same largest step, FGSM-RS overfits catastrophically and ATAS does not
    assert atas["pgd20"] >= fgsm["pgd20"] + 0.3, df
    assert atas["co_events"] <= fgsm["co_events"], df
    assert atas["co_events"] == 0, df
    assert 0.075 <= atas["mean_step"] < 0.6                         # the adaptive step did shrink
    assert check(df.reset_index()) == []
