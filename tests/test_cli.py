"""The ``toolbox`` command line: in-process through ``toolbox.cli.main`` (exit code + captured
output) and one real subprocess of the installed console script."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pandas as pd
import pytest
import torch

import toolbox as tb
from toolbox.cli import main
from toolbox.plugins import system

TINY = """
name = "tiny"
[model]
name = "digits-cnn"
[data]
name = "digits"
val = 100
n_train = 600
n_test = 100
[defense]
name = "adversarial"
[defense.attack]
name = "fgsm"
threat = { name = "linf", eps = 0.05 }
random_start = true
[optimizer]
name = "adam"
lr = 0.005
[train]
epochs = 2
batch_size = 50
seed = 0
[eval]
n = 100
[eval.attacks.pgd5]
attack = "pgd"
threat = "linf"
eps = 0.05
steps = 5
"""


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("cfg") / "tiny.toml"
    p.write_text(TINY)
    return p


@pytest.fixture(scope="module")
def trained_run(tiny_config, tmp_path_factory):
    """One real `toolbox train` run (2 epochs on 500 digits), shared by the tests below."""
    torch.set_num_threads(1)
    run_dir = tmp_path_factory.mktemp("runs") / "tiny"
    code = main(["train", str(tiny_config), "--run-dir", str(run_dir), "--set", "eval.n=80"])
    assert code == 0
    return run_dir


# ------------------------------------------------------------------------------- plugins/list
def test_plugins_table_and_json(capsys):
    code, out, _ = run(capsys, "plugins")
    assert code == 0
    header = out.splitlines()[0].split()
    assert header[:4] == ["plugin", "version", "builtin", "status"]
    assert "builtin-attacks" in out and "attack: fgsm, pgd" in out
    code, out, _ = run(capsys, "plugins", "--json")
    assert code == 0
    rows = json.loads(out)
    df = tb.plugins()
    assert [r["plugin"] for r in rows] == list(df["plugin"])
    attacks = next(r for r in rows if r["plugin"] == "builtin-attacks")
    assert attacks["builtin"] is True and "attack:pgd" in attacks["registers"]


def test_console_script_subprocess():
    exe = Path(sys.executable).parent / "toolbox"
    exe = str(exe) if exe.exists() else shutil.which("toolbox")
    assert exe, "the toolbox console script is not installed"
    env = {**os.environ, "TOOLBOX_DISABLE_PLUGIN_AUTOLOAD": "1"}
    proc = subprocess.run([exe, "plugins"], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    for name in ("builtin-threats", "builtin-attacks", "builtin-defenses", "builtin-datasets"):
        assert name in proc.stdout
    proc = subprocess.run([exe, "list", "nonsense"], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("toolbox: error: unknown kind 'nonsense'")
    assert "Traceback" not in proc.stderr


def test_python_dash_m():
    env = {**os.environ, "TOOLBOX_DISABLE_PLUGIN_AUTOLOAD": "1"}
    proc = subprocess.run([sys.executable, "-m", "toolbox", "list", "threat"], capture_output=True,
                          text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    assert all(n in proc.stdout for n in ("linf", "l2", "l1"))


def test_list_kinds(capsys):
    code, out, _ = run(capsys, "list", "attack")
    assert code == 0
    for name in tb.names("attack"):
        assert name in out
    assert "APGD on the DLR loss." in out  # one-line docs
    code, out, _ = run(capsys, "list", "--json")
    assert code == 0
    kinds = {e["kind"] for e in json.loads(out)}
    assert {"attack", "defense", "threat", "model", "dataset", "callback"} <= kinds
    code, _, err = run(capsys, "list", "atack")
    assert code == 2 and "unknown kind 'atack'" in err


def test_usage_errors(capsys):
    code, _, err = run(capsys, "train")
    assert code == 2 and "config" in err
    code, _, err = run(capsys)
    assert code == 2
    code, out, _ = run(capsys, "--version")
    assert code == 0 and tb.__version__ in out


# ------------------------------------------------------------------------------------ train
def test_train_writes_run_directory(trained_run):
    files = {p.relative_to(trained_run).as_posix() for p in trained_run.rglob("*") if p.is_file()}
    for f in ("config.toml", "config.json", "history.csv", "curves.png", "checkpoints/last.pt",
              "eval.csv", "eval.md"):
        assert f in files, (f, sorted(files))
    hist = pd.read_csv(trained_run / "history.csv")
    assert len(hist) == 2
    report = pd.read_csv(trained_run / "eval.csv")
    assert list(report["attack"]) == ["clean", "pgd5", "worst-case"]
    acc = dict(zip(report["attack"], report["accuracy"]))
    assert acc["clean"] > 0.5  # 2 epochs on digits learn something
    assert acc["worst-case"] <= min(acc["clean"], acc["pgd5"])
    md = (trained_run / "eval.md").read_text()
    assert md.startswith("| attack |") and "worst-case" in md
    # the resolved config: defaults filled in, --set applied, loadable again
    resolved = tomllib.loads((trained_run / "config.toml").read_text())
    assert resolved["eval"]["n"] == 80 and resolved["train"]["device"] == "cpu"
    meta = json.loads((trained_run / "config.json").read_text())
    assert meta["fingerprint"] == tb.config.load(trained_run / "config.toml").fingerprint()


def test_eval_checkpoint(trained_run, capsys):
    ckpt = trained_run / "checkpoints" / "last.pt"
    code, out, err = run(capsys, "eval", str(ckpt), "--attack", "fgsm,pgd", "--eps", "0.05",
                         "--steps", "5", "--n", "60")
    assert code == 0, err
    lines = out.splitlines()
    names = [ln.split()[0] for ln in lines[3:]]
    assert names == ["clean", "fgsm", "pgd-5", "worst-case"]
    # the worst case is the per-example worst case: no better than any single attack
    acc = {ln.split()[0]: float(ln.split()[1]) for ln in lines[3:]}
    assert acc["worst-case"] <= min(acc.values())
    # the config's own [eval.attacks] by default, JSON output
    code, out, _ = run(capsys, "eval", str(ckpt), "--n", "40", "--json")
    assert code == 0
    assert [r["attack"] for r in json.loads(out)] == ["clean", "pgd5", "worst-case"]


def test_eval_matches_train_report(trained_run, capsys):
    """`toolbox eval` on the final checkpoint reproduces the report written by `train`."""
    ckpt = trained_run / "checkpoints" / "last.pt"
    code, out, _ = run(capsys, "eval", str(ckpt), "--n", "80", "--json")
    assert code == 0
    got = {r["attack"]: r["accuracy"] for r in json.loads(out)}
    want = pd.read_csv(trained_run / "eval.csv").set_index("attack")["accuracy"].to_dict()
    assert got == pytest.approx(want, abs=1e-9)


def test_set_override_changes_the_run(tiny_config, tmp_path, capsys):
    run_dir = tmp_path / "r"
    code, _, err = run(capsys, "train", str(tiny_config), "--run-dir", str(run_dir),
                       "--set", "train.epochs=1", "--set", 'defense.name="standard"',
                       "--set", "data.n_train=200", "--set", "eval.attacks={}", "--set", "eval.n=20")
    assert code == 0, err
    resolved = tomllib.loads((run_dir / "config.toml").read_text())
    assert resolved["train"]["epochs"] == 1 and resolved["defense"]["name"] == "standard"
    assert len(pd.read_csv(run_dir / "history.csv")) == 1
    assert list(pd.read_csv(run_dir / "eval.csv")["attack"]) == ["clean", "worst-case"]


# ------------------------------------------------------------------------------- bad input
def test_bad_config_key_and_name(tiny_config, tmp_path, capsys):
    code, _, err = run(capsys, "train", str(tiny_config), "--run-dir", str(tmp_path / "a"),
                       "--set", "train.epoch=1")
    assert code == 2
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "unknown key 'train.epoch'" in err and "Did you mean 'epochs'" in err
    code, _, err = run(capsys, "train", str(tiny_config), "--run-dir", str(tmp_path / "b"),
                       "--set", 'defense.attack.name="pgdd"')
    assert code == 2 and "unknown attack 'pgdd'" in err and "Available:" in err
    code, _, err = run(capsys, "train", str(tmp_path / "missing.toml"))
    assert code == 2 and "config file not found" in err
    assert not (tmp_path / "a").exists()  # nothing written on a config error


def test_missing_dataset(tiny_config, tmp_path, capsys):
    code, _, err = run(capsys, "train", str(tiny_config), "--run-dir", str(tmp_path / "r"),
                       "--set", 'data.name="cifar10"', "--set", f'data.root="{tmp_path}"')
    assert code == 2 and err.count("\n") == 1
    assert "dataset 'cifar10' not found" in err and str(tmp_path) in err and "To install" in err


def test_corrupt_and_foreign_checkpoints(trained_run, tmp_path, capsys):
    shutil.copy(trained_run / "config.toml", tmp_path / "config.toml")
    bad = tmp_path / "corrupt.pt"
    bad.write_bytes(b"\x00not a checkpoint" * 10)
    code, _, err = run(capsys, "eval", str(bad), "--n", "10")
    assert code == 2 and "corrupt" in err and str(bad) in err
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    code, _, err = run(capsys, "eval", str(foreign), "--n", "10")
    assert code == 2 and "not a toolbox checkpoint" in err
    code, _, err = run(capsys, "eval", str(tmp_path / "nope.pt"))
    assert code == 2 and "checkpoint not found" in err
    lonely = tmp_path / "sub" / "deeper" / "x" / "m.pt"
    lonely.parent.mkdir(parents=True)
    shutil.copy(trained_run / "checkpoints" / "last.pt", lonely)
    code, _, err = run(capsys, "eval", str(lonely))
    assert code == 2 and "--config" in err
    code, _, err = run(capsys, "eval", str(trained_run / "checkpoints" / "last.pt"), "--attack", "pgdd",
                       "--eps", "0.1")
    assert code == 2 and "unknown attack 'pgdd'" in err
    code, _, err = run(capsys, "eval", str(trained_run / "checkpoints" / "last.pt"), "--attack", "pgd")
    assert code == 2 and "--eps" in err


def test_resume_checks(trained_run, tiny_config, tmp_path, capsys):
    # a run directory that already holds a run is not overwritten
    code, _, err = run(capsys, "train", str(tiny_config), "--run-dir", str(trained_run))
    assert code == 2 and "already holds a run" in err
    # a resume with a config that differs is refused, naming the difference
    code, _, err = run(capsys, "train", str(tiny_config), "--run-dir", str(trained_run), "--resume",
                       "--set", "eval.n=80", "--set", "optimizer.lr=0.01")
    assert code == 2 and "differs" in err and "optimizer.lr: 0.005 -> 0.01" in err
    code, _, err = run(capsys, "train", str(tiny_config), "--resume")
    assert code == 2 and "--resume needs --run-dir" in err
    code, _, err = run(capsys, "train", str(tiny_config), "--resume", "--run-dir", str(tmp_path / "none"))
    assert code == 2 and "holds no run" in err


def test_resume_continues_from_checkpoint(tiny_config, tmp_path, capsys):
    """Resuming a finished run with the same config continues from its last checkpoint:
    nothing more to train, the same weights and history, a fresh eval report."""
    run_dir = tmp_path / "r"
    args = ["train", str(tiny_config), "--run-dir", str(run_dir), "--set", "eval.attacks={}",
            "--set", "eval.n=20", "--set", "data.n_train=200"]
    code, _, err = run(capsys, *args)
    assert code == 0, err
    before = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    code, out, err = run(capsys, *args, "--resume")
    assert code == 0, err
    after = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert after["step"] == before["step"]
    assert len(pd.read_csv(run_dir / "history.csv")) == 2
    for k, v in before["model"].items():
        assert torch.equal(v, after["model"][k])


# ------------------------------------------------------------------------------------ repro
REPRO = """
name = "{name}"
[model]
name = "digits-cnn"
[data]
name = "digits"
n_train = 400
n_test = 60
[defense]
name = "standard"
[optimizer]
name = "adam"
lr = 0.005
[train]
epochs = 1
batch_size = 50
[eval]
n = 60
[eval.attacks.fgsm]
attack = "fgsm"
threat = "linf"
eps = 0.05
[paper]
title = "A fake paper"
quick = {quick}
[[paper.expect]]
metric = "clean"
value = {value}
tolerance = {tol}
source = "Table 1"
"""


class FakePlugin:
    """A plugin registered at run time: repro configs and one extra CLI command."""

    def __init__(self, paths):
        self.paths = paths

    @tb.hookimpl
    def toolbox_repro_configs(self):
        return self.paths

    @tb.hookimpl
    def toolbox_add_commands(self, subparsers):
        p = subparsers.add_parser("fake-hello", help="say hello")
        p.add_argument("--who", default="world")
        p.set_defaults(func=lambda args: print(f"hello {args.who}") or 0)


@pytest.fixture
def fake_plugin(tmp_path):
    made = []

    def register(*configs):
        paths = []
        for i, (value, tol, quick) in enumerate(configs):
            p = tmp_path / f"repro_{i}.toml"
            p.write_text(REPRO.format(name=f"fake-{i}", value=value, tol=tol,
                                      quick="true" if quick else "false"))
            paths.append(p)
        system().register(FakePlugin(paths), "fakepaper")
        made.append("fakepaper")
        return paths

    yield register
    for name in made:
        system().unregister(name)


def test_repro_pass(fake_plugin, tmp_path, capsys):
    fake_plugin((50.0, 50.0, True))
    code, out, err = run(capsys, "repro", "fakepaper", "--run-dir", str(tmp_path / "runs"))
    assert code == 0, err
    lines = out.splitlines()
    header = next(ln for ln in lines if ln.startswith("config "))
    assert header.split()[:6] == ["config", "metric", "source", "paper", "tolerance", "measured"]
    row = next(ln for ln in lines if ln.startswith("fake-0"))
    assert "clean" in row and "Table 1" in row and row.rstrip().endswith("pass")
    assert "1/1 figures within tolerance" in out
    assert (tmp_path / "runs" / "fake-0" / "eval.csv").exists()
    assert "pass" in (tmp_path / "runs" / "repro.md").read_text()


def test_repro_miss_and_quick(fake_plugin, tmp_path, capsys):
    # an impossible figure: exactly 0% clean accuracy after training
    fake_plugin((50.0, 50.0, False), (0.0, 0.0, True))
    code, out, _ = run(capsys, "repro", "fakepaper", "--quick", "--run-dir", str(tmp_path / "q"))
    assert code == 1
    assert "fake-0" not in out  # --quick runs only the paper.quick configs
    row = next(ln for ln in out.splitlines() if ln.startswith("fake-1"))
    assert row.rstrip().endswith("FAIL")
    assert "0/1 figures within tolerance" in out
    code, out, _ = run(capsys, "repro", "fakepaper", "--list")
    assert code == 0 and "fake-0" in out and "fake-1" in out


def test_repro_unknown_plugin(fake_plugin, capsys):
    fake_plugin((50.0, 50.0, True))
    code, _, err = run(capsys, "repro", "nosuchpaper")
    assert code == 2 and "unknown plugin 'nosuchpaper'" in err and "fakepaper" in err
    code, _, err = run(capsys, "repro", "builtin-attacks")
    assert code == 2 and "ships no reproduction configs" in err


def test_plugin_adds_command(fake_plugin, capsys):
    fake_plugin()
    code, out, _ = run(capsys, "fake-hello", "--who", "tests")
    assert code == 0 and out.strip() == "hello tests"
