"""The MNIST scale-down (eps 0.3) of SEAT against FGSM-AT (zero init, step eps), one seed in CI.

SEAT (lambda 0.5) must reach clean >= 95 % and PGD-20 >= 75 % (first 1,000 test images) after
2 epochs (1,200 optimizer steps; runs with fewer steps from scratch at eps 0.3 may never leave
the constant predictor, environment.md §4C); when FGSM-AT collapses (PGD-20 < 20 %), SEAT's
linearity error at the end of training must be at least 10x below FGSM-AT's, both for g maximised
over the eps-ball (the criterion; the monitor's ``lin_err_max``) and, on this seed, for g of the
FGSM perturbation.  Seed 1 is used because FGSM-AT collapses there on this setup (so the g
comparison is exercised; measured ratios ~22x and ~24x).  The 3-seed version does not fit the CI
budget (one seed pair takes 1.5-3 minutes on one thread, and fewer optimizer steps leave MNIST at
eps 0.3 at chance): it is ``tox -e repro-seat`` (``python -m toolbox_seat.experiments``, 3 epochs).
"""

import pytest
from toolbox_seat.experiments import check, collapsed, run, summary_row


@pytest.mark.slow
def test_seat_beats_fgsm_at_on_mnist_and_keeps_g_small(record_property):
    import toolbox as tb

    train, test = tb.data.load("mnist", split="train"), tb.data.load("mnist", split="test")
    seat = run("seat", seed=1, epochs=2, train_data=train, test_data=test, monitor_every=200)
    fgsm = run("fgsm-at", seed=1, epochs=2, train_data=train, test_data=test, monitor_every=200)
    for r in (seat, fgsm):
        record_property(r["method"], summary_row(r))
    print("SEAT", summary_row(seat), "\nFGSM-AT", summary_row(fgsm))
    assert seat["clean"] >= 95.0
    assert seat["pgd20"] >= 75.0
    assert not collapsed(seat)
    res = check([seat, fgsm])
    assert res["ok"], res["failures"]
    if collapsed(fgsm):
        assert res["collapsed_seeds"] == [1] and res["ratios"][1] >= 10
        assert seat["gamma_final"] * 10 <= fgsm["gamma_final"]
        assert seat["g_final"] * 10 <= fgsm["g_final"]
    assert seat["gamma_final"] >= seat["g_final"]          # the maximum is over a set holding the FGSM point
    # SEAT's own training-time linearity error is logged and stays finite and small
    assert seat["history"]["train_lin_err"].max() < 1.0
