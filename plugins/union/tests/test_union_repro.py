"""Reproduction configs (strict validation, registered through the hook), the benchmark and
the tutorial's --quick mode."""

import sys
from pathlib import Path

import pytest
from toolbox_union import MSD, MSDDefense, PGDAug, WorstPGD
from toolbox_union.smoke import fake_cifar10, smoke_overrides, smoke_run

import toolbox as tb
from toolbox.cli import repro_configs
from toolbox.config import load
from toolbox.testing import check_repro_configs, run_script

HERE = Path(__file__).resolve().parents[1]
TUTORIAL = HERE.parents[1] / "tutorials" / "union_of_threat_models.py"
TABLE52 = {"p_inf": 1.4, "p_2": 0.4, "p_1": 0.0, "worst_pgd": 53.7, "pgd_aug": 15.6, "msd": 58.7}


def test_repro_configs_are_registered_and_valid():
    configs = check_repro_configs("union", includes={f"mnist_table52_{k}.toml" for k in TABLE52} | {"cifar10_msd.toml"},
                                  quick={"mnist_msd_cpu.toml"})
    for cfg in configs.values():
        atks = cfg.build_eval_attacks()
        assert {a.threat.name for a in atks.values()} == {"linf", "l2", "l1"}


def test_table52_configs_follow_the_thesis():
    for key, all_attacks in TABLE52.items():
        cfg = load(HERE / "repro" / f"mnist_table52_{key}.toml")
        d = cfg.build_defense()
        assert cfg.train.epochs == 20 and cfg.train.batch_size == 100
        expect = {e.metric: e for e in cfg.paper.expect}
        assert expect["worst-case"].minimum == pytest.approx(all_attacks)
        atks = cfg.build_eval_attacks()
        assert all(a.restarts == 10 for a in atks.values())
        assert [atks[k].threat.eps for k in ("pgd-linf", "pgd-l2", "pgd-l1")] == [0.3, 1.5, 12.0]
        if key == "msd":
            assert isinstance(d, MSDDefense) and isinstance(d.attack, MSD)
            assert d.attack.steps == 100 and d.attack.step_size == (0.01, 0.2, 0.05)
        elif key in ("worst_pgd", "pgd_aug"):
            assert isinstance(d, WorstPGD if key == "worst_pgd" else PGDAug)
            assert [a.steps for a in d.attacks.values()] == [50, 100, 50]
        else:
            assert isinstance(d.attack, tb.Attack) and d.attack.name == "pgd"


@pytest.mark.slow  # ~15-40 s on a loaded machine
def test_tutorial_quick_runs(tmp_path):
    out = run_script(TUTORIAL, "--quick", "--out", tmp_path, timeout=300)
    assert "msd" in out and "all inside the union: True" in out and "l1" in out
    assert (tmp_path / "union_bars.png").stat().st_size > 1000


def test_benchmark_msd_shares_the_backward_pass():
    sys.path.insert(0, str(HERE / "benchmarks"))
    try:
        import bench_union
    finally:
        sys.path.pop(0)
    r = bench_union.bench(batch=20, steps=3, repeats=1)
    # one forward+backward plus three forwards per MSD step vs three forward+backward passes
    assert r["ratio"] < 1.2 and r["msd_s_per_iter"] > 0


def test_smoke_overrides_shrink_every_config_to_one_step(tmp_path):
    """Every shipped config (CIFAR-10 included) still validates with the tiny-budget overrides,
    which shrink only the budget."""
    for p in repro_configs("union"):
        ov = smoke_overrides(p, n_train=50, n_eval=10)
        cfg = load(p, ov)
        assert cfg.train.epochs == 1 and cfg.eval.n == 10 and cfg.data.n_train == 50
        d = cfg.build_defense()
        atks = list(d.attacks.values()) if isinstance(d, (WorstPGD, PGDAug)) else [d.attack]
        assert all(a.steps == 1 for a in atks), p.name
        assert all(a.steps == 1 and a.restarts == 1 for a in cfg.build_eval_attacks().values()), p.name
        full = load(p)   # radii and model untouched
        assert cfg.model == full.model
        assert [a.threat.eps for a in cfg.build_eval_attacks().values()] == \
            [a.threat.eps for a in full.build_eval_attacks().values()]
    root = fake_cifar10(tmp_path / "c10", n_per_batch=4)
    test = tb.data.load("cifar10", split="test", root=str(root))
    assert tuple(test.x.shape) == (4, 3, 32, 32) and len(tb.data.load("cifar10", root=str(root))) == 20


@pytest.mark.slow  # ~10 s: two Table 5.2 configs trained and evaluated on a tiny budget
@pytest.mark.parametrize("key", ["msd", "pgd_aug"])
def test_table52_config_runs_end_to_end_on_a_tiny_budget(key, tmp_path):
    r = smoke_run(HERE / "repro" / f"mnist_table52_{key}.toml", tmp_path / "run", n_train=100, n_eval=10)
    assert {"eval.csv", "eval.md", "history.csv", "config.toml", "checkpoints"} <= set(r["files"])
    acc = {row["attack"]: row["accuracy"] for row in r["rows"]}
    assert set(acc) == {"clean", "pgd-linf", "pgd-l2", "pgd-l1", "worst-case"}
    assert all(acc["worst-case"] <= v + 1e-12 for v in acc.values())
    assert all(row["max_norm"] <= row["eps"] * (1 + 1e-5) for row in r["rows"] if row["kind"] == "attack")
    resolved = load(tmp_path / "run" / "config.toml")   # the run used the shrunk budget
    assert resolved.train.epochs == 1 and resolved.data.n_train == 100
