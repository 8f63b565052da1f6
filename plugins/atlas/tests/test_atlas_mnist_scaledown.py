"""MNIST CPU scale-down, reduced for CI: the catastrophic-overfitting mechanism of one-step ATLAS
and the paper's remedy (a larger alpha), digest §1.9 check 7, on one seed.

Setting (``toolbox_atlas.experiments.run``, ``best_val=None``: the last epoch is evaluated):
eps 0.3, mnist-small, FGSM-RS adversary (start not clamped, step 0.375), beta 0.3, Adam with a
cyclic LR peaking at 5e-3, batch 100, 3 epochs (1,800 steps) on the 60k training images; clean
and PGD-20 (step 0.01) on the first 1,000 test images, APGD-CE (100 steps) on the first 200.

With the paper's MNIST alpha 1e-5, seed 0 overfits catastrophically (measured: clean 95.9 %,
PGD-20 21.5 %, APGD-CE 2.5 %; training-adversary accuracy -> 94 %; ‖J(x')‖²_F -> ~280).  With
alpha 1e-3 the same seed trains normally (94.8 % / 78.7 %, ‖J(x')‖²_F ~70).  The test asserts
that contrast (what the CO monitor of the paper's Fig. 11 shows).  The issue's comparison of
one-step ATLAS with FGSM-RS over 3 seeds did NOT hold at this scale (see the plugin README); it
is the opt-in ``python -m toolbox_atlas.experiments --seeds 0 1 2`` (``tox -e repro-atlas``),
which exits 1 when it misses.  About 2.5 minutes on one idle thread.
"""

import pytest
import torch
from toolbox_atlas.experiments import run, summary_row

import toolbox as tb

torch.set_num_threads(1)


@pytest.mark.slow
def test_larger_alpha_prevents_catastrophic_overfitting_on_mnist(record_property):
    train, test = tb.data.load("mnist", split="train"), tb.data.load("mnist", split="test")
    kw = dict(seed=0, beta=0.3, train_data=train, test_data=test, best_val=None, n_apgd=100)
    paper = run("atlas", alpha=1e-5, **kw)
    stable = run("atlas", alpha=1e-3, **kw)
    for name, r in (("alpha=1e-5", paper), ("alpha=1e-3", stable)):
        record_property(name, summary_row(r))
        print(name, summary_row(r))
    # the paper-alpha run collapsed: PGD-20 far below clean while >90 % of its FGSM training adversaries fail
    assert paper["pgd20"] < 40.0 and paper["clean"] > 90.0
    assert paper["history"]["train_adv_acc"].iloc[-1] > 0.9
    # the larger alpha did not, and ended with a much smaller Jacobian at the adversary
    assert stable["clean"] >= 92.0 and stable["pgd20"] >= 65.0
    assert stable["pgd20"] > paper["pgd20"] + 30.0
    assert 2 * stable["final_train_jac"] < paper["final_train_jac"]
