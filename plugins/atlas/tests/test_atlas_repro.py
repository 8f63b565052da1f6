"""Reproduction configs (strict validation, registered through the hook) and the tutorial's
--quick mode."""

from pathlib import Path

import pytest
from toolbox_atlas import FGSMKL, MultiTargeted

import toolbox as tb
from toolbox.config import load
from toolbox.testing import check_repro_configs, run_script
from toolbox.train.guided import GuidedLR

HERE = Path(__file__).resolve().parents[1]
TUTORIAL = HERE.parents[1] / "tutorials" / "local_stability_atlas.py"


def test_repro_configs_are_registered_and_valid():
    configs = check_repro_configs(
        "atlas", includes={"mnist_atlas_paper.toml", "mnist_adv_paper.toml", "mnist_trades_paper.toml",
                           "mnist_atlas20_paper.toml", "cifar10_atlas.toml"},
        quick={"mnist_atlas_cpu.toml"})
    for name, cfg in configs.items():
        d = cfg.build_defense()
        assert isinstance(d, tb.Defense) and d.name == ("trades" if "trades" in name else "atlas")


def test_mnist_table1_configs_follow_the_paper():
    one, adv, twenty = (load(HERE / "repro" / n) for n in ("mnist_atlas_paper.toml", "mnist_adv_paper.toml",
                                                           "mnist_atlas20_paper.toml"))
    d1, da, d20 = one.build_defense(), adv.build_defense(), twenty.build_defense()
    assert (d1.alpha, d1.beta) == (1e-5, 0.3) and (da.alpha, da.beta) == (0.0, 0.0) and (d20.alpha, d20.beta) == (5e-6, 0.2)
    for d in (d1, da):
        assert d.attack.name == "fgsm" and d.attack.random_start and d.attack.step_size == pytest.approx(0.375)
    assert d20.attack.name == "pgd" and d20.attack.steps == 20 and d20.attack.step_size == pytest.approx(0.01)
    assert one.train.batch_size == 128
    atk = one.build_eval_attacks()
    assert atk["pgd1000"].steps == 1000 and atk["un-t"].restarts == 20
    assert {e.metric: e for e in one.paper.expect}["pgd1000"].value == pytest.approx(89.56)
    assert {e.metric: e for e in adv.paper.expect}["pgd1000"].value == pytest.approx(83.25)
    for cfg, value in ((one, 92.04), (adv, 90.62), (twenty, 92.74)):
        mt = cfg.build_eval_attacks()["multi-t"]
        assert isinstance(mt, MultiTargeted) and (mt.steps, mt.restarts, mt.targets) == (50, 20, None)
        assert {e.metric: e for e in cfg.paper.expect}["multi-t"].value == pytest.approx(value)
    tr = one.build_trainer(one.build_model())
    assert any(isinstance(cb, GuidedLR) and cb.plateau == 2 and cb.factor == 5.0 for cb in tr.callbacks)


def test_one_step_trades_config_follows_the_paper():
    """Table 1's one-step TRADES: the fastat plugin's TRADES loss (beta 1) on one FGSM step on KL
    from a uniform start, step 1.25 eps, with the one-step ATLAS config's schedule and attacks."""
    trades, one = (load(HERE / "repro" / n) for n in ("mnist_trades_paper.toml", "mnist_atlas_paper.toml"))
    d = trades.build_defense()
    assert d.name == "trades" and d.beta == 1.0
    assert isinstance(d.attack, FGSMKL) and d.attack.threat.eps == pytest.approx(0.3) and d.attack.step_size is None
    assert trades.train.batch_size == one.train.batch_size and trades.train.epochs == one.train.epochs
    assert set(trades.build_eval_attacks()) == set(one.build_eval_attacks())
    exp = {e.metric: e.value for e in trades.paper.expect}
    assert exp["pgd1000"] == pytest.approx(83.05) and exp["multi-t"] == pytest.approx(90.02)


@pytest.mark.slow  # 15-30 s on a loaded machine
def test_tutorial_quick_runs(tmp_path):
    out = run_script(TUTORIAL, "--quick", "--out", tmp_path, timeout=300)
    assert "unbiased" in out and "atlas" in out and "apgd-ce" in out
    assert (tmp_path / "co.png").stat().st_size > 1000
