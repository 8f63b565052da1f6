"""The plugin's reproduction configs: found through the toolbox_repro_configs hook, valid,
and the CPU scale-down carries the issue's thresholds."""

from __future__ import annotations

from toolbox_fastat.plugin import repro_dir, toolbox_repro_configs

import toolbox as tb
from toolbox.config import load
from toolbox.testing import check_repro_configs


def test_hook_lists_valid_configs():
    paths = toolbox_repro_configs()
    assert all(p.parent == repro_dir() for p in paths)
    # the hook is wired into the plugin manager (what `toolbox repro fastat` reads)
    configs = check_repro_configs("fastat", includes={"mnist_fgsm_rs_paper.toml", "cifar10_fgsm_rs_30ep.toml",
                                                      "cifar10_free_m8.toml"},
                                  quick={"mnist_fgsm_rs_cpu.toml"})
    assert set(configs) == {p.name for p in paths}
    for cfg in configs.values():
        d = cfg.build_defense()
        assert isinstance(d, tb.Defense) and d.name in tb.names("defense")


def test_cpu_scaledown_config_is_the_paper_recipe_with_the_issue_bands():
    cfg = load(repro_dir() / "mnist_fgsm_rs_cpu.toml")
    d = cfg.build_defense()
    assert d.name == "fgsm-rs" and d.attack.threat.eps == 0.3 and d.attack.step_size == 0.375
    assert not d.attack.clamp_start
    assert cfg.train.epochs == 3 and cfg.train.batch_size == 100 and cfg.optimizer.name == "adam"
    assert cfg.schedule["lr"] == {"kind": "cyclic", "peak": 0.005, "peak_at": 0.4}
    assert cfg.eval.n == 1000
    lows = {e.metric: e.minimum if e.minimum is not None else e.value - e.tolerance for e in cfg.paper.expect}
    assert lows["clean"] == 95.0 and lows["pgd20"] == 80.0 and lows["pgd50x5"] == 60.0
    assert "apgd-ce" in lows
    atk = cfg.build_eval_attacks()
    assert atk["pgd20"].steps == 20 and atk["pgd20"].step_size == 0.01
    assert atk["pgd50x5"].restarts == 5 and atk["apgd-ce"].name == "apgd"
