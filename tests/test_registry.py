"""The name -> factory registry: look-ups, error messages, duplicates, ``create`` and the
public ``tb.names`` / ``tb.plugins`` views of it."""

from __future__ import annotations

import types

import pandas as pd
import pytest
import torch

import toolbox as tb
from toolbox.plugins import BUILTIN_PLUGINS, registry
from toolbox.registry import KINDS, Registry


def _factory(*args, **kwargs):
    """A factory that returns what it was called with."""
    return args, kwargs


# ------------------------------------------------------------------------------ Registry itself
def test_add_names_and_case_insensitive_lookup():
    reg = Registry()
    reg.add("attack", "Zeta", _factory)
    reg.add_attack("alpha", _factory)
    assert reg.names("attack") == ["alpha", "zeta"]  # sorted, lower-case
    assert reg.get("attack", " ZETA ") is _factory
    assert reg.names("defense") == []


def test_every_kind_has_a_shorthand():
    reg = Registry()
    for kind in KINDS:
        getattr(reg, f"add_{kind}")(f"my-{kind}", _factory)
    for kind in KINDS:
        assert reg.names(kind) == [f"my-{kind}"]
    assert {e.kind for e in reg.entries()} == set(KINDS)


def test_create_passes_positional_and_keyword_arguments():
    reg = Registry()
    reg.add_model("m", _factory)
    assert reg.create("model", "m", 1, 2, width=3) == ((1, 2), {"width": 3})


def test_entries_record_plugin_and_doc_summary():
    reg = Registry()
    reg.add_loss("l", _factory)
    reg.add_loss("k", _factory, doc="Own summary.\nMore text.")
    e = {x.name: x for x in reg.entries()}
    assert e["l"].doc == "A factory that returns what it was called with."
    assert e["k"].doc == "Own summary."
    assert e["l"].kind == "loss" and e["l"].factory is _factory


def test_unknown_name_suggests_and_lists():
    reg = Registry()
    for n in ("pgd", "fgsm", "apgd-ce"):
        reg.add_attack(n, _factory)
    with pytest.raises(tb.UnknownNameError) as info:
        reg.get("attack", "pdg")
    assert isinstance(info.value, KeyError)
    msg = str(info.value)
    assert "Did you mean 'pgd'?" in msg
    assert "apgd-ce, fgsm, pgd" in msg
    assert not msg.startswith('"')  # readable, unlike a plain KeyError's repr
    with pytest.raises(tb.UnknownNameError) as info:
        reg.get("attack", "zzzzzz")
    assert "Did you mean" not in str(info.value) and "Available: apgd-ce" in str(info.value)
    with pytest.raises(tb.UnknownNameError, match=r"\(none\)"):
        reg.get("certifier", "anything")


def test_unknown_kind_lists_the_kinds():
    reg = Registry()
    with pytest.raises(tb.UnknownNameError, match="unknown kind 'attacks'.*attack, defense"):
        reg.names("attacks")
    with pytest.raises(tb.UnknownNameError, match="unknown kind"):
        reg.add("widget", "w", _factory)


def test_bad_registrations_raise_value_error_naming_the_argument():
    reg = Registry()
    with pytest.raises(ValueError, match="name must be a non-empty string"):
        reg.add_attack("  ", _factory)
    with pytest.raises(ValueError, match="name must be a non-empty string"):
        reg.add_attack(3, _factory)
    with pytest.raises(ValueError, match="factory for attack 'x' must be callable"):
        reg.add_attack("x", 42)
    with pytest.raises(tb.UnknownNameError, match="must be a string"):
        reg.get("attack", None)


def test_duplicate_name_error_names_both_plugins():
    reg = Registry()
    reg._current_plugin = "first-plugin"  # what the plugin system sets around each plugin
    reg.add_attack("same", _factory)
    reg._current_plugin = "second-plugin"
    with pytest.raises(tb.DuplicateNameError) as info:
        reg.add_attack("SAME", _factory)
    msg = str(info.value)
    assert "'same'" in msg and "first-plugin" in msg and "second-plugin" in msg
    assert isinstance(info.value, ValueError)
    reg.add_defense("same", _factory)  # one name may be used once per kind
    assert reg.get("attack", "same") is _factory


