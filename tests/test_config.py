"""TOML experiment configs: strict validation, overrides, fingerprints, builders."""

from __future__ import annotations

import tomllib

import pytest
import torch

import toolbox as tb
from toolbox import config as C
from toolbox.registry import UnknownNameError

BASE = """
name = "unit"
[model]
name = "digits-cnn"
[data]
name = "digits"
val = 100
[defense]
name = "adversarial"
[defense.attack]
name = "pgd"
threat = { name = "linf", eps = 0.1 }
steps = 3
[optimizer]
name = "sgd"
lr = 0.05
momentum = 0.9
[train]
epochs = 2
batch_size = 64
seed = 3
[[callbacks]]
name = "history"
[eval]
n = 50
[eval.attacks.pgd5]
attack = "pgd"
threat = "linf"
eps = 0.1
steps = 5
[eval.attacks.fgsm]
attack = "fgsm"
threat = { name = "linf", eps = 0.1 }
[paper]
title = "unit"
quick = true
[[paper.expect]]
metric = "pgd5"
value = 50.0
tolerance = 10.0
source = "Table 1"
"""


def cfg(*overrides: str) -> C.ExperimentConfig:
    return C.loads(BASE, overrides=overrides)


def error(exc_type, *overrides: str, text: str = BASE) -> str:
    with pytest.raises(exc_type) as info:
        C.loads(text, overrides=overrides)
    return str(info.value)


# --------------------------------------------------------------------------------- validation
def test_valid_config_fields():
    c = cfg()
    assert c.name == "unit"
    assert c.defense.attack.name == "pgd" and c.defense.attack.threat.kwargs == {"eps": 0.1}
    assert c.eval.attacks["pgd5"].threat.to_dict() == {"name": "linf", "eps": 0.1}
    assert c.train.epochs == 2 and c.train.seed == 3 and c.optimizer.momentum == 0.9
    assert c.paper.expect[0].source == "Table 1" and c.paper.quick


@pytest.mark.parametrize("override, path, suggestion", [
    ("train.epoch=3", "train.epoch", "epochs"),
    ("optimizer.lrate=0.1", "optimizer.lrate", None),
    ("eval.attack={}", "eval.attack", "attacks"),
    ("paper.expect.0.tol=1", "paper.expect.0.tol", None),
    ("modle={}", "modle", "model"),
])
def test_unknown_key_names_path_and_allowed_keys(override, path, suggestion):
    msg = error(C.ConfigError, override)
    assert f"unknown key {path!r}" in msg
    assert "Allowed keys" in msg
    if suggestion:
        assert f"Did you mean {suggestion!r}" in msg


@pytest.mark.parametrize("override, path, allowed", [
    ("defense.attack.stepz=3", "defense.attack.stepz", "steps"),
    ("eval.attacks.pgd5.restart=2", "eval.attacks.pgd5.restart", "restarts"),
    ("model.widht=2", "model.widht", "num_classes"),
    ("defense.clean_wieght=0.5", "defense.clean_wieght", "clean_weight"),
    ("callbacks.0.cvs=true", "callbacks.0.cvs", "csv"),
])
def test_component_kwargs_checked_against_signature(override, path, allowed):
    msg = error(C.ConfigError, override)
    assert repr(path) in msg and allowed in msg


@pytest.mark.parametrize("override, kind", [
    ('model.name="resnet-9000"', "model"),
    ('data.name="imagenet"', "dataset"),
    ('defense.name="magic"', "defense"),
    ('defense.attack.name="pgdd"', "attack"),
    ('eval.attacks.pgd5.threat="linfinity"', "threat"),
    ('callbacks.0.name="historyy"', "callback"),
])
def test_unknown_component_name_is_registry_keyerror(override, kind):
    msg = error(UnknownNameError, override)
    assert f"unknown {kind}" in msg and "Available:" in msg
    assert all(n in msg for n in tb.names(kind))


