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
from toolbox import config as C
from toolbox.cli import main

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
[eval.groups]
"pgd@0.05" = ["pgd5"]
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


def test_python_dash_m_help_and_debug_traceback(tmp_path):
    env = {**os.environ, "TOOLBOX_DISABLE_PLUGIN_AUTOLOAD": "1"}
    proc = subprocess.run([sys.executable, "-m", "toolbox", "--help"], capture_output=True, text=True,
                          timeout=120, env=env)
    assert proc.returncode == 0 and proc.stdout.startswith("usage: toolbox")
    proc = subprocess.run([sys.executable, "-m", "toolbox", "--debug", "eval", str(tmp_path / "x.pt")],
                          capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 1
    assert "Traceback" in proc.stderr and "checkpoint not found" in proc.stderr.splitlines()[-1]


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


def test_list_one_component(capsys):
    code, out, _ = run(capsys, "list", "attack", "pgd")
    assert code == 0
    assert out.startswith("attack 'pgd' (plugin builtin-attacks)")
    args = {ln.split()[0]: ln.split()[1] for ln in out.split("arguments")[1].splitlines()[3:] if ln.strip()}
    assert args["threat"] == "(required)" and args["steps"] == "10" and "restarts" in args
    code, out, _ = run(capsys, "list", "model", "wide-resnet", "--json")
    assert code == 0
    info = json.loads(out)
    assert info["name"] == "wide-resnet" and {"depth", "width"} <= {a["argument"] for a in info["arguments"]}
    code, _, err = run(capsys, "list", "attack", "pgdd")
    assert code == 2 and "Did you mean 'pgd'" in err


@pytest.mark.parametrize("argv", [[], ["plugins"], ["list"], ["train"], ["eval"], ["repro"]])
def test_help(capsys, argv):
    code, out, err = run(capsys, *argv, "--help")
    assert code == 0 and not err
    assert out.startswith("usage: toolbox" + "".join(" " + a for a in argv))
    if argv == ["train"]:
        assert "--set KEY=VALUE" in out and "--resume" in out
    if not argv:
        assert all(c in out for c in ("plugins", "list", "train", "eval", "repro", "--debug"))


@pytest.mark.parametrize("argv, fragment", [
    (["train"], "the following arguments are required: config (see toolbox train --help)"),
    (["lst"], "invalid choice 'lst'. Did you mean 'list'?"),
    (["eval", "x.pt", "--eps", "big"], "argument --eps: invalid float value: 'big'"),
    (["plugins", "--jsn"], "unrecognized arguments: --jsn"),
])
def test_usage_errors_are_one_line(capsys, argv, fragment):
    code, out, err = run(capsys, *argv)
    assert code == 2 and not out
    assert err.startswith("toolbox: error: ") and err.count("\n") == 1 and fragment in err


def test_no_command_and_version(capsys):
    code, _, err = run(capsys)
    assert code == 2 and err.startswith("usage: toolbox")
    code, out, _ = run(capsys, "--version")
    assert code == 0 and tb.__version__ in out


def test_debug_shows_the_exception(tmp_path, capsys):
    missing = str(tmp_path / "missing.toml")
    assert run(capsys, "train", missing)[0] == 2
    for argv in (["--debug", "train", missing], ["train", missing, "--debug"]):
        with pytest.raises(FileNotFoundError, match="config file not found"):
            main(argv)


# ------------------------------------------------------------------------------------ train
def test_train_writes_run_directory(trained_run):
    files = {p.relative_to(trained_run).as_posix() for p in trained_run.rglob("*") if p.is_file()}
    for f in ("config.toml", "config.json", "history.csv", "curves.png", "checkpoints/last.pt",
              "eval.csv", "eval.md"):
        assert f in files, (f, sorted(files))
    hist = pd.read_csv(trained_run / "history.csv")
    assert len(hist) == 2
    report = pd.read_csv(trained_run / "eval.csv")
    assert list(report["attack"]) == ["clean", "pgd5", "worst-case", "pgd@0.05"]  # [eval.groups] row last
    acc = dict(zip(report["attack"], report["accuracy"], strict=True))
    assert acc["pgd@0.05"] == acc["pgd5"]
    assert acc["clean"] > 0.5  # 2 epochs on digits learn something
    assert acc["worst-case"] <= min(acc["clean"], acc["pgd5"])
    md = (trained_run / "eval.md").read_text()
    assert md.startswith("| attack |") and "worst-case" in md
    # the resolved config: defaults filled in, --set applied, loadable again
    resolved = tomllib.loads((trained_run / "config.toml").read_text())
    assert resolved["eval"]["n"] == 80 and resolved["train"]["device"] == "cpu"
    meta = json.loads((trained_run / "config.json").read_text())
    assert meta["fingerprint"] == C.load(trained_run / "config.toml").fingerprint()


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
    assert [r["attack"] for r in json.loads(out)] == ["clean", "pgd5", "worst-case", "pgd@0.05"]


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
    assert code == 2 and "eval.groups.pgd@0.05: 'pgd5' is not under [eval.attacks]" in err  # groups need their attacks
    code, _, err = run(capsys, "train", str(tiny_config), "--run-dir", str(run_dir),
                       "--set", "train.epochs=1", "--set", 'defense.name="standard"',
                       "--set", "data.n_train=200", "--set", "eval.attacks={}", "--set", "eval.groups={}",
                       "--set", "eval.n=20")
    assert code == 0, err
    resolved = tomllib.loads((run_dir / "config.toml").read_text())
    assert resolved["train"]["epochs"] == 1 and resolved["defense"]["name"] == "standard"
    assert len(pd.read_csv(run_dir / "history.csv")) == 1
    assert list(pd.read_csv(run_dir / "eval.csv")["attack"]) == ["clean", "worst-case"]


# ---------------------------------------------------------------------------- shipped configs
#: tiny settings for each shipped config (the full runs take from 10 s to minutes)
SHIPPED = {
    "digits_standard.toml": ["train.epochs=2", "eval.n=100"],
    "digits_pgd.toml": ["train.epochs=2", "eval.n=100", "callbacks.0.n=50", "defense.attack.steps=3"],
    "mnist_fgsm_rs.toml": ["train.epochs=1", "data.n_train=1000", "eval.n=50", "eval.attacks.pgd50x5.steps=5",
                           "eval.attacks.pgd50x5.restarts=2", "eval.attacks.apgd-ce.steps=10"],
}


def test_every_shipped_config_has_an_end_to_end_test():
    assert {p.name for p in C.example_configs()} == set(SHIPPED)


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_config_end_to_end(name, tmp_path, capsys):
    """`toolbox train` on each shipped config with tiny settings, then `toolbox eval` on its
    checkpoint reproduces the report (the best weights where robust early stopping keeps them)."""
    torch.set_num_threads(1)
    path = next(p for p in C.example_configs() if p.name == name)
    cfg = C.load(path)
    run_dir = tmp_path / "run"
    sets = [a for o in SHIPPED[name] for a in ("--set", o)]
    code, out, err = run(capsys, "train", str(path), "--run-dir", str(run_dir), *sets)
    assert code == 0, err
    assert f"run directory: {run_dir}" in out
    for f in ("config.toml", "config.json", "history.csv", "curves.png", "checkpoints/last.pt", "eval.csv",
              "eval.md"):
        assert (run_dir / f).is_file(), f
    hist = pd.read_csv(run_dir / "history.csv")
    epochs = C.load(run_dir / "config.toml").train.epochs
    assert list(hist["epoch"]) == list(range(epochs)) and hist["step"].iloc[-1] > 0
    report = pd.read_csv(run_dir / "eval.csv").set_index("attack")
    assert list(report.index) == ["clean", *cfg.eval.attacks, "worst-case"]
    assert (report["accuracy"] <= report.loc["clean", "accuracy"] + 1e-9).all()
    assert report.loc["worst-case", "accuracy"] == report["accuracy"].min()
    if name.startswith("digits"):
        assert report.loc["clean", "accuracy"] > 0.3  # two epochs on digits learn something
    robust_es = any(cb["name"] == "robust-early-stopping" for cb in cfg.callbacks)
    ckpt = run_dir / ("best.pt" if robust_es else "checkpoints/last.pt")
    assert ckpt.is_file()
    code, out, err = run(capsys, "eval", str(ckpt), "--json")
    assert code == 0, err
    got = {r["attack"]: r["accuracy"] for r in json.loads(out)}
    assert got == pytest.approx(report["accuracy"].to_dict(), abs=1e-9)


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


def test_build_errors_leave_no_run_directory(tiny_config, tmp_path, capsys):
    # values only the component itself rejects (at build time) are caught before anything is written
    for i, bad in enumerate(["defense.attack.step_size=-1", "eval.attacks.pgd5.restarts=0"]):
        code, _, err = run(capsys, "train", str(tiny_config), "--run-dir", str(tmp_path / str(i)),
                           "--set", bad)
        assert code == 2 and err.count("\n") == 1, err
        assert f"[{bad.rsplit('.', 1)[0]}]" in err
        assert not (tmp_path / str(i)).exists()


def test_missing_dataset(tiny_config, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("TOOLBOX_DATA", raising=False)
    code, _, err = run(capsys, "train", str(tiny_config), "--run-dir", str(tmp_path / "r"),
                       "--set", 'data.name="cifar10"', "--set", f'data.root="{tmp_path}"')
    assert code == 2 and err.count("\n") == 1 and err.startswith("toolbox: error: dataset 'cifar10' not found")
    assert str(tmp_path) in err and "To install" in err and "--set data.root=DIR" in err
    assert not (tmp_path / "r").exists()


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
    # a real checkpoint of another model
    code, _, err = run(capsys, "eval", str(trained_run / "checkpoints" / "last.pt"), "--set",
                       'model.name="mnist-small"')
    assert code == 2 and "does not fit the config's model 'mnist-small'" in err and err.count("\n") == 1


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
    args = ["train", str(tiny_config), "--run-dir", str(run_dir), "--set", "eval.attacks={}", "--set", "eval.groups={}",
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
    # a run stopped before its first checkpoint: --resume starts it over, and a seeded run
    # reproduces the same weights
    shutil.rmtree(run_dir / "checkpoints")
    code, out, err = run(capsys, *args, "--resume")
    assert code == 0, err
    assert "starting from epoch 0" in out
    again = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert again["step"] == before["step"]
    for k, v in before["model"].items():
        assert torch.equal(v, again["model"][k]), k


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
def fake_plugin(tmp_path, toolbox_plugin):
    """``register((value, tolerance, quick), ...)``: write one repro config per tuple and
    register a plugin "fakepaper" returning their paths (or ``paths=`` as given)."""

    def register(*configs, paths=None):
        if paths is None:
            paths = []
            for i, (value, tol, quick) in enumerate(configs):
                p = tmp_path / f"repro_{i}.toml"
                p.write_text(REPRO.format(name=f"fake-{i}", value=value, tol=tol,
                                          quick="true" if quick else "false"))
                paths.append(p)
        toolbox_plugin(FakePlugin(paths), "fakepaper")  # unregistered after the test
        return paths

    return register


def _repro_csv(root: Path) -> list[dict]:
    return pd.read_csv(root / "repro.csv").to_dict(orient="records")


def test_repro_pass(fake_plugin, tmp_path, capsys):
    fake_plugin((50.0, 50.0, False))
    code, out, err = run(capsys, "repro", "fakepaper", "--run-dir", str(tmp_path / "runs"))
    assert code == 0, err
    lines = out.splitlines()
    header = next(ln for ln in lines if ln.startswith("config "))
    assert header.split() == ["config", "metric", "source", "paper", "expected", "tolerance", "bounds", "measured",
                              "diff", "result"]
    line = next(ln for ln in lines if ln.startswith("fake-0 "))
    (row,) = _repro_csv(tmp_path / "runs")
    # not a scale-down: the expected value is the paper's figure, printed beside the measured one
    assert (row["config"], row["metric"], row["source"], row["paper"], row["expected"]) == \
        ("fake-0", "clean", "Table 1", 50.0, 50.0)
    report = pd.read_csv(tmp_path / "runs" / "fake-0" / "eval.csv").set_index("attack")
    assert row["measured"] == pytest.approx(100 * report.loc["clean", "accuracy"], abs=0.01)
    assert row["diff"] == pytest.approx(row["measured"] - 50.0, abs=0.01)
    assert line.split()[1:5] == ["clean", "Table", "1", "50"] and line.split()[-1] == "pass"
    assert f"{row['measured']:g}" in line
    assert "1/1 figures within tolerance" in out
    assert "| fake-0 | clean |" in (tmp_path / "runs" / "repro.md").read_text()


def test_repro_miss_and_quick(fake_plugin, tmp_path, capsys):
    # an impossible figure: exactly 0% clean accuracy after training
    fake_plugin((50.0, 50.0, False), (0.0, 0.0, True))
    code, out, _ = run(capsys, "repro", "fakepaper", "--quick", "--run-dir", str(tmp_path / "q"))
    assert code == 1
    assert "fake-0" not in out  # --quick runs only the paper.quick configs
    assert not (tmp_path / "q" / "fake-0").exists()
    (row,) = _repro_csv(tmp_path / "q")
    assert row["config"] == "fake-1" and row["result"] == "FAIL" and row["measured"] > 0
    # a scale-down's values are its own expectations, not the paper's figures
    assert row["expected"] == 0.0 and pd.isna(row["paper"])
    assert next(ln for ln in out.splitlines() if ln.startswith("fake-1")).rstrip().endswith("FAIL")
    assert "0/1 figures within tolerance" in out
    code, out, _ = run(capsys, "repro", "fakepaper", "--list")
    assert code == 0 and "fake-0" in out and "fake-1" in out and "clean 0±0" in out
    code, _, err = run(capsys, "repro", "fakepaper", "--quick", "--set", "paper.quick=false")
    assert code == 2 and "no quick" in err
    # --config picks configs by name or file stem
    code, out, _ = run(capsys, "repro", "fakepaper", "--list", "--config", "repro_1")
    assert code == 0 and "fake-1" in out and "fake-0" not in out
    code, out, _ = run(capsys, "repro", "fakepaper", "--list", "--config", "fake-0", "--config", "repro_1")
    assert code == 0 and "fake-0" in out and "fake-1" in out
    code, _, err = run(capsys, "repro", "fakepaper", "--list", "--config", "fake-9")
    assert code == 2 and "no reproduction config 'fake-9'" in err and "fake-0" in err


COMPACT = """
[paper]
title = "Compact"
quick = true
tolerance = 100.0
[paper.expect]
clean = { value = 50.0, paper = 98.5, source = "Table 3" }
worst-case = 40.0
"""


def test_repro_compact_table_directory_and_duplicate_names(fake_plugin, tmp_path, capsys):
    """The hook may return a directory (its *.toml files); the [paper.expect] table form with
    a default tolerance; two configs with one name get distinct run directories."""
    d = tmp_path / "repro"
    d.mkdir()
    body = REPRO[: REPRO.index("[paper]")].format(name="same")
    (d / "a.toml").write_text(body + COMPACT)
    (d / "b.toml").write_text(body + COMPACT)
    (d / "notes.txt").write_text("not a config")
    fake_plugin(paths=[d])
    code, out, err = run(capsys, "repro", "toolbox-fakepaper", "--run-dir", str(tmp_path / "runs"))
    assert code == 0, err
    rows = _repro_csv(tmp_path / "runs")
    assert [(r["config"], r["metric"]) for r in rows] == [("same", "clean"), ("same", "worst-case")] * 2
    # the paper's own figure beside the scale-down's expectation
    assert (rows[0]["paper"], rows[0]["expected"], rows[0]["source"]) == (98.5, 50.0, "Table 3")
    assert rows[1]["expected"] == 40.0 and rows[1]["tolerance"] == 100.0 and pd.isna(rows[1]["paper"])
    assert sorted(p.name for p in (tmp_path / "runs").iterdir() if p.is_dir()) == ["same", "same-2"]
    assert "4/4 figures within tolerance" in out


def test_repro_bad_configs(fake_plugin, tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text(REPRO.format(name="bad", value=50, tol=1, quick="true").replace("epochs = 1", "epoch = 1"))
    fake_plugin(paths=[bad])
    code, _, err = run(capsys, "repro", "fakepaper", "--run-dir", str(tmp_path / "r"))
    assert code == 2 and "bad.toml: unknown key 'train.epoch'" in err
    assert not (tmp_path / "r").exists()  # every config is validated before any runs


def test_repro_missing_path(fake_plugin, tmp_path, capsys):
    fake_plugin(paths=[tmp_path / "gone.toml"])
    code, _, err = run(capsys, "repro", "fakepaper")
    assert code == 2 and "gone.toml" in err and "does not exist" in err


def test_repro_unknown_plugin(fake_plugin, capsys):
    fake_plugin((50.0, 50.0, True))
    code, _, err = run(capsys, "repro", "fakepapr")
    assert code == 2 and "unknown plugin 'fakepapr'" in err and "Did you mean 'fakepaper'" in err
    code, _, err = run(capsys, "repro", "builtin-attacks")
    assert code == 2 and "ships no reproduction configs" in err


def test_plugin_adds_command(fake_plugin, capsys):
    fake_plugin()
    code, out, _ = run(capsys, "fake-hello", "--who", "tests")
    assert code == 0 and out.strip() == "hello tests"


class _AllCertifier(tb.Certifier):
    """Claims every example (test-only wiring check: the row must then equal clean accuracy)."""

    name = "claim-all"

    def __init__(self, threat, *, claim: bool = True):
        super().__init__(threat)
        self.claim = claim

    def certify(self, model, x, y):
        return tb.Certificate(certified=torch.full((x.shape[0],), self.claim))


class _CertPlugin:
    @tb.hookimpl
    def toolbox_register(self, registry):
        registry.add_certifier("claim-all", _AllCertifier)


def test_eval_certifiers_from_the_config(tiny_config, tmp_path, capsys, toolbox_plugin):
    """``[eval.certifiers]`` rows reach the report (and so ``[paper.expect]``), beside the attacks."""
    toolbox_plugin(_CertPlugin())
    text = tiny_config.read_text() + (
        '[eval.certifiers.all]\ncertifier = "claim-all"\nthreat = "linf"\neps = 0.05\n'
        '[eval.certifiers.none]\ncertifier = "claim-all"\nthreat = "linf"\neps = 0.05\nclaim = false\n'
        '[paper.expect]\nall = { min = 30.0 }\n')
    cfg_path = tmp_path / "cert.toml"
    cfg_path.write_text(text)
    cfg = C.load(cfg_path)
    assert list(cfg.eval.certifiers) == ["all", "none"] and cfg.eval.to_dict()["certifiers"]["none"]["claim"] is False
    assert [e.metric for e in cfg.paper.expect] == ["all"]
    run_dir = tmp_path / "r"
    code, _, err = run(capsys, "train", str(cfg_path), "--run-dir", str(run_dir), "--set", "train.epochs=1",
                       "--set", "data.n_train=200", "--set", "eval.n=40")
    assert code == 0, err
    report = pd.read_csv(run_dir / "eval.csv").set_index("attack")
    assert list(report.index) == ["clean", "pgd5", "worst-case", "pgd@0.05", "all", "none"]
    assert list(report.loc[["all", "none"], "kind"]) == ["certified", "certified"]
    assert report.loc["all", "accuracy"] == report.loc["clean", "accuracy"]  # certified only if correct
    assert report.loc["none", "accuracy"] == 0
    bad = text.replace('certifier = "claim-all"', 'certifier = "claim-al"', 1)
    with pytest.raises(KeyError, match="eval.certifiers.all: unknown certifier 'claim-al'. Did you mean 'claim-all'"):
        C.loads(bad)
    with pytest.raises(C.ConfigError, match="already a row"):
        C.loads(text.replace("[eval.certifiers.all]", '[eval.certifiers."pgd5"]').replace("all = { min", "pgd5 = { min"))


def test_check_repro_configs_helper(fake_plugin, tmp_path):
    """``toolbox.testing.check_repro_configs``: returns the configs by file name, and fails
    naming what is wrong (a missing config, the wrong quick set, a config without figures,
    one that does not build)."""
    from toolbox.testing import check_repro_configs

    paths = fake_plugin((50.0, 5.0, True), (60.0, 5.0, False))
    got = check_repro_configs("fakepaper", includes={"repro_1.toml"}, quick={"repro_0.toml"})
    assert sorted(got) == ["repro_0.toml", "repro_1.toml"] and got["repro_1.toml"].name == "fake-1"
    with pytest.raises(pytest.fail.Exception, match="does not ship repro_9.toml"):
        check_repro_configs("fakepaper", includes={"repro_9.toml"})
    with pytest.raises(pytest.fail.Exception, match=r"marked paper.quick = \['repro_0.toml'\]"):
        check_repro_configs("fakepaper", quick={"repro_1.toml"})
    # no [paper] figures: named
    text = paths[1].read_text()
    paths[1].write_text(text[: text.index("[paper]")])
    with pytest.raises(pytest.fail.Exception, match="repro_1.toml: a reproduction config needs a"):
        check_repro_configs("fakepaper")
    # an attack that cannot be built (steps must be a positive int): the config error, unchanged
    paths[1].write_text(text.replace('attack = "fgsm"', 'attack = "pgd"\nsteps = -1'))
    with pytest.raises(pytest.fail.Exception, match=r"repro_1.toml: \w*Error: .*steps"):
        check_repro_configs("fakepaper")
