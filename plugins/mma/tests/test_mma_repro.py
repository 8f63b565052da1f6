"""Reproduction configs (strict validation, registered through the hook), the margin
reports, and the tutorial's --quick mode."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from toolbox_mma import MMA, PGDLS, grid_report, margin_report, margins

import toolbox as tb
from toolbox.config import load
from toolbox.testing import check_repro_configs, run_script

HERE = Path(__file__).resolve().parents[1]
TUTORIAL = HERE.parents[1] / "tutorials" / "max_margin_mma.py"


def test_repro_configs_are_registered_and_valid():
    configs = check_repro_configs(
        "mma", includes={"mnist_mma_linf_0.45.toml", "mnist_pgdls_linf_0.45.toml", "mnist_mma_l2_2.toml",
                         "mnist_mma_l2_4.toml", "cifar10_mma_linf_32.toml"},
        quick={"mnist_mma_cpu.toml", "mnist_pgd045_cpu.toml", "mnist_pgdls_cpu.toml"})
    for cfg in configs.values():
        assert isinstance(cfg.build_defense(), (MMA, PGDLS))


def test_paper_settings():
    linf = load(HERE / "repro" / "mnist_mma_linf_0.45.toml")
    d = linf.build_defense()
    assert d.d_max == 0.45 and d.eps_max == pytest.approx(0.4725) and d.eps_min == 0.1
    assert d.attack.steps == 40 and d.attack.bisection_steps == 10 and d.clean_weight == pytest.approx(1 / 3)
    assert linf.train.batch_size == 50 and linf.train.epochs == 91
    # the paper's white-box protocol: per radius, 50 PGD-100 restarts, half CE, half CW
    atks = linf.build_eval_attacks()
    assert linf.eval.groups["pgd100@0.3"] == ["pgd100-ce@0.3", "pgd100-cw@0.3"]
    for name, loss in (("pgd100-ce@0.3", "ce"), ("pgd100-cw@0.3", "cw")):
        atk = atks[name]
        assert atk.steps == 100 and atk.step_size == pytest.approx(0.0075) and atk.restarts == 25
        assert atk.loss == loss
    assert {e.metric for e in linf.paper.expect} == {"clean", *linf.eval.groups}
    assert [c["name"] for c in linf.callbacks] == ["mma-margins", "mma-best-margin"]
    for name in ("mnist_mma_linf_0.45.toml", "mnist_pgdls_linf_0.45.toml"):
        best = load(HERE / "repro" / name).build_callbacks()[-1]
        assert type(best).__name__ == "BestMargin" and best.n == 5000 and best.steps == 40
    l2 = load(HERE / "repro" / "mnist_mma_l2_4.toml").build_defense()
    assert l2.threat.name == "l2" and l2.d_max == 4.0 and l2.eps_min == 0.5
    ls = load(HERE / "repro" / "mnist_pgdls_linf_0.45.toml").build_defense()
    assert ls.ramp_epochs == 50 and ls.attack.threat.eps == 0.45


def test_margin_and_grid_reports(digits_model, digits_data):
    _, _, xt, yt = digits_data
    atk = tb.attack("an-pgd", threat=tb.Linf(0.3), steps=10, eps_init=0.1, bisection_loss="lm", seed=0)
    m = margins(digits_model, (xt, yt), atk, n=100)
    assert m.shape == (100,) and float(m.min()) >= 0 and float(m.max()) <= 0.3 + 1e-6
    with torch.no_grad():
        wrong = digits_model(xt[:100]).argmax(1) != yt[:100]
    assert torch.all(m[wrong] == 0)
    rep = margin_report(digits_model, (xt, yt), atk, n=100)
    assert rep["q25"] <= rep["median"] <= rep["q75"] and rep["n"] == 100
    # a PGD at radius slightly above an example's margin breaks it far more often than one below
    pgd = tb.attack("pgd", threat=tb.Linf(0.1), steps=10, step_size=0.02, seed=0)
    row = grid_report(digits_model, (xt, yt), pgd, [0.02, 0.05, 0.1], n=100)
    assert list(row.columns) == ["clean", "AvgAcc", "AvgRobAcc", "0.02", "0.05", "0.1"]
    r = row.iloc[0]
    assert r["clean"] >= r["0.02"] >= r["0.1"]
    assert r["AvgRobAcc"] == pytest.approx((r["0.02"] + r["0.05"] + r["0.1"]) / 3)
    # the fraction of examples whose AN-PGD margin exceeds eps is close to robust accuracy at eps
    frac = 100 * float((m > 0.05).float().mean())
    assert abs(frac - r["0.05"]) <= 15.0


@pytest.mark.slow
def test_tutorial_quick(tmp_path):
    stdout = run_script(TUTORIAL, "--quick", "--out", tmp_path, timeout=300)
    assert "AN-PGD margins" in stdout and "AvgRobAcc" in stdout and "margin_mean" in stdout
    assert (tmp_path / "mma_margins.png").stat().st_size > 1000