@pytest.mark.parametrize("override, fragment", [
    ('train.epochs="two"', "train.epochs must be an integer"),
    ("train.epochs=0", "train.epochs must be > 0"),
    ("train.batch_size=1.5", "train.batch_size must be an integer"),
    ('optimizer.lr="fast"', "optimizer.lr must be a number"),
    ("optimizer.lr=-1", "optimizer.lr must be finite and > 0"),
    ('optimizer.name="rmsprop"', "optimizer.name must be one of"),
    ('train.device="gpu"', "train.device must be"),
    ("train.amp=1", "train.amp must be a boolean or a string"),
    ("eval.attacks.pgd5.eps=-0.1", "eval.attacks.pgd5.threat.eps must be finite and >= 0"),
    ("paper.expect.0.value=150", "paper.expect.0.value is an accuracy in percent"),
    ('paper.expect.0.metric="pgd"', "Did you mean 'pgd5'"),
    ("data.val=-1", "data.val must be >= 0"),
    ('callbacks={ name = "history" }', "write [[callbacks]]"),
    ('data.transform={ name = "cutoutt" }', "data.transform.0"),
])
def test_type_and_value_errors_name_the_key(override, fragment):
    assert fragment in error(C.ConfigError, override)


def test_component_value_errors_name_the_section():
    # a bad argument value is only caught by the component itself: at build time, with the path
    c = cfg("defense.attack.steps=-2")
    with pytest.raises(C.ConfigError, match=r"\[defense.attack\].*steps"):
        c.build_defense()


def test_missing_required_parts():
    assert "missing section [model]" in error(C.ConfigError, text="[data]\nname='digits'\n")
    text = BASE.replace('threat = { name = "linf", eps = 0.1 }\nsteps = 3', "steps = 3")
    assert "defense.attack.threat" in error(C.ConfigError, text=text)


def test_load_names_the_file_and_missing_file(tmp_path):
    p = tmp_path / "exp.toml"
    p.write_text(BASE.replace("epochs = 2", "epoch = 2"))
    with pytest.raises(C.ConfigError, match=r"exp\.toml: unknown key 'train\.epoch'"):
        C.load(p)
    with pytest.raises(FileNotFoundError, match="config file not found"):
        C.load(tmp_path / "nope.toml")
    p.write_text("[model\nname=1")
    with pytest.raises(C.ConfigError, match="invalid TOML"):
        C.load(p)


def test_name_defaults_to_file_stem(tmp_path):
    p = tmp_path / "my-exp.toml"
    p.write_text(BASE.replace('name = "unit"\n', "", 1))
    assert C.load(p).name == "my-exp"


# --------------------------------------------------------------------------------- overrides
def test_override_parsing():
    assert C.parse_override("train.epochs=3") == (["train", "epochs"], 3)
    assert C.parse_override("optimizer.lr=1e-3") == (["optimizer", "lr"], 0.001)
    assert C.parse_override("train.amp=true") == (["train", "amp"], True)
    assert C.parse_override("data.root=/data/mnist") == (["data", "root"], "/data/mnist")
    assert C.parse_override('name="a b"') == (["name"], "a b")
    assert C.parse_override("x.y=[1, 2]") == (["x", "y"], [1, 2])
    assert C.parse_override("x.y={ a = 1 }") == (["x", "y"], {"a": 1})
    for bad in ("train.epochs", "=3", "train..epochs=3"):
        with pytest.raises(C.ConfigError):
            C.parse_override(bad)


def test_overrides_apply_and_validate():
    c = cfg("train.epochs=5", "optimizer.lr=0.2", "eval.attacks.pgd5.steps=7",
            "callbacks.0.csv=false", "defense.attack.threat.eps=0.2", "data.n_train=300")
    assert c.train.epochs == 5 and c.optimizer.lr == 0.2
    assert c.eval.attacks["pgd5"].kwargs["steps"] == 7
    assert c.callbacks[0] == {"name": "history", "csv": False}
    assert c.defense.attack.threat.kwargs["eps"] == 0.2
    assert c.data.n_train == 300
    # a new table through --set: validated like the file
    c = cfg('eval.attacks.apgd={ attack = "apgd-ce", threat = "l2", eps = 1.0 }')
    assert c.eval.attacks["apgd"].threat.name == "l2"
    with pytest.raises(C.ConfigError, match="not an index"):
        cfg("callbacks.3.csv=false")
    with pytest.raises(C.ConfigError, match="is a value, not a table"):
        cfg("train.epochs.x=1")


# -------------------------------------------------------------------------- round trip / hash
def test_resolved_toml_round_trip():
    c = cfg()
    text = c.to_toml()
    assert tomllib.loads(text) == c.to_dict()
    again = C.loads(text)
    assert again.to_dict() == c.to_dict()
    assert again.fingerprint() == c.fingerprint()
    # defaults are filled in
    d = c.to_dict()
    assert d["train"]["device"] == "cpu" and d["optimizer"]["weight_decay"] == 0.0


