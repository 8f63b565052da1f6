"""The optional foolbox 3 adapter.

The real-foolbox tests (``foolbox==3.3.4``, an optional extra) skip only when foolbox is not
installed (a broken install fails); the argument checks, the missing-foolbox message and a stand-in attack that returns
far-away points run everywhere."""

import importlib
import importlib.util
import os
import sys
import types

import numpy as np
import pytest
import torch
from toolbox_union import (
    ALL,
    FOOLBOX_ATTACKS,
    FOOLBOX_SUITE,
    FoolboxAttack,
    foolbox_attacks,
    norm_suite,
    union_report,
)

import toolbox as tb
from toolbox.config import loads

torch.set_num_threads(1)
# foolbox 3.3.4 imports scipy.ndimage.filters (deprecated in scipy)
pytestmark = pytest.mark.filterwarnings("ignore:Please import:DeprecationWarning")

# small budgets: the digits CNN is tiny and these only have to show the adapter works
FAST = {"cw-l2": {"binary_search_steps": 3, "steps": 50}, "boundary": {"steps": 200},
        "salt-pepper": {"steps": 100}, "gaussian": {"repeats": 20}, "ddn": {"steps": 30}}
# the attack list with the norm the thesis used each in (Pointwise: ℓ2 and ℓ1)
CASES = [("deepfool", tb.L2(0.8)), ("ddn", tb.L2(0.8)), ("cw-l2", tb.L2(0.8)), ("boundary", tb.L2(0.8)),
         ("gaussian", tb.L2(1.2)), ("pointwise", tb.L2(0.8)), ("pointwise", tb.L1(2.0)),
         ("salt-pepper", tb.L1(2.0)), ("mim", tb.Linf(0.1))]


@pytest.fixture
def fb():
    """The real foolbox; skips only when it is not installed at all (an installed foolbox that
    fails to import, e.g. a missing dependency, is an error, not a skip) and the run does not
    promise the extras: with ``TOOLBOX_REQUIRE_EXTRAS=1`` (set by tox, which installs them) a
    missing foolbox fails."""
    if importlib.util.find_spec("foolbox") is None:
        if os.environ.get("TOOLBOX_REQUIRE_EXTRAS") == "1":
            pytest.fail("TOOLBOX_REQUIRE_EXTRAS=1 but foolbox (toolbox-union[foolbox]) is not installed")
        pytest.skip("foolbox (optional extra toolbox-union[foolbox]) is not installed")
    return importlib.import_module("foolbox")


def _acc(model, x, y):
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


# -- real foolbox ----------------------------------------------------------------------------------
@pytest.mark.parametrize("method,threat", CASES, ids=[f"{m}-{t.name}" for m, t in CASES])
def test_real_foolbox_attack_stays_inside_and_lowers_accuracy(fb, method, threat, digits_data, digits_model):
    _, _, xt, yt = digits_data
    x, y = xt[:80], yt[:80]
    atk = FoolboxAttack(threat, method, restarts=2, attack_kwargs=FAST.get(method), seed=0)
    assert type(atk._resolve()).__name__ == atk.foolbox_class
    assert atk.minimize == isinstance(atk._resolve(), fb.attacks.base.MinimizationAttack)
    x_adv = atk(digits_model, x, y)
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype
    assert threat.contains(x_adv, x).all()                      # ball ∩ box, per example
    with torch.no_grad():
        fooled = digits_model(x_adv).argmax(1) != y
    assert torch.equal(x_adv[~fooled], x[~fooled])             # unfooled rows come back as x
    clean, robust = _acc(digits_model, x, y), _acc(digits_model, x_adv, y)
    assert robust < clean - 0.05, (method, clean, robust)


