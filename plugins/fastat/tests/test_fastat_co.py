"""Catastrophic overfitting reproduced on real MNIST and caught by the detector.

FGSM-RS with the random start clamped to [0, 1] before the gradient (environment.md §4B: a
CO trigger on MNIST), eps 0.3, alpha 0.375, Adam cyclic peak 5e-3 at 2/5, batch 100, 2 epochs,
seed 2.  Measured with this plugin (PGD-5 / FGSM accuracy on the detector's 200 training
images every 100 steps): seed 2 collapses (PGD 0.03-0.05 while FGSM stays at 0.95 from step
700 on); seeds 0, 1, 3 end with PGD 0.5-0.76 (CO is seed dependent).  The paper-exact run
(start not clamped) is checked quiet in test_fastat_scaledown.py.  ~30-60 s on one thread.
"""

from __future__ import annotations

import pytest
import torch
from toolbox_fastat.overfit import co_experiment

import toolbox as tb

torch.set_num_threads(1)

SEED = 2


def run(train, detect: bool):
    model = tb.models.create("mnist-small", seed=SEED)
    d = tb.defense("fgsm-rs", threat=tb.Linf(0.3), step_size=0.375, clamp_start=True)
    return co_experiment(model, d, train, 2, optimizer={"name": "adam", "lr": 5e-3},
                         lr_schedule={"kind": "cyclic", "peak": 5e-3, "peak_at": 0.4}, seed=SEED,
                         detect=detect, every=100, check_batch=200)


def accuracies(model, x, y):
    g = torch.Generator().manual_seed(0)
    fgsm = tb.attack("fgsm", threat=tb.Linf(0.3))(model, x, y)
    pgd = tb.attack("pgd", threat=tb.Linf(0.3), steps=20, step_size=0.01)(model, x, y, generator=g)
    with torch.no_grad():
        clean = model(x).argmax(1) == y
        return tuple(((model(a).argmax(1) == y) & clean).float().mean().item() for a in (fgsm, pgd))


@pytest.mark.slow
def test_clamped_start_collapses_and_the_detector_rolls_back():
    train, test = tb.data.load("mnist"), tb.data.load("mnist", split="test")
    x, y, _ = test.tensors()
    x, y = x[:500], y[:500]

    watched = run(train, detect=False)                     # the collapse, only logged
    last = watched.checks.iloc[-1]
    assert not watched.collapsed and last["fgsm_acc"] - last["pgd_acc"] > 0.7, watched.checks
    f_fgsm, f_pgd = accuracies(watched.trainer.model.eval(), x, y)
    assert f_pgd < 0.2 and f_fgsm - f_pgd > 0.5, (f_fgsm, f_pgd)        # ground truth on test images

    with pytest.warns(RuntimeWarning, match="catastrophic overfitting detected"):
        caught = run(train, detect=True)
    assert caught.collapsed and len(caught.events) == 1
    ev = caught.events[0]
    assert ev["good_step"] < ev["step"] and caught.trainer.stop_training
    model = caught.trainer.model.eval()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in caught.detector.good_state.items())
    b_fgsm, b_pgd = accuracies(model, x, y)
    assert b_fgsm - b_pgd < f_fgsm - f_pgd                  # less of the CO signature than the free run
