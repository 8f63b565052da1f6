"""The plugin system: entry-point discovery (a real install of ``plugins/example``), name
clashes, broken plugins, the disabling environment variables, ``toolbox plugins`` and every
hook of ``toolbox/hookspecs.py`` implemented by a run-time plugin.

Tests that need a fresh plugin system (other environment variables, fake entry points) swap
the process-wide one for a new one with ``monkeypatch`` (fixture ``fresh_system``); the old one
comes back after the test, so no other test sees the change.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
import types
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest
import torch

import toolbox as tb
from toolbox import cli

# the module; ``toolbox.plugins`` as an attribute is the function ``tb.plugins()``
tbp = importlib.import_module("toolbox.plugins")

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "plugins" / "example"
#: environment variables that change what a child process loads; removed for the subprocesses
_PLUGIN_ENV = ("TOOLBOX_DISABLE_PLUGINS", "TOOLBOX_DISABLE_PLUGIN_AUTOLOAD", "TOOLBOX_TRACE_PLUGINS")


def make_plugin(name: str, **hooks) -> types.ModuleType:
    """A plugin module called ``name`` whose hooks are the given functions (marked here)."""
    mod = types.ModuleType(name)
    for hook, fn in hooks.items():
        setattr(mod, hook, tb.hookimpl(fn))
    return mod


def _child_env(pythonpath: Path | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _PLUGIN_ENV}
    env["PYTHONPATH"] = str(pythonpath) if pythonpath is not None else ""
    env.setdefault("MPLBACKEND", "Agg")
    env["TOOLBOX_TEST_THREADS"] = "1"
    return env


def _run(args: list[str], env: dict[str, str], cwd: Path, timeout: int = 180):
    return subprocess.run([sys.executable, *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture
def fresh_system(monkeypatch):
    """Make the next ``tbp.system()`` build a new plugin system; the current one is restored
    after the test (``monkeypatch`` undoes the swap, after undoing any ``setenv``)."""
    monkeypatch.setattr(tbp, "_SYSTEM", None)
    return monkeypatch


# ---------------------------------------------------------------- (a) entry-point discovery
def test_example_plugin_is_listed_with_its_distribution():
    """In this environment (venv and tox) ``plugins/example`` is installed editable."""
    df = tb.plugins()
    row = df[df["plugin"] == "example"]
    assert len(row) == 1, f"plugin 'example' is not loaded; loaded: {list(df['plugin'])}"
    row = row.iloc[0]
    assert row["distribution"] == "toolbox-example"
    assert row["version"] == "0.1.0"
    assert not bool(row["builtin"])
    assert row["status"] == "ok"
    assert "attack:example-noise" in row["registers"]
    assert "toolbox_register" in row["hooks"]
    assert tbp.registry().entry("attack", "example-noise").plugin == "example"


def test_entry_point_discovery_of_an_installed_wheel(tmp_path):
    """Build and install ``plugins/example`` offline into a private folder; a fresh interpreter
    that sees that folder finds the plugin through its ``toolbox`` entry point alone."""
    src = tmp_path / "src"
    shutil.copytree(EXAMPLE, src, ignore=shutil.ignore_patterns(
        "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache"))
    site = tmp_path / "site"
    env = _child_env()
    env.update(PIP_NO_INPUT="1", PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INDEX="1")
    res = _run(["-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
                "--target", str(site), str(src)], env, tmp_path)
    assert res.returncode == 0, f"pip could not build/install plugins/example offline:\n{res.stdout}\n{res.stderr}"
    assert (site / "toolbox_example" / "__init__.py").exists()
    eps = list((site).glob("toolbox_example-*.dist-info/entry_points.txt"))
    assert eps and "[toolbox]" in eps[0].read_text()

    probe = textwrap.dedent("""
        import json, sys
        import toolbox as tb
        before = "toolbox_example" in sys.modules
        names = tb.names("attack")
        df = tb.plugins()
        row = df[df["plugin"] == "example"].to_dict(orient="records")
        mod = sys.modules.get("toolbox_example")
        print(json.dumps({"before": before, "names": names, "row": row,
                          "file": getattr(mod, "__file__", None)}))
    """)
    res = _run(["-c", probe], _child_env(site), tmp_path)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["before"] is False  # nothing imported the plugin before discovery
    assert "example-noise" in out["names"]
    assert len(out["row"]) == 1
    row = out["row"][0]
    assert row["distribution"] == "toolbox-example" and row["version"] == "0.1.0"
    assert row["module"] == "toolbox_example" and row["status"] == "ok"
    # the plugin was imported from the wheel just installed, not from the source tree
    assert out["file"] is not None and Path(out["file"]).resolve().is_relative_to(site.resolve())


# ---------------------------------------------------------------- (b) duplicate names
def test_duplicate_name_error_names_both_plugins(toolbox_plugin):
    def register(registry):
        registry.add_attack("pgd", tb.attacks.PGD)

    toolbox_plugin(make_plugin("clash", toolbox_register=register), "my-clashing-plugin")
    with pytest.raises(tb.DuplicateNameError) as info:
        tb.names("attack")
    msg = str(info.value)
    assert "'pgd'" in msg and "builtin-attacks" in msg and "my-clashing-plugin" in msg
    assert "TOOLBOX_DISABLE_PLUGINS" in msg  # says how to get out of it


def test_duplicate_between_two_third_party_plugins(toolbox_plugin, capsys):
    def register(registry):
        registry.add_defense("shared-name", lambda **kw: None)

    def make(registry):
        registry.add("defense", "Shared-Name", lambda **kw: None)  # names are case-insensitive

    toolbox_plugin(make_plugin("a", toolbox_register=register), "plugin-a")
    toolbox_plugin(make_plugin("b", toolbox_register=make), "plugin-b")
    with pytest.raises(tb.DuplicateNameError, match="shared-name") as info:
        tb.names("defense")
    assert "plugin-a" in str(info.value) and "plugin-b" in str(info.value)
    # the CLI turns it into a one-line error and exit code 2
    assert cli.main(["plugins"]) == 2
    err = capsys.readouterr().err
    assert "plugin-a" in err and "plugin-b" in err


def test_after_a_clash_is_removed_everything_works_again(toolbox_plugin):
    mod = make_plugin("clash2", toolbox_register=lambda registry: registry.add_attack("fgsm", tb.attacks.FGSM))
    toolbox_plugin(mod, "clash-2")
    with pytest.raises(tb.DuplicateNameError):
        tb.names("attack")
    tbp.system().unregister("clash-2")
    assert "fgsm" in tb.names("attack")


# ---------------------------------------------------------------- (c) broken plugins
def _broken_module(folder: Path, name: str, body: str = 'raise RuntimeError("boom from a broken plugin")'):
    (folder / f"{name}.py").write_text(body + "\n")


def test_plugin_failing_on_import_warns_and_the_rest_loads(tmp_path, fresh_system):
    _broken_module(tmp_path, "toolbox_test_broken_mod")
    fresh_system.syspath_prepend(str(tmp_path))
    real = tbp.entry_points

    def entry_points(group=None, **kw):
        found = list(real(group=group, **kw))
        return [EntryPoint("broken", "toolbox_test_broken_mod", group), *found]

    fresh_system.setattr(tbp, "entry_points", entry_points)
    with pytest.warns(tb.PluginLoadWarning, match=r"'broken'.*RuntimeError: boom"):
        names = tb.names("attack")
    assert {"pgd", "apgd-ce", "fgsm", "example-noise"} <= set(names)
    df = tb.plugins()
    row = df[df["plugin"] == "broken"].iloc[0]
    assert row["status"].startswith("failed: RuntimeError")
    assert set(tbp.BUILTIN_PLUGINS) | {"example"} <= set(df["plugin"])
    assert (df[df["plugin"].isin([*tbp.BUILTIN_PLUGINS, "example"])]["status"] == "ok").all()


def test_plugin_raising_in_register_is_skipped_with_a_warning(toolbox_plugin):
    def register(registry):
        registry.add_attack("half-registered", tb.attacks.PGD)
        raise ValueError("cannot register")

    toolbox_plugin(make_plugin("bad", toolbox_register=register), "bad-register")
    with pytest.warns(tb.PluginLoadWarning, match=r"'bad-register'.*cannot register"):
        names = tb.names("attack")
    assert "half-registered" not in names  # its partial registrations are rolled back
    assert "pgd" in names and "example-noise" in names
    df = tb.plugins()
    assert df.set_index("plugin").loc["bad-register", "status"].startswith("failed: ValueError")


def test_plugin_with_a_misspelled_or_mistyped_hook_is_skipped(tmp_path, fresh_system):
    (tmp_path / "toolbox_test_typo_mod.py").write_text(
        "import toolbox as tb\n"
        "@tb.hookimpl\n"
        "def toolbox_regster(registry):\n"
        "    pass\n")
    (tmp_path / "toolbox_test_args_mod.py").write_text(
        "import toolbox as tb\n"
        "@tb.hookimpl\n"
        "def toolbox_register(reg):\n"
        "    pass\n")
    fresh_system.syspath_prepend(str(tmp_path))
    real = tbp.entry_points

    def entry_points(group=None, **kw):
        return [EntryPoint("typo", "toolbox_test_typo_mod", group),
                EntryPoint("args", "toolbox_test_args_mod", group), *real(group=group, **kw)]

    fresh_system.setattr(tbp, "entry_points", entry_points)
    with pytest.warns(tb.PluginLoadWarning) as record:
        names = tb.names("attack")
    messages = " | ".join(str(w.message) for w in record)
    assert "'typo'" in messages and "toolbox_regster" in messages
    assert "'args'" in messages and "reg" in messages
    assert "pgd" in names and "example-noise" in names
    status = tb.plugins().set_index("plugin")["status"]
    assert status["typo"].startswith("failed") and status["args"].startswith("failed")
    assert not tbp.system().pm.has_plugin("typo") and not tbp.system().pm.has_plugin("args")


def test_two_distributions_with_one_entry_point_name(tmp_path, fresh_system):
    """The first one on the path wins; the second is named in a warning, not silently lost."""
    (tmp_path / "toolbox_test_second_mod.py").write_text(
        "import toolbox as tb\n"
        "@tb.hookimpl\n"
        "def toolbox_register(registry):\n"
        "    registry.add_attack('second-noise', lambda threat, **kw: None)\n")
    fresh_system.syspath_prepend(str(tmp_path))
    real = tbp.entry_points

    def entry_points(group=None, **kw):
        return [*real(group=group, **kw), EntryPoint("example", "toolbox_test_second_mod", group)]

    fresh_system.setattr(tbp, "entry_points", entry_points)
    with pytest.warns(tb.PluginLoadWarning, match="'example'.*already taken by 'toolbox-example'"):
        names = tb.names("attack")
    assert "example-noise" in names and "second-noise" not in names


def test_run_time_registration_errors(toolbox_plugin):
    typo = make_plugin("typo", toolbox_regster=lambda registry: None)
    with pytest.raises(Exception, match="unknown hooks.*toolbox_regster"):
        toolbox_plugin(typo, "typo-plugin")
    assert "typo-plugin" not in tbp.system().info
    toolbox_plugin(make_plugin("ok", toolbox_register=lambda registry: None), "twice")
    with pytest.raises(ValueError, match="'twice' is already registered"):
        tbp.system().register(make_plugin("ok2"), "twice")


def test_unregistering_a_failed_plugin_forgets_its_failure(toolbox_plugin):
    def register(registry):
        raise RuntimeError("nope")

    toolbox_plugin(make_plugin("f", toolbox_register=register), "flaky")
    with pytest.warns(tb.PluginLoadWarning, match="flaky"):
        tb.names("attack")
    assert "flaky" in set(tb.plugins()["plugin"])
    tbp.system().unregister("flaky")
    assert "flaky" not in set(tb.plugins()["plugin"])


def test_broken_distribution_in_a_real_interpreter(tmp_path):
    """A distribution with a ``toolbox`` entry point whose module raises on import: the CLI
    warns naming it, lists it as failed and still lists everything else."""
    site = tmp_path / "site"
    (site / "toolbox_broken").mkdir(parents=True)
    (site / "toolbox_broken" / "__init__.py").write_text('raise ImportError("boom: missing dependency")\n')
    info = site / "toolbox_broken-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: toolbox-broken\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[toolbox]\nbroken = toolbox_broken\n")
    res = _run(["-m", "toolbox", "plugins"], _child_env(site), tmp_path)
    assert res.returncode == 0, res.stderr
    assert "PluginLoadWarning" in res.stderr and "'broken'" in res.stderr and "boom" in res.stderr
    lines = {ln.split()[0]: ln for ln in res.stdout.splitlines() if ln.strip()}
    assert "failed" in lines["broken"]
    for name in [*tbp.BUILTIN_PLUGINS, "example"]:
        assert name in lines and "ok" in lines[name]


# ---------------------------------------------------------------- (d) environment variables
def test_disable_plugins_hides_them(fresh_system):
    fresh_system.setenv("TOOLBOX_DISABLE_PLUGINS", " example , builtin-defenses")
    assert "example-noise" not in tb.names("attack")
    assert "pgd" in tb.names("attack")
    assert not {"standard", "adversarial"} & set(tb.names("defense"))
    listed = set(tb.plugins()["plugin"])
    assert "example" not in listed and "builtin-defenses" not in listed
    assert "builtin-attacks" in listed


def test_disable_autoload_keeps_only_builtins(fresh_system):
    fresh_system.setenv("TOOLBOX_DISABLE_PLUGIN_AUTOLOAD", "1")
    df = tb.plugins()
    assert set(df["plugin"]) == set(tbp.BUILTIN_PLUGINS)
    assert df["builtin"].all()
    assert "example-noise" not in tb.names("attack") and "pgd" in tb.names("attack")


def test_autoload_flag_zero_still_loads_entry_points(fresh_system):
    fresh_system.setenv("TOOLBOX_DISABLE_PLUGIN_AUTOLOAD", "0")
    assert "example-noise" in tb.names("attack")


def test_reload_picks_up_a_changed_environment(fresh_system):
    assert "example-noise" in tb.names("attack")
    fresh_system.setenv("TOOLBOX_DISABLE_PLUGINS", "example")
    assert "example-noise" in tb.names("attack")  # the loaded system is kept until reload()
    tbp.reload()
    assert "example-noise" not in tb.names("attack")


# ---------------------------------------------------------------- (e) `toolbox plugins`
def test_cli_plugins_lists_builtins_and_example(tmp_path):
    res = _run(["-m", "toolbox", "plugins"], _child_env(), tmp_path)
    assert res.returncode == 0, res.stderr
    lines = {ln.split()[0]: ln for ln in res.stdout.splitlines() if ln.strip()}
    for name in tbp.BUILTIN_PLUGINS:
        assert name in lines, f"{name} missing from `toolbox plugins`:\n{res.stdout}"
    assert "example" in lines and "example-noise" in lines["example"]
    assert "pgd" in lines["builtin-attacks"] and "apgd-ce" in lines["builtin-attacks"]


def test_cli_plugins_json(capsys):
    assert cli.main(["plugins", "--json"]) == 0
    records = {r["plugin"]: r for r in json.loads(capsys.readouterr().out)}
    assert set(tbp.BUILTIN_PLUGINS) <= set(records)
    assert records["example"]["distribution"] == "toolbox-example"
    assert records["builtin-attacks"]["builtin"] is True
    assert "attack:example-noise" in records["example"]["registers"]


# ---------------------------------------------------------------- (f) the other hooks
def test_hook_repro_configs(toolbox_plugin, tmp_path):
    cfg = tmp_path / "paper.toml"
    cfg.write_text('name = "paper"\n')
    toolbox_plugin(make_plugin("r", toolbox_repro_configs=lambda: [cfg]), "my-repro")
    assert cli.repro_configs("my-repro") == [cfg]
    with pytest.raises(tb.UnknownNameError, match="my-repro"):
        cli.repro_configs("no-such-plugin")  # the message lists plugins that do have configs


def test_hook_add_commands(toolbox_plugin, capsys):
    def run(args):
        print(f"hello {args.who}")
        return 0

    def add(subparsers):
        p = subparsers.add_parser("hello", help="say hello")
        p.add_argument("--who", default="world")
        p.set_defaults(func=run)

    toolbox_plugin(make_plugin("c", toolbox_add_commands=add), "greeter")
    assert cli.main(["hello", "--who", "plugins"]) == 0
    assert capsys.readouterr().out.strip() == "hello plugins"


def test_failing_add_commands_does_not_break_the_cli(toolbox_plugin, capsys):
    def add(subparsers):
        raise RuntimeError("no commands today")

    toolbox_plugin(make_plugin("d", toolbox_add_commands=add), "grumpy")
    with pytest.warns(tb.PluginLoadWarning, match="grumpy"):
        assert cli.main(["plugins"]) == 0
    assert "builtin-attacks" in capsys.readouterr().out


def test_hook_trainer_event(toolbox_plugin):
    seen: list[tuple[str, object, dict]] = []

    def event(event, trainer, logs):
        seen.append((event, trainer, dict(logs)))

    toolbox_plugin(make_plugin("e", toolbox_trainer_event=event), "observer")
    train = tb.data.subset(tb.data.load("digits", split="train"), range(200))
    model = tb.models.create("digits-cnn", seed=0)
    trainer = tb.Trainer(model, tb.defense("standard"), batch_size=100, seed=0)
    history = trainer.fit(train, epochs=2)
    assert [e for e, _, _ in seen] == ["fit_start", "epoch_start", "epoch_end",
                                      "epoch_start", "epoch_end", "fit_end"]
    assert all(t is trainer for _, t, _ in seen)
    ends = [logs for e, _, logs in seen if e == "epoch_end"]
    assert [r["epoch"] for r in ends] == [0, 1]
    assert ends[-1]["step"] == 4 and len(history) == 2
    assert torch.isfinite(torch.tensor(float(history["train_loss"].iloc[-1])))


# ---------------------------------------------------------------- the pytest plugin's cache
_TRAIN_CACHED = """
import sys, torch
from toolbox import data
from toolbox.testing import cached_digits_model, train_digits_model
tr, te = data.load("digits", split="train"), data.load("digits", split="test")
m = cached_digits_model(tr.x.float(), tr.y.long(), te.x.float(), te.y.long(), min_accuracy=0.5,
                        train=lambda x, y: train_digits_model(x, y, epochs=3))
