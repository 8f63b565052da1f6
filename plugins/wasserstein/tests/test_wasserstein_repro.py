"""The plugin's reproduction configs: found through the hook, valid, and the CPU scale-downs
reach their stated figures (a standard and a binarized mnist-small, 3 epochs of the thesis's
optimiser, 200 test images under the growing-radius attack read at eps = 0.5 and 1.0)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from toolbox_wasserstein import WassersteinAT, WassersteinPGD
from toolbox_wasserstein.plugin import repro_dir, toolbox_repro_configs

from toolbox.config import load
from toolbox.testing import check_repro_configs


def test_hook_lists_valid_configs():
    paths = toolbox_repro_configs()
    assert all(isinstance(p, Path) and p.parent == repro_dir() for p in paths)
    configs = check_repro_configs(
        "wasserstein", includes={"mnist_paper.toml", "mnist_binarized_paper.toml",
                                 "mnist_wasserstein_at_paper.toml", "cifar10_wasserstein_at_paper.toml"},
        quick={"mnist_standard_cpu.toml", "mnist_binarized_cpu.toml"})
    assert set(configs) == {p.name for p in paths}
    for name, cfg in configs.items():
        for key, atk in cfg.build_eval_attacks().items():
            assert isinstance(atk, WassersteinPGD), (name, key)
            # the schedule stops at the last radius below the reported one
            e0, g, top = atk.eps0, atk.growth, float(atk.threat.eps)
            last = e0 * g ** ((atk.steps - 1) // atk.every)
            assert last < top < e0 * g ** ((atk.steps - 1) // atk.every + 1) + 1e-9, (name, key)
            assert atk.threat.p == 1 and atk.threat.kernel_size == 5
        if cfg.build_defense().name == "wasserstein-at":
            assert isinstance(cfg.build_defense(), WassersteinAT)


def _scaledown(name: str):
    """Train and attack as the quick config ``name`` says; both radii are read off one
    growing-radius search (``w@1.0``'s schedule passes through ``w@0.5``'s: the same iterates,
    half the cost of evaluating both; ``toolbox repro wasserstein --quick`` runs them
    separately).  Returns the figures, the search, the attack and the clean images."""
    torch.set_num_threads(1)
    cfg = load(repro_dir() / name)
    model = cfg.build_model()
    train, _, test = cfg.build_data()
    cfg.build_trainer(model).fit(train, epochs=cfg.train.epochs)
    model.eval()
    x, y = test.x[: cfg.eval.n], test.y[: cfg.eval.n].long()
    x = x.float() / 255 if x.dtype == torch.uint8 else x.float()
    atk = cfg.build_eval_attacks()["w@1.0"]
    res = atk.search(model, x, y)
    with torch.no_grad():
        clean = 100 * float((model(x).argmax(1) == y).float().mean())
    got = {"clean": clean, "w@0.5": 100 * res.accuracy(0.5), "w@1.0": 100 * res.accuracy(1.0)}
    print(cfg.name, got)
    for e in cfg.paper.expect:
        assert e.check(got[e.metric]), (e, got)
    assert got["w@1.0"] < got["w@0.5"] <= got["clean"]
    # the radii found lie on the schedule and every broken point is in its ball
    ok = res.success & (res.eps > 0)
    assert atk.threat.with_eps(res.eps[ok].float()).contains(res.x_adv[ok], x[ok]).all()
    return got


@pytest.mark.slow
def test_cpu_scaledown_standard_model():
    """The thesis's spot numbers: about half the standard model's test images broken by
    eps = 0.5, about 94 % by eps = 1 (bands: the seed spread measured here)."""
    _scaledown("mnist_standard_cpu.toml")


@pytest.mark.slow
def test_cpu_scaledown_binarized_model():
    """Binarizing the input is only marginally better (reference README: 14 % vs the standard
    model's 4 % at eps = 1): the curve stays far below robust, and above the standard
    model's band at eps = 1 (its expectation: 6 +- 6 %)."""
    got = _scaledown("mnist_binarized_cpu.toml")
    assert got["w@0.5"] < 95.0


def test_binarized_model_thresholds_with_straight_through_gradient():
    from toolbox_wasserstein.models import Binarize

    import toolbox as tb

    b = Binarize(0.5)
    x = torch.tensor([[0.2, 0.5, 0.7]], requires_grad=True)
    out = b(x)
    assert out.tolist() == [[0.0, 0.0, 1.0]]
    out.sum().backward()
    assert x.grad.tolist() == [[1.0, 1.0, 1.0]]
    m = tb.models.create("mnist-small-binarized", seed=0)
    z = torch.rand(2, 1, 28, 28)
    assert torch.equal(m(z), m((z > 0.5).float()))
    with pytest.raises(ValueError, match="threshold"):
        Binarize(1.5)