# ------------------------------------------------------------------------------ the live registry
def test_builtin_names():
    assert {"fgsm", "pgd", "apgd", "apgd-ce", "apgd-dlr", "apgd-t"} <= set(tb.names("attack"))
    assert {"linf", "l2", "l1"} <= set(tb.names("threat"))
    assert {"standard", "adversarial"} <= set(tb.names("defense"))
    assert {"digits", "mnist", "synthetic"} <= set(tb.names("dataset"))
    assert {"digits-cnn", "mnist-small"} <= set(tb.names("model"))
    assert {"ce", "cw", "dlr"} <= set(tb.names("loss"))
    for kind in ("attack", "defense", "threat", "certifier", "model", "dataset", "callback", "loss"):
        names = tb.names(kind)
        assert isinstance(names, list) and names == sorted(names)
        assert all(isinstance(n, str) and n == n.lower() for n in names)
    with pytest.raises(tb.UnknownNameError, match="unknown kind"):
        tb.names("attacks")


def test_public_constructors_suggest_names():
    with pytest.raises(KeyError, match="Did you mean 'pgd'") as info:
        tb.attack("pdg", threat=tb.Linf(0.1))
    assert "apgd-ce" in str(info.value)  # and lists what is available
    with pytest.raises(KeyError, match="Did you mean 'standard'"):
        tb.defense("standrd")
    with pytest.raises(KeyError, match="Did you mean 'linf'"):
        tb.threat("lnif", eps=0.1)


def test_registry_create_builds_configured_components():
    atk = registry().create("attack", "pgd", tb.Linf(0.1), steps=3, step_size=0.05)
    assert isinstance(atk, tb.Attack) and atk.steps == 3 and atk.step_size == 0.05
    assert atk.threat.eps == pytest.approx(0.1)
    apgd_ce = registry().create("attack", "apgd-ce", tb.Linf(0.1), steps=7)
    assert apgd_ce.loss == "ce" and apgd_ce.steps == 7  # the variant's fixed loss is kept
    model = registry().create("model", "digits-cnn", num_classes=5)
    assert model(torch.zeros(2, 1, 8, 8)).shape == (2, 5)


def test_plugin_factories_receive_the_arguments(toolbox_plugin):
    calls = []

    class Recorder(tb.Attack):
        """Records its arguments; returns the input unchanged."""

        name = "recorder"

        def __init__(self, threat, level=0, **kw):
            super().__init__(threat, **kw)
            calls.append((threat, level))

        def perturb(self, model, x, y, *, generator=None, **_):
            return x

    plugin = types.ModuleType("recorder_plugin")
    plugin.toolbox_register = tb.hookimpl(lambda registry: registry.add_attack("recorder", Recorder))
    toolbox_plugin(plugin, "recorder-plugin")
    atk = tb.attack("recorder", threat=("linf", 0.2), level=4, seed=1)
    assert isinstance(atk, Recorder) and atk.seed == 1
    threat, level = calls[-1]
    assert isinstance(threat, tb.ThreatModel) and threat.eps == pytest.approx(0.2) and level == 4
    assert registry().entry("attack", "recorder").plugin == "recorder-plugin"
    assert registry().entry("attack", "recorder").doc.startswith("Records its arguments")


def test_plugins_dataframe():
    df = tb.plugins()
    assert isinstance(df, pd.DataFrame)
    assert list(df.columns) == ["plugin", "version", "distribution", "builtin", "module", "hooks",
                                "registers", "status"]
    builtin = df[df["builtin"]]
    assert set(builtin["plugin"]) == set(BUILTIN_PLUGINS)
    assert (builtin["distribution"] == "toolbox").all()
    assert (builtin["version"] == tb.__version__).all()
    regs = df.set_index("plugin")["registers"]
    assert "attack:pgd" in regs["builtin-attacks"] and "threat:linf" in regs["builtin-threats"]
    # every registered name appears under exactly one plugin
    listed = [s for r in df["registers"] for s in r.split(", ") if s]
    assert len(listed) == len(set(listed)) == len(registry().entries())