torch.save(m.state_dict(), sys.argv[1])
"""


def _quick(x, y):
    """A 3-epoch version of the fixture's recipe (well under a second, about 85 % clean)."""
    from toolbox.testing import train_digits_model

    return train_digits_model(x, y, epochs=3)


def test_digits_model_cache_is_shared_by_concurrent_workers(tmp_path):
    """Two processes (as two pytest-xdist workers) start on an empty cache at once: both end
    with the same weights, the ones in the cache file, and no temporary file is left."""
    cache = tmp_path / "cache"
    env = _child_env()
    env["TOOLBOX_CACHE"] = str(cache)
    procs = [subprocess.Popen([sys.executable, "-c", _TRAIN_CACHED, str(tmp_path / f"w{i}.pt")],
                              env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for i in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=180)
        assert p.returncode == 0, err
    from toolbox.testing import DIGITS_MODEL_VERSION

    files = sorted(p.name for p in cache.iterdir())
    assert files == [f"digits-cnn-{DIGITS_MODEL_VERSION}.pt", f"digits-cnn-{DIGITS_MODEL_VERSION}.pt.lock"]
    cached = torch.load(cache / files[0], weights_only=True)
    for i in range(2):
        mine = torch.load(tmp_path / f"w{i}.pt", weights_only=True)
        assert all(torch.equal(mine[k], cached[k]) for k in cached)


def test_digits_model_cache_replaces_corrupt_and_foreign_files(tmp_path, digits_data):
    from toolbox.testing import cached_digits_model

    x, y, xt, yt = digits_data
    path = tmp_path / "model.pt"
    path.write_bytes(b"half a file")
    model = cached_digits_model(x, y, xt, yt, cache=path, train=_quick, min_accuracy=0.5)
    with torch.no_grad():
        acc = float((model(xt).argmax(1) == yt).float().mean())
    assert acc >= 0.5 and not model.training
    good = torch.load(path, weights_only=True)  # rewritten, loadable
    again = cached_digits_model(x, y, xt, yt, cache=path, train=_quick, min_accuracy=0.5)
    assert all(torch.equal(again.state_dict()[k], good[k]) for k in good)  # loaded, not retrained
    torch.save(tb.models.create("digits-cnn", seed=1).state_dict(), path)  # untrained: ~10 %
    calls = []
    cached_digits_model(x, y, xt, yt, cache=path, train=lambda a, b: calls.append(1) or _quick(a, b),
                        min_accuracy=0.5)
    assert calls == [1]  # the foreign weights were rejected and the model retrained
    assert not list(tmp_path.glob("*.tmp"))


def test_digits_model_cache_asserts_the_accuracy(tmp_path, digits_data):
    from toolbox.testing import cached_digits_model

    x, y, xt, yt = digits_data
    untrained = lambda a, b: tb.models.create("digits-cnn", seed=0)  # noqa: E731
    with pytest.raises(AssertionError, match="clean accuracy on the 500 test digits"):
        cached_digits_model(x, y, xt, yt, cache=tmp_path / "m.pt", train=untrained)
    assert not (tmp_path / "m.pt").exists()


def test_digits_model_fixture(digits_model, digits_data):
    _, _, xt, yt = digits_data
    assert xt.shape == (500, 1, 8, 8) and not digits_model.training
    with torch.no_grad():
        assert float((digits_model(xt).argmax(1) == yt).float().mean()) >= 0.9
    # every test gets its own copy: changing it here cannot leak into other tests
    with torch.no_grad():
        next(digits_model.parameters()).zero_()


def test_digits_model_fixture_is_a_fresh_copy(digits_model, digits_data):
    assert next(digits_model.parameters()).abs().sum() > 0
