"""The CPU scale-down of the thesis' MNIST FGSM-RS result (Table 4.4) on real MNIST.

Paper-exact FGSM-RS (eps 0.3, alpha 0.375, random start not clamped), ``mnist-small``, Adam with
a cyclic LR peaking at 5e-3 at 2/5 of training, batch 100, **3 epochs** (the paper: 10).
Thresholds from the issue: clean >= 95%, PGD-20 (alpha 0.01, first 1,000 test images) >= 80%,
PGD-50x5 >= 60%; APGD-CE (first 200) is reported beside them, since PGD with alpha 0.01
overstates the robustness of short runs.  Measured on this machine (environment.md §4A and
this plugin's runs): seed 0 gives clean 97.0%, PGD-20 89.3%, PGD-50x5 74.9%, APGD-CE 73.5%;
seed 1 gives 96.5 / 88.0 / 67.5 / 56.5.  One-epoch runs sometimes stick at chance (§4C);
three epochs (1,800 steps) did not in any seed tried.  The catastrophic-overfitting detector
rides along and must stay quiet on this paper-exact run.  About a minute on one thread.
"""

from __future__ import annotations

import math

import pytest
import torch
from toolbox_fastat.experiments import evaluate_mnist, train_mnist

from toolbox.train.callbacks import CODetector

torch.set_num_threads(1)


@pytest.mark.slow
def test_fgsm_rs_3_epochs_reaches_the_scaledown_figures():
    det = CODetector(every="epoch", batch=200, action="stop")
    model, history, _ = train_mnist("fgsm-rs", epochs=3, seed=0, step_size=0.375, callbacks=[det])
    acc = evaluate_mnist(model, n=1000, n_apgd=200, seed=0)
    print("fastat scale-down (3 epochs, seed 0):",
          ", ".join(f"{k} {v:.1f}%" for k, v in acc.items()))
    assert len(history) == 3 and history["lr"].iloc[-1] == 0.0
    assert det.events == [] and list(history["co_event"]) == [0, 0, 0]
    assert acc["clean"] >= 95.0, acc
    assert acc["pgd20"] >= 80.0, acc
    assert acc["pgd50x5"] >= 60.0, acc
    # reported beside them: a real number, no higher than the clean accuracy on those 200
    assert math.isfinite(acc["apgd-ce"]) and 0.0 <= acc["apgd-ce"] <= acc["clean@apgd"]
    # PGD with restarts is at least as strong as one PGD-20 run
    assert acc["pgd50x5"] <= acc["pgd20"]
