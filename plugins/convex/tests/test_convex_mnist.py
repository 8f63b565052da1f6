"""The MNIST reproduction: configs load and are registered, and a shortened CPU scale-down of
``repro/mnist_convex_cpu.toml`` (Wide(1), r = 10 projections, 5,000 training images, 3 epochs
= 300 steps) brings the *exact* certified error at eps 0.1 far below 100 % (a standard model
is at ~100 %, Table 3.1).  The full scale-down (10,000 images, 4 epochs, 300 certified test
images) runs in ``tox -e repro-convex``; its expectations are in ``toolbox_convex.repro``."""

from __future__ import annotations

import pytest
import torch
from toolbox_convex.repro import CERTIFIED, repro_dir, run

from toolbox.cli import repro_configs
from toolbox.config import load

torch.set_num_threads(1)


def test_repro_configs_are_registered_and_have_certified_expectations():
    paths = repro_configs("convex")
    names = {p.stem for p in paths}
    assert {"mnist_convex_cpu", "mnist_convex_table31", "mnist_convex_table35",
            "cifar10_convex_small_2"} <= names
    assert set(CERTIFIED) <= names
    for p in paths:
        cfg = load(p)
        assert cfg.paper is not None and cfg.paper.expect
        assert cfg.defense.name == "convex"
        assert CERTIFIED[p.stem]["paper"] is not None
    quick = [load(p) for p in paths if load(p).paper.quick]
    assert [c.name for c in quick] == ["convex-mnist-cpu"]
    # the paper's figures are the paper's: Table 3.1 robust model, 1.80 % clean error
    t31 = load(repro_dir() / "mnist_convex_table31.toml")
    assert {e.metric: e.value for e in t31.paper.expect}["clean"] == pytest.approx(98.20)
    assert CERTIFIED["mnist_convex_table31"]["paper"] == pytest.approx(100 - 5.82)
    assert CERTIFIED["mnist_convex_table35"]["paper"] == pytest.approx(100 - 4.99)


@pytest.mark.slow
def test_mnist_scale_down_certifies_far_below_100_percent_error():
    cfg = load(repro_dir() / "mnist_convex_cpu.toml",
               ["data.n_train=5000", "train.epochs=3", "eval.n=200", "train.device=cpu"])
    res = run(cfg, cert_n=100, log=lambda s: None)
    acc = res["table"]["accuracy"]
    rows = {r["metric"].split(" ")[0]: r for r in res["rows"]}
    certified = rows["certified"]["measured"] / 100
    print(res["rows"], res["seconds"])
    # certified error at eps 0.1 far below 100 % (measured ~0.6-0.7 certified here)
    assert certified >= 0.45, res["rows"]
    assert acc["clean"] >= 0.8, res["rows"]
    # certified (first 100 images) <= PGD (first 200) <= clean, with sampling slack
    assert certified <= acc["pgd40"] + 0.08 and acc["pgd40"] <= acc["clean"]
    assert res["history"]["train_robust_err"].iloc[-1] < 0.6