@pytest.mark.parametrize("method", ["deepfool", "ddn"])
def test_projection_loses_no_success_of_the_raw_attack(fb, method, digits_data, digits_model):
    """Deterministic minimum-norm attacks: every example foolbox itself breaks within the radius
    is broken by the adapter too (the projection of an inside point is the point)."""
    _, _, xt, yt = digits_data
    x, y = xt[:80], yt[:80]
    threat = tb.L2(0.5)
    atk = FoolboxAttack(threat, method, attack_kwargs=FAST.get(method))
    raw = atk._resolve()(fb.PyTorchModel(digits_model, bounds=(0, 1)), x, y, epsilons=None)[0]
    with torch.no_grad():
        raw_ok = (digits_model(raw).argmax(1) != y) & (threat.norm(raw - x) <= 0.5 + 1e-6)
    x_adv = atk(digits_model, x, y)
    with torch.no_grad():
        fooled = digits_model(x_adv).argmax(1) != y
    assert raw_ok.sum() >= 5 and not (raw_ok & ~fooled).any()
    # some raw outputs are outside the ball: those are the ones the projection has to handle
    assert (threat.norm(raw - x) > 0.5).any()


def test_thesis_foolbox_suite_in_the_union_report(fb, digits_data, digits_model):
    _, _, xt, yt = digits_data
    radii = [tb.Linf(0.1), tb.L2(0.8), tb.L1(2.0)]
    suite = norm_suite(radii, steps=10, restarts=1, foolbox=True, foolbox_kwargs=FAST, seed=0)
    for g, methods in FOOLBOX_SUITE.items():
        assert {f"fb-{m}" for m in methods} | {"pgd"} == set(suite[g])
    assert suite["l2"]["fb-boundary"].restarts == 1 and suite["l2"]["fb-cw-l2"].white_box
    assert not suite["l1"]["fb-pointwise"].white_box
    rep = union_report(digits_model, (xt[:60], yt[:60]), suite, n=60)
    ev = rep.attrs["evaluate"]
    assert not any("outside" in w for w in rep.attrs["warnings"]), rep.attrs["warnings"]
    acc = rep["accuracy"]
    for g, atks in suite.items():
        eps = {"linf": 0.1, "l2": 0.8, "l1": 2.0}[g]
        for name in atks:
            assert ev.loc[f"{g}/{name}", "max_norm"] <= eps * (1 + 1e-5)
            assert acc[g] <= acc[f"{g}/{name}"] + 1e-12
        assert acc[ALL] <= acc[g] + 1e-12
    # the foolbox attacks add something: over each norm at least as strong as PGD alone, and
    # the ℓ1 Pointwise attack (the thesis's strongest ℓ1 attack on P∞) breaks examples here
    assert all(acc[g] <= acc[f"{g}/pgd"] for g in suite)
    assert acc["l1/fb-pointwise"] < acc["clean"] - 0.1


def test_seeded_runs_are_reproducible_and_leave_global_rng_alone(fb, digits_data, digits_model):
    _, _, xt, yt = digits_data
    x, y = xt[:40], yt[:40]
    torch.manual_seed(123)
    np.random.seed(123)
    t_state, n_state = torch.get_rng_state(), np.random.get_state()[1].copy()
    a = FoolboxAttack(tb.L1(2.0), "salt-pepper", attack_kwargs={"steps": 50}, seed=0)
    r1, r2 = a(digits_model, x, y), a(digits_model, x, y)
    assert torch.equal(r1, r2)
    assert torch.equal(torch.get_rng_state(), t_state) and np.array_equal(np.random.get_state()[1], n_state)
    r3 = FoolboxAttack(tb.L1(2.0), "salt-pepper", attack_kwargs={"steps": 50}, seed=1)(digits_model, x, y)
    assert not torch.equal(r1, r3)


def test_instances_per_example_radii_registry_and_config(fb, digits_data, digits_model):
    _, _, xt, yt = digits_data
    x, y = xt[:40], yt[:40]
    inst = FoolboxAttack(tb.L2(0.8), fb.attacks.L2DeepFoolAttack(steps=20))
    assert inst.minimize is None
    x_adv = inst(digits_model, x, y)
    assert inst.minimize is True and tb.L2(0.8).contains(x_adv, x).all()
    eps = torch.linspace(0.02, 0.15, 40)
    per = FoolboxAttack(tb.Linf(eps), "mim")
    x_adv = per(digits_model, x, y)
    assert tb.Linf(eps).contains(x_adv, x).all() and not tb.Linf(0.02).contains(x_adv, x).all()
    atk = tb.attack("foolbox", threat=tb.L1(2.0), method="pointwise")
    assert isinstance(atk, FoolboxAttack) and atk.foolbox_class == "PointwiseAttack"
    cfg = loads("""
[model]
name = "digits-cnn"
[data]
name = "digits"
[defense]
name = "standard"
[eval.attacks.fb-deepfool]
attack = "foolbox"
threat = "l2"
eps = 0.8
method = "deepfool"
attack_kwargs = { steps = 20 }
""")
    built = cfg.build_eval_attacks()["fb-deepfool"]
    assert isinstance(built, FoolboxAttack) and built.seed == cfg.train.seed
    assert built.spec()["attack_kwargs"] == {"steps": 20}
    rep = tb.evaluate(digits_model, (x, y), {"fb-deepfool": built}, progress=False)
    assert rep.loc["fb-deepfool", "accuracy"] < rep.loc["clean", "accuracy"]


