"""Reproduction configs (strict validation, registered through the hook) and the tutorial's
--quick mode."""

from pathlib import Path

import pytest

import toolbox as tb
from toolbox.config import load
from toolbox.testing import check_repro_configs, run_script

HERE = Path(__file__).resolve().parents[1]
TUTORIAL = HERE.parents[1] / "tutorials" / "local_linearity_seat.py"


def test_repro_configs_are_registered_and_valid():
    configs = check_repro_configs("seat", includes={"cifar10_seat.toml", "cifar10_seat_code.toml"},
                                  quick={"mnist_seat_cpu.toml"})
    for cfg in configs.values():
        d = cfg.build_defense()
        assert isinstance(d, tb.Defense) and d.name == "seat"


def test_cifar_configs_follow_the_paper_and_the_code():
    paper, code = load(HERE / "repro" / "cifar10_seat.toml"), load(HERE / "repro" / "cifar10_seat_code.toml")
    dp, dc = paper.build_defense(), code.build_defense()
    assert dp.lam == 0.5 and dp.attack.loss == "mm" and dp.reduction == "mean" and dp.double_backprop
    assert dc.lam == 0.6 and dc.attack.loss == "mm-prob" and dc.reduction == "batch" and not dc.double_backprop
    for d in (dp, dc):
        assert d.attack.threat.eps == pytest.approx(8 / 255) and d.flood == 0.0
    assert paper.train.epochs == 30 and paper.train.batch_size == 128
    atk = paper.build_eval_attacks()["pgd50x10"]
    assert atk.steps == 50 and atk.restarts == 10 and atk.step_size == pytest.approx(2 / 255)


@pytest.mark.slow  # 15-20 s on a loaded machine
def test_tutorial_quick_runs(tmp_path):
    out = run_script(TUTORIAL, "--quick", "--out", tmp_path, timeout=300)
    assert "quadratic" in out and "seat" in out and "apgd-ce" in out
    assert (tmp_path / "linearity.png").stat().st_size > 1000
