"""The optional foolbox adapter, with a stand-in foolbox module (foolbox itself is optional)."""

import sys
import types

import pytest
import torch
from toolbox_union import FoolboxAttack, norm_suite, union_report

import toolbox as tb

torch.set_num_threads(1)


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
def fake_foolbox(monkeypatch):
    fb = types.ModuleType("foolbox")
    fb.attacks = types.SimpleNamespace(L2DeepFoolAttack=FarAway, LinfFastGradientAttack=FarAway)
    fb.PyTorchModel = lambda model, bounds: model
    monkeypatch.setitem(sys.modules, "foolbox", fb)
    FarAway.calls = []
    return fb


def test_adapter_projects_into_the_ball_and_keeps_fooling_outputs(fake_foolbox, digits_data, digits_model):
    _, _, xt, yt = digits_data
    x, y = xt[:60], yt[:60]
    atk = FoolboxAttack(tb.L2(1.0), "deepfool", restarts=3, attack_kwargs={"steps": 5})
    x_adv = atk(digits_model, x, y)
    assert atk.white_box and atk.minimize and FarAway.calls[0] is None
    assert atk._fb_attack.kw == {"steps": 5}
    assert tb.L2(1.0).contains(x_adv, x).all()
    with torch.no_grad():
        fooled = digits_model(x_adv).argmax(1) != y
    assert 1 <= len(FarAway.calls) <= 3
    # unfooled rows are returned unchanged
    assert torch.equal(x_adv[~fooled], x[~fooled])
    fgsm = FoolboxAttack(tb.Linf(0.1), "fgsm")
    fgsm(digits_model, x, y)
    assert FarAway.calls[-1] == pytest.approx(0.1)
    # inside the per-norm report, beside the kernel PGD
    suite = norm_suite([tb.L2(1.0)], steps=3, restarts=1, seed=0)
    suite["l2"]["deepfool"] = atk
    rep = union_report(digits_model, (x, y), suite)
    assert rep.loc["l2", "accuracy"] <= min(rep.loc["l2/pgd", "accuracy"], rep.loc["l2/deepfool", "accuracy"])


def test_adapter_errors(monkeypatch, digits_data, digits_model):
    with pytest.raises(KeyError, match="deepfool"):
        FoolboxAttack(tb.L2(1.0), "nope")
    with pytest.raises(ValueError, match="restarts"):
        FoolboxAttack(tb.L2(1.0), "ddn", restarts=0)
    monkeypatch.setitem(sys.modules, "foolbox", None)   # as if not installed
    _, _, xt, yt = digits_data
    with pytest.raises(ImportError, match="foolbox==3.3.4"):
        FoolboxAttack(tb.L2(1.0), "ddn")(digits_model, xt[:4], yt[:4])
