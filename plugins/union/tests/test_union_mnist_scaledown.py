"""The small MNIST reproduction of the Table 5.2 pattern (digest check 6.5-6), CPU scale-down:
half the thesis radii (ℓ∞ 0.15, ℓ2 0.75, ℓ1 6), 6,000 training images, 3 epochs (180 Adam
steps), 5-step training attacks, PGD-10 per norm on 300 test images.

Measured (seed 0, one thread): P∞ clean 85.0, ℓ∞ 47.0, ℓ2 72.0, ℓ1 61.0, all 46.7;
P1 96.3 / 4.7 / 86.3 / 71.7, all 4.7; MSD 97.7 / 77.3 / 93.0 / 80.7, all 74.7.
The thesis (full radii, 20 epochs, foolbox attacks too): P1 0.0 on ℓ∞, P∞ 1.4 on ℓ1, MSD
(63.7, 82.6, 62.3), all 58.7."""

import pytest
import torch
from toolbox_union.experiments import CPU_SCALE_DOWN, run

torch.set_num_threads(1)


@pytest.mark.slow  # ~1.5-3 minutes on one thread (three trainings)
def test_table52_pattern_on_mnist():
    r = {m: run(m, 0, **CPU_SCALE_DOWN) for m in ("p-inf", "p-1", "msd")}
    for m, v in r.items():
        rep = v["report"]
        assert v["all"] <= min(v["linf"], v["l2"], v["l1"]) + 1e-9, m
        assert (rep["accuracy"]["all attacks"] <= rep["accuracy"] + 1e-12).all(), m
        assert v["clean"] > 80, (m, v["clean"])          # trained, not stuck at chance
    # P1 is near zero against ℓ∞ (thesis: 0.0 %) though robust in its own norm
    assert r["p-1"]["linf"] < 15 and r["p-1"]["l1"] > 50
    # MSD keeps non-trivial accuracy against all three norms
    assert min(r["msd"]["linf"], r["msd"]["l2"], r["msd"]["l1"]) > 40 and r["msd"]["all"] > 40
    # ... and beats both single-norm models over all attacks and P∞ against ℓ1
    assert r["msd"]["all"] > max(r["p-inf"]["all"], r["p-1"]["all"]) + 10
    assert r["msd"]["l1"] > r["p-inf"]["l1"] + 10   # measured 80.7 vs 61.0 (seed 1: 80.0 vs 63.0)