def test_dumps_toml_values():
    data = {"a": 1, "b": -2.5, "c": "q\"uote", "d": [1, 2], "e": True, "weird key": 1,
            "t": {"x": {"y": 1, "z": [1.0]}, "w": "v"}, "arr": [{"p": 1}, {"p": 2, "q": {"r": "s"}}],
            "empty": {}}
    assert tomllib.loads(C.dumps_toml(data)) == data


def test_fingerprint_tracks_training_settings_only():
    base = cfg()
    assert cfg("eval.n=10").fingerprint() == base.fingerprint()
    assert cfg('paper.title="x"').fingerprint() == base.fingerprint()
    assert cfg('train.device="auto"').fingerprint() == base.fingerprint()
    for o in ("train.epochs=3", "optimizer.lr=0.2", "defense.attack.steps=4", "train.seed=4"):
        assert cfg(o).fingerprint() != base.fingerprint(), o
    diff = C.config_diff(base, cfg("train.epochs=3"))
    assert diff == ["train.epochs: 2 -> 3"]


# ---------------------------------------------------------------------------------- builders
def test_builders_make_working_components():
    torch.set_num_threads(1)
    c = cfg("data.n_train=300", "data.n_test=40")
    model = c.build_model()
    assert model(torch.rand(4, 1, 8, 8)).shape == (4, 10)
    # the model init is seeded by train.seed: two builds are identical
    other = c.build_model()
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), other.state_dict().values(), strict=True))
    d = c.build_defense()
    assert isinstance(d, tb.Defense) and d.attack.steps == 3 and d.attack.threat == tb.Linf(0.1)
    train, val, test = c.build_data()
    assert (len(train), len(val), len(test)) == (200, 100, 40)
    assert set(train.indices.tolist()).isdisjoint(val.indices.tolist())
    attacks = c.build_eval_attacks()
    assert set(attacks) == {"pgd5", "fgsm"} and attacks["pgd5"].steps == 5
    assert attacks["pgd5"].seed == c.train.seed  # reproducible reports
    opt = c.build_optimizer(model)
    assert isinstance(opt, torch.optim.SGD) and opt.defaults["momentum"] == 0.9
    cbs = c.build_callbacks()
    assert [type(cb).__name__ for cb in cbs] == ["History"] and cbs[0].csv is True


@pytest.mark.parametrize("attack", ["fgsm", "pgd", "apgd-ce", "apgd-dlr"])
def test_any_defense_with_any_attack(attack):
    steps = "" if attack == "fgsm" else ", steps = 2"
    c = cfg(f'defense.attack={{ name = "{attack}", threat = {{ name = "l2", eps = 0.5 }}{steps} }}')
    d = c.build_defense()
    assert d.attack.name.startswith(attack.split("-")[0])
    x = torch.rand(8, 1, 8, 8)
    y = torch.randint(0, 10, (8,))
    loss, logs = d.loss(c.build_model(), tb.Batch(x, y, torch.arange(8)))
    assert loss.dim() == 0 and torch.isfinite(loss)


def test_callback_attack_tables_become_attacks():
    c = cfg('callbacks=[{ name = "robust-early-stopping", n = 20, '
            'attack = { attack = "pgd", threat = "linf", eps = 0.1, steps = 2 } }]')
    (cb,) = c.build_callbacks()
    assert isinstance(cb.attack, tb.Attack) and cb.attack.steps == 2 and cb.n == 20


def test_adam_and_transform_and_normalize():
    c = cfg('optimizer={ name = "adam", lr = 0.001, betas = [0.8, 0.9] }',
            'data.transform=[{ name = "cutout", size = 2 }]', 'model.normalize="mnist"')
    opt = c.build_optimizer(c.build_model())
    assert isinstance(opt, torch.optim.Adam) and opt.defaults["betas"] == (0.8, 0.9)
    assert c.build_transform() is not None
    with pytest.raises(C.ConfigError, match="momentum/nesterov apply to sgd"):
        cfg('optimizer={ name = "adam", momentum = 0.9 }')


def test_missing_dataset_error_passes_through(tmp_path):
    c = cfg('data.name="cifar10"', f'data.root="{tmp_path}"')
    with pytest.raises(FileNotFoundError, match="cifar10.*not found") as info:
        c.build_data()
    assert str(tmp_path) in str(info.value)


# ------------------------------------------------------------------------------ [paper] table
PAPER_COMPACT = """
[paper]
title = "A paper"
quick = true
tolerance = 2.5
[paper.expect]
clean = 97
pgd5 = { value = 60.0, tolerance = 5.0, source = "Table 2", paper = 88.8 }
worst-case = { value = 55.5 }
"""