# -- without foolbox -------------------------------------------------------------------------------
class FarAway:
    """A foolbox-like minimisation attack: returns a large perturbation (outside any ball)."""

    calls = []

    def __init__(self, **kw):
        self.kw = kw

    def __call__(self, fmodel, x, y, *, epsilons):
        FarAway.calls.append(epsilons)
        g = torch.Generator().manual_seed(len(FarAway.calls))
        raw = (x + torch.randn(x.shape, generator=g)).clamp(0, 1)
        return raw, raw, torch.ones(len(x), dtype=torch.bool)


@pytest.fixture
def stand_in(monkeypatch):
    mod = types.ModuleType("foolbox")
    mod.attacks = types.SimpleNamespace(L2DeepFoolAttack=FarAway, LinfFastGradientAttack=FarAway)
    mod.PyTorchModel = lambda model, bounds, device=None: model
    monkeypatch.setitem(sys.modules, "foolbox", mod)
    FarAway.calls = []
    return mod


def test_stand_in_outputs_far_outside_are_projected(stand_in, digits_data, digits_model):
    _, _, xt, yt = digits_data
    x, y = xt[:60], yt[:60]
    atk = FoolboxAttack(tb.L2(1.0), "deepfool", restarts=3, attack_kwargs={"steps": 5})
    x_adv = atk(digits_model, x, y)
    assert atk.white_box and atk.minimize and FarAway.calls == [None]   # deterministic: one run
    assert atk._fb_attack.kw == {"steps": 5}
    assert tb.L2(1.0).contains(x_adv, x).all()
    with torch.no_grad():
        fooled = digits_model(x_adv).argmax(1) != y
    assert torch.equal(x_adv[~fooled], x[~fooled])
    FoolboxAttack(tb.Linf(0.1), "fgsm")(digits_model, x, y)
    assert FarAway.calls[-1] == pytest.approx(0.1)                       # fixed-radius attack


def test_adapter_errors(monkeypatch, digits_data, digits_model):
    with pytest.raises(KeyError, match="deepfool"):
        FoolboxAttack(tb.L2(1.0), "nope")
    with pytest.raises(ValueError, match="restarts"):
        FoolboxAttack(tb.L2(1.0), "ddn", restarts=0)
    with pytest.raises(ValueError, match="no 'linf' version"):
        FoolboxAttack(tb.Linf(0.1), "gaussian")
    with pytest.raises(ValueError, match="attack_kwargs"):
        FoolboxAttack(tb.L2(1.0), "ddn", attack_kwargs=[1])
    with pytest.raises(ValueError, match="method"):
        FoolboxAttack(tb.L2(1.0), 3)
    with pytest.raises(KeyError, match="unknown foolbox"):
        foolbox_attacks(tb.L2(1.0), attack_kwargs={"cw": {}})
    assert set(foolbox_attacks(tb.L1(2.0))) == {"fb-salt-pepper", "fb-pointwise"}
    assert set(FOOLBOX_SUITE["l2"]) <= set(FOOLBOX_ATTACKS)
    monkeypatch.setitem(sys.modules, "foolbox", None)   # as if not installed
    _, _, xt, yt = digits_data
    with pytest.raises(ImportError, match="foolbox==3.3.4"):
        FoolboxAttack(tb.L2(1.0), "ddn")(digits_model, xt[:4], yt[:4])
