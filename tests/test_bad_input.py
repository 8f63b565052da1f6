"""Bad arguments to threat models, losses and attacks raise ``ValueError`` naming the argument
(and the value), unknown names a ``KeyError`` with a did-you-mean and the available names."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import toolbox as tb
from toolbox import losses

torch.set_num_threads(1)

NAN, INF = float("nan"), float("inf")


@pytest.fixture
def xy():
    g = torch.Generator().manual_seed(0)
    return torch.rand(6, 1, 8, 8, generator=g), torch.randint(0, 10, (6,), generator=g)


# ----------------------------------------------------------------------------- threat models
@pytest.mark.parametrize("cls", [tb.Linf, tb.L2, tb.L1])
@pytest.mark.parametrize("eps", [-0.1, NAN, INF, -INF, "0.3", None, True, [0.1, 0.2],
                                 torch.tensor([[0.1, 0.2]]), torch.tensor([0.1, -0.2]),
                                 torch.tensor([0.1, NAN]), torch.tensor([True, False])],
                         ids=repr)
def test_bad_eps(cls, eps):
    with pytest.raises(ValueError, match="eps"):
        cls(eps)
    with pytest.raises(ValueError, match="eps"):
        cls(0.1).with_eps(eps)


def test_accepted_eps_forms():
    assert tb.Linf(0).eps == 0.0 and tb.L2(np.float32(0.5)).eps == 0.5
    assert tb.L1(torch.tensor(2.0)).eps == 2.0  # a 0-d tensor is a plain radius
    e = tb.Linf(torch.tensor([1, 2])).eps  # integer radii become floating
    assert e.is_floating_point() and e.tolist() == [1.0, 2.0]


@pytest.mark.parametrize("k", [0, -1, (5, 2), (0, 3), 2.5, (1, 2, 3), "5", (1.0, 2)], ids=repr)
def test_bad_l1_k(k):
    with pytest.raises(ValueError, match="k must"):
        tb.L1(1.0, k=k)


@pytest.mark.parametrize("kind,bad,good", [("threat", "linff", "linf"), ("threat", "L2_", "l2")])
def test_unknown_threat_name(kind, bad, good):
    with pytest.raises(KeyError, match=f"Did you mean '{good}'") as info:
        tb.threat(bad, eps=0.1)
    assert "Available: l1, l2, linf" in str(info.value)


@pytest.mark.parametrize("cls", [tb.Linf, tb.L2, tb.L1])
def test_per_example_eps_of_the_wrong_length(cls, xy):
    x, _ = xy
    tm = cls(torch.full((4,), 0.1))  # x has 6 rows
    for call in (lambda: tm.project(x, x), lambda: tm.random_init(x), lambda: tm.contains(x, x),
                 lambda: tm.step(x, x, torch.ones_like(x), 0.1)):
        with pytest.raises(ValueError, match=r"eps is per-example with 4 entries but x has 6"):
            call()


@pytest.mark.parametrize("cls", [tb.Linf, tb.L2, tb.L1])
def test_x_adv_of_another_shape(cls, xy):
    x, _ = xy
    with pytest.raises(ValueError, match="x_adv must have the shape of x"):
        cls(0.1).project(x[:1], x)  # would broadcast silently
    with pytest.raises(ValueError, match="x_adv must have the shape of x"):
        cls(0.1).contains(x[:, :, :4], x)


def test_as_threat_rejects_other_things():
    with pytest.raises(ValueError, match="threat must be a ThreatModel"):
        tb.attack("pgd", threat="linf")
    with pytest.raises(ValueError, match="threat must be a ThreatModel"):
        tb.attack("pgd", threat=0.3)
    with pytest.raises(ValueError, match="eps"):
        tb.attack("pgd", threat=("linf", -0.3))
    assert tb.attack("pgd", threat={"name": "l2", "eps": 0.5}).threat == tb.L2(0.5)


# ----------------------------------------------------------------------------------- losses
def test_unknown_loss_name():
    with pytest.raises(KeyError, match="Did you mean 'dlr'") as info:
        losses.get("dlrr")
    assert "Available:" in str(info.value) and "ce" in str(info.value)
    with pytest.raises(KeyError, match="Did you mean 'ce'"):
        tb.attack("pgd", threat=tb.Linf(0.1), loss="cee")  # at construction, not at the call
    with pytest.raises(KeyError, match="loss"):
        tb.attack("apgd", threat=tb.Linf(0.1), loss=3)


# ------------------------------------------------------------------------ attack construction
def test_unknown_attack_name():
    with pytest.raises(KeyError, match="Did you mean 'pgd'") as info:
        tb.attack("pgdd", threat=tb.Linf(0.1))
    assert "apgd-ce" in str(info.value) and "fgsm" in str(info.value)
    with pytest.raises(KeyError, match="Did you mean 'apgd-ce'"):
        tb.attack("apgd_ce", threat=tb.Linf(0.1))


def test_attack_without_threat():
    with pytest.raises(ValueError, match="threat="):
        tb.attack("pgd")


@pytest.mark.parametrize("name", ["pgd", "apgd", "apgd-ce", "apgd-t"])
@pytest.mark.parametrize("steps", [10.5, 10.0, "10", -1, True, None, NAN, torch.tensor(3)], ids=repr)
def test_bad_steps(name, steps):
    with pytest.raises(ValueError, match="steps must be"):
        tb.attack(name, threat=tb.Linf(0.1), steps=steps)


def test_numpy_integers_are_integers():
    atk = tb.attack("pgd", threat=tb.Linf(0.1), steps=np.int64(7), restarts=np.int32(2),
                    step_size=np.float32(0.01))
    assert type(atk.steps) is int and atk.steps == 7 and type(atk.restarts) is int
    assert type(atk.step_size) is float
    assert tb.attack("pgd", threat=tb.Linf(0.1), steps=0).steps == 0  # zero steps: the start


@pytest.mark.parametrize("arg,value", [
    ("restarts", 0), ("restarts", 1.5), ("restarts", -2),
    ("step_size", -0.1), ("step_size", 0), ("step_size", NAN), ("step_size", INF), ("step_size", "0.1"),
    ("mode", "train"), ("mode", None), ("target_rule", "randm"), ("seed", "1"), ("seed", 1.5),
    ("seed", True),
], ids=repr)
def test_bad_pgd_options(arg, value):
    with pytest.raises(ValueError, match=arg):
        tb.attack("pgd", threat=tb.Linf(0.1), **{arg: value})


@pytest.mark.parametrize("arg,value", [
    ("rho", -0.5), ("rho", 0), ("momentum", NAN), ("n_target_classes", 0), ("restarts", 0),
    ("mode", "training"), ("seed", "x"),
], ids=repr)
def test_bad_apgd_options(arg, value):
    with pytest.raises(ValueError, match=arg):
        tb.attack("apgd-t", threat=tb.L2(0.5), **{arg: value})


@pytest.mark.parametrize("arg,value", [("step_size", -1.0), ("target_rule", "nope"),
                                       ("mode", "x")], ids=repr)
def test_bad_fgsm_options(arg, value):
    with pytest.raises(ValueError, match=arg):
        tb.attack("fgsm", threat=tb.Linf(0.1), **{arg: value})


def test_unknown_keyword_is_a_type_error():
    with pytest.raises(TypeError, match="stepz"):
        tb.attack("pgd", threat=tb.Linf(0.1), stepz=3)


# --------------------------------------------------------------------------------- attack call
@pytest.fixture
def atk():
    return tb.attack("pgd", threat=tb.Linf(0.1), steps=2, seed=0)


@pytest.fixture
def model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 10)).eval()


@pytest.mark.parametrize("make_x,match", [
    (lambda x: x * 2, r"x must lie in \[0, 1\]"),
    (lambda x: x - 0.5, r"x must lie in \[0, 1\].*got range \[-0.4"),
    (lambda x: torch.where(x > 0.5, NAN, x), "x contains NaN"),
    (lambda x: torch.where(x > 0.5, INF, x), r"x must lie in \[0, 1\]"),
    (lambda x: (x * 255).to(torch.uint8), "x must be a floating tensor.*uint8"),
    (lambda x: x.long(), "x must be a floating tensor"),
    (lambda x: x.numpy(), "x must be a torch.Tensor, got ndarray"),
    (lambda x: x.flatten()[:5], "x must have a batch dimension"),
    (lambda x: x.tolist(), "x must be a torch.Tensor"),
], ids=["x2", "shifted", "nan", "inf", "uint8", "long", "numpy", "1d", "list"])
def test_bad_x(atk, model, xy, make_x, match):
    x, y = xy
    with pytest.raises(ValueError, match=match):
        atk(model, make_x(x), y)


@pytest.mark.parametrize("make_y,match", [
    (lambda y: y[:5], r"y must have shape \(6,\) to match x, got shape \(5,\)"),
    (lambda y: torch.cat([y, y]), r"y must have shape \(6,\)"),
    (lambda y: y[:, None], r"y must have shape \(6,\).*\(6, 1\)"),
    (lambda y: y.float(), "y must hold integer class indices, got dtype torch.float32"),
    (lambda y: y > 4, "y must hold integer class indices, got dtype torch.bool"),
    (lambda y: y.tolist(), "y must be a torch.Tensor"),
    (lambda y: torch.full_like(y, 10), r"y holds labels outside \[0, 9\]: min 10, max 10"),
    (lambda y: torch.full_like(y, -1), r"y holds labels outside \[0, 9\]"),
], ids=["short", "long", "2d", "float", "bool", "list", "too-big", "negative"])
def test_bad_y(atk, model, xy, make_y, match):
    x, y = xy
    with pytest.raises(ValueError, match=match):
        atk(model, x, make_y(y))


def test_per_example_eps_must_match_the_batch(model, xy):
    x, y = xy
    atk = tb.attack("pgd", threat=tb.Linf(torch.full((5,), 0.1)), steps=2)
    with pytest.raises(ValueError, match="eps is per-example with 5 entries but x has 6"):
        atk(model, x, y)


def test_bad_target(model, xy):
    x, y = xy
    tgt = tb.attack("pgd", threat=tb.Linf(0.1), steps=2, targeted=True)
    with pytest.raises(ValueError, match="target= is only accepted by targeted attacks"):
        tb.attack("pgd", threat=tb.Linf(0.1), steps=2)(model, x, y, target=(y + 1) % 10)
    with pytest.raises(ValueError, match="target= is only accepted"):
        tb.attack("apgd-t", threat=tb.Linf(0.1), steps=2)(model, x, y, target=(y + 1) % 10)
    with pytest.raises(ValueError, match=r"target must have shape \(6,\)"):
        tgt(model, x, y, target=y[:3])
    with pytest.raises(ValueError, match=r"target holds labels outside \[0, 9\]"):
        tgt(model, x, y, target=y + 10)
    with pytest.raises(ValueError, match="target must differ from the label y"):
        tgt(model, x, y, target=y)
    out = tgt(model, x, y, target=(y + 1) % 10)  # the good case works
    assert out.shape == x.shape


def test_bad_generator(atk, model, xy):
    x, y = xy
    with pytest.raises(ValueError, match="generator must be a torch.Generator"):
        atk(model, x, y, generator=0)


def test_model_with_the_wrong_output(xy):
    x, y = xy
    atk = tb.attack("pgd", threat=tb.Linf(0.1), steps=1)
    flat = nn.Sequential(nn.Flatten(), nn.Linear(64, 1), nn.Flatten(0))  # (N,), not (N, C)
    with pytest.raises(ValueError, match=r"model output must be logits of shape \(1, num_classes\)"):
        atk(flat, x, y)
    with pytest.raises(ValueError, match=r"model output must be logits of shape \(6, num_classes\)"):
        atk(flat, x)


def test_dlr_needs_three_classes(xy):
    x, _ = xy
    two = nn.Sequential(nn.Flatten(), nn.Linear(64, 2)).eval()
    with pytest.raises(ValueError, match="dlr loss needs at least 3 classes"):
        tb.attack("apgd-dlr", threat=tb.Linf(0.1), steps=2)(two, x, torch.zeros(6, dtype=torch.long))


def test_check_false_skips_validation_but_still_attacks(atk, model, xy):
    x, y = xy
    out = atk(model, x, y, check=False)
    assert tb.Linf(0.1).contains(out, x).all()