def test_paper_compact_table_form():
    text = BASE[: BASE.index("[paper]")] + PAPER_COMPACT
    c = C.loads(text)
    got = [(e.metric, e.value, e.tolerance, e.source, e.paper) for e in c.paper.expect]
    assert got == [("clean", 97.0, 2.5, "", None), ("pgd5", 60.0, 5.0, "Table 2", 88.8),
                   ("worst-case", 55.5, 2.5, "", None)]
    # the resolved form is the array form with every tolerance filled in, and round-trips
    again = C.loads(c.to_toml())
    assert again.to_dict() == c.to_dict()
    assert again.to_dict()["paper"]["expect"][1] == {"metric": "pgd5", "value": 60.0, "tolerance": 5.0,
                                                     "source": "Table 2", "paper": 88.8}


def test_paper_checks():
    e = C.Expectation("clean", 90.0, 2.0)
    assert e.check(92.0) and e.check(88.0) and not e.check(92.01) and not e.check(float("nan"))
    # the array form takes paper.tolerance as the default too
    c = cfg("paper.tolerance=4", 'paper.expect=[{ metric = "clean", value = 90 }]')
    assert c.paper.expect[0].tolerance == 4.0


@pytest.mark.parametrize("override, fragment", [
    ('paper.expect={ clean = 90 }', "missing key 'paper.expect.clean.tolerance'"),
    ('paper.expect={ pgd = 90 }', "paper.expect.pgd is not a row of the eval report. Did you mean 'pgd5'?"),
    ('paper.expect={ clean = "high" }', "paper.expect.clean must be an accuracy in percent"),
    ('paper.expect={ clean = { value = 90, tol = 1 } }', "unknown key 'paper.expect.clean.tol'"),
    ('paper.expect={ clean = { value = 90, tolerance = 1, paper = 101 } }', "paper.expect.clean.paper is an accuracy"),
    ("paper.tolerance=-1", "paper.tolerance must be finite and >= 0"),
    ("paper.expect=3", "paper.expect must be a table or an array"),
    ("paper.expect.0.metric=3", "paper.expect.0.metric must be a string"),
])
def test_paper_errors(override, fragment):
    assert fragment in error(C.ConfigError, override)


# --------------------------------------------------------------------------- shipped configs
@pytest.mark.parametrize("path", C.example_configs(), ids=lambda p: p.name)
def test_shipped_config_validates_and_builds(path):
    """Every shipped config parses, round-trips through its resolved TOML and builds all its
    components (model, defense + attack, optimizer, schedules, callbacks, eval attacks,
    Trainer) without touching data or training."""
    torch.set_num_threads(1)
    c = C.load(path)
    assert c.name == path.stem.replace("_", "-") and c.description
    assert C.loads(c.to_toml()).to_dict() == c.to_dict()
    model = c.build_model()
    d = c.build_defense()
    assert isinstance(d, tb.Defense)
    attacks = c.build_eval_attacks()
    assert set(attacks) == set(c.eval.attacks) and len(attacks) >= 2
    assert all(isinstance(a, tb.Attack) for a in attacks.values())
    # every report attack uses the threat model of the defense's attack (when there is one)
    if c.defense.attack is not None:
        assert {a.threat.spec()["eps"] for a in attacks.values()} == {d.attack.threat.spec()["eps"]}
    trainer = c.build_trainer(model, d)
    assert trainer.batch_size == c.train.batch_size and len(trainer.callbacks) == len(c.callbacks)
    x = torch.rand(2, *({"digits": (1, 8, 8)}.get(c.data.name, (1, 28, 28))))
    assert model(x).shape == (2, 10)


def test_example_configs_are_listed():
    assert {p.name for p in C.example_configs()} >= {"digits_standard.toml", "digits_pgd.toml",
                                                     "mnist_fgsm_rs.toml"}


def test_mnist_config_is_the_papers_setting():
    """mnist_fgsm_rs.toml: FGSM-RS of Wong et al. 2020 (eps 0.3, step 0.375, unclamped random
    start, cyclic LR peaking at 5e-3 at 2/5 of training, batch 100, the small fast-AT CNN)."""
    c = C.load(next(p for p in C.example_configs() if p.name == "mnist_fgsm_rs.toml"))
    atk = c.build_attack()
    assert atk.name == "fgsm" and atk.threat == tb.Linf(0.3) and atk.step_size == 0.375
    assert atk.random_start and not atk.clamp_start
    lr, eps = c.build_schedules()
    assert eps is None
    assert lr(0.0) == pytest.approx(0.0, abs=1e-12) and lr(10.0) == pytest.approx(0.0, abs=1e-12)
    assert lr(4.0) == pytest.approx(0.005) and lr(2.0) == pytest.approx(0.0025)
    assert c.train.batch_size == 100 and c.train.epochs == 10 and c.model.name == "mnist-small"
    assert [cb["name"] for cb in c.callbacks] == ["co-detector"]


def test_docs_examples_validate():
    """The TOML examples of docs/configs.md: the full config, and each [paper] snippet on top of it."""
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "configs.md").read_text()
    blocks = re.findall(r"```toml\n(.*?)```", text, re.S)
    assert len(blocks) == 4
    full = C.loads(blocks[0])
    assert full.name == "digits-pgd-demo" and full.defense.attack.kwargs["steps"] == 7
    assert full.schedule["eps"]["kind"] == "linear" and len(full.callbacks) == 1
    grouped = C.loads(blocks[0] + blocks[1])
    assert grouped.eval.groups == {"pgd@0.3": ["ce@0.3", "cw@0.3"]}
    assert grouped.build_eval_attacks()["cw@0.3"].loss == "cw"
    figures = [C.loads(blocks[0] + b).paper.expect for b in blocks[2:]]
    assert figures[0][1] == figures[1][0] == C.Expectation("pgd20", 85.0, 4.0, "Table 2", 88.8)


def test_one_sided_bounds_in_paper_expectations():
    from toolbox.config import ConfigError, Expectation, from_dict

    base = {"model": {"name": "digits-cnn"}, "data": {"name": "digits"},
            "eval": {"attacks": {"pgd20": {"attack": "pgd", "threat": "linf", "eps": 0.1}}}}
    cfg = from_dict({**base, "paper": {"expect": {"clean": {"min": 95.0},
                                                  "pgd20": {"value": 85.0, "tolerance": 4.0, "max": 86.0}}}})
    clean, pgd = cfg.paper.expect
    assert clean.value is None and clean.check(95.0) and not clean.check(94.9) and clean.describe() == ">=95"
    assert pgd.check(85.5) and not pgd.check(86.5) and not pgd.check(80.0)
    assert Expectation("clean", None, None, minimum=60, maximum=90).describe() == "[60, 90]"
    with pytest.raises(ConfigError, match="min 90 is above max 80"):
        from_dict({**base, "paper": {"expect": {"clean": {"min": 90.0, "max": 80.0}}}})
    with pytest.raises(ConfigError, match="value"):
        from_dict({**base, "paper": {"expect": {"clean": {"tolerance": 1.0}}}})


def test_eval_groups_parse_validate_and_reach_paper_metrics():
    from toolbox.config import ConfigError, from_dict

    atk = {"ce": {"attack": "pgd", "threat": "linf", "eps": 0.1},
           "cw": {"attack": "pgd", "threat": "linf", "eps": 0.1, "loss": "cw"}}
    base = {"model": {"name": "digits-cnn"}, "data": {"name": "digits"}}
    cfg = from_dict({**base, "eval": {"attacks": atk, "groups": {"pgd@0.1": ["ce", "cw"]}},
                     "paper": {"expect": {"pgd@0.1": {"min": 50.0}}}})
    assert cfg.eval.groups == {"pgd@0.1": ["ce", "cw"]}
    assert cfg.eval.to_dict()["groups"] == {"pgd@0.1": ["ce", "cw"]}
    assert [e.metric for e in cfg.paper.expect] == ["pgd@0.1"]
    with pytest.raises(ConfigError, match=r"eval.groups.g: 'cv' is not under \[eval.attacks\]"):
        from_dict({**base, "eval": {"attacks": atk, "groups": {"g": ["ce", "cv"]}}})
    with pytest.raises(ConfigError, match="eval.groups.ce"):
        from_dict({**base, "eval": {"attacks": atk, "groups": {"ce": ["cw"]}}})
    with pytest.raises(ConfigError, match="non-empty list"):
        from_dict({**base, "eval": {"attacks": atk, "groups": {"g": "ce"}}})
    with pytest.raises(ConfigError, match="not a row of the eval report"):
        from_dict({**base, "eval": {"attacks": atk}, "paper": {"expect": {"pgd@0.1": 50.0}}})
