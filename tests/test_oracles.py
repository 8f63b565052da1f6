"""Peer libraries as test oracles: the toolbox's PGD and APGD-CE must reach the same robust
accuracy as torchattacks' PGD and pyautoattack's APGD-CE on the same model and data.

Setting: ``digits_model`` (about 97 % clean) on the 500 held-out digits, Linf eps = 0.07,
where robust accuracy sits near 50 %: the regime in which a weaker or stronger attack shows
most, so agreement there means something.  The peers are installed with ``--no-deps``
(``tox`` does it in ``commands_pre``); deselect these tests with ``-m "not oracle"``.

Measured on the development machine (seeds 0-5): toolbox PGD-20 48.2-48.8 % vs torchattacks
48.2-48.8 % (largest gap 0.2 points); toolbox APGD-CE 47.6-48.0 % vs pyautoattack 47.4-48.4 %
(largest gap 0.6 points).
"""

from __future__ import annotations

import importlib

import pytest
import torch

import toolbox as tb

pytestmark = pytest.mark.oracle

EPS = 0.07
PGD_STEPS = 20
PGD_STEP_SIZE = EPS / 4
APGD_STEPS = 100
SEED = 0


def _peer(module: str, pin: str):
    try:
        return importlib.import_module(module)
    except ImportError as exc:  # a missing oracle is an environment error, not a pass
        raise AssertionError(
            f"the oracle {module!r} is not installed: pip install --no-deps {pin} "
            f"(or deselect the oracle tests with -m 'not oracle')") from exc


def _accuracy(model, x, y) -> float:
    """Accuracy of ``model`` on ``x [N, ...]`` with labels ``y [N]``, in percent."""
    with torch.no_grad():
        return 100.0 * float((model(x).argmax(1) == y).float().mean())


@pytest.fixture
def test_set(digits_data):
    _, _, x, y = digits_data
    assert x.shape == (500, 1, 8, 8) and y.shape == (500,)
    return x, y


@pytest.fixture
def toolbox_pgd(digits_model, test_set):
    x, y = test_set
    threat = tb.Linf(EPS)
    atk = tb.attack("pgd", threat=threat, steps=PGD_STEPS, step_size=PGD_STEP_SIZE,
                    random_start=True, restarts=1, seed=SEED)
    x_adv = atk(digits_model, x, y)
    assert bool(threat.contains(x_adv, x).all())
    return _accuracy(digits_model, x_adv, y)


@pytest.fixture
def toolbox_apgd(digits_model, test_set):
    x, y = test_set
    threat = tb.Linf(EPS)
    atk = tb.attack("apgd-ce", threat=threat, steps=APGD_STEPS, restarts=1, seed=SEED)
    x_adv = atk(digits_model, x, y)
    assert bool(threat.contains(x_adv, x).all())
    return _accuracy(digits_model, x_adv, y)


def test_setting_is_mid_range(digits_model, test_set, toolbox_pgd, toolbox_apgd):
    """Agreement only means something where robust accuracy is far from 0 and from clean."""
    x, y = test_set
    clean = _accuracy(digits_model, x, y)
    assert clean >= 90.0
    for name, acc in (("pgd", toolbox_pgd), ("apgd-ce", toolbox_apgd)):
        assert 20.0 <= acc <= 80.0, f"{name} robust accuracy {acc:.1f}% is not mid-range"
        assert acc <= clean - 10.0, f"{name} barely lowers accuracy ({acc:.1f}% vs {clean:.1f}%)"
    # APGD-CE (100 adaptive steps) is at least about as strong as PGD-20
    assert toolbox_apgd <= toolbox_pgd + 1.0


def test_pgd_matches_torchattacks(digits_model, test_set, toolbox_pgd, toolbox_seed):
    torchattacks = _peer("torchattacks", "torchattacks==3.5.1")
    x, y = test_set
    torch.manual_seed(SEED)  # torchattacks draws its random start from the global generator
    peer = torchattacks.PGD(digits_model, eps=EPS, alpha=PGD_STEP_SIZE, steps=PGD_STEPS,
                            random_start=True)
    x_peer = peer(x, y)
    assert float((x_peer - x).abs().max()) <= EPS + 1e-6
    theirs = _accuracy(digits_model, x_peer, y)
    assert 20.0 <= theirs <= 80.0
    assert abs(toolbox_pgd - theirs) <= 1.0, (
        f"toolbox PGD {toolbox_pgd:.1f}% vs torchattacks PGD {theirs:.1f}% (eps {EPS}, "
        f"{PGD_STEPS} steps of {PGD_STEP_SIZE:.4f}, random start)")


def test_apgd_ce_matches_pyautoattack(digits_model, test_set, toolbox_apgd, toolbox_seed):
    pyautoattack = _peer("pyautoattack", "pyautoattack==0.2.0")
    x, y = test_set
    # pyautoattack 0.2.0: keyword-only options, and the result is a tuple (x_adv, y_adv)
    aa = pyautoattack.AutoAttack(digits_model, attacks=["apgd-ce"], version="custom", eps=EPS,
                                 norm="Linf", seed=SEED, device="cpu")
    assert aa.apgd.n_iter == APGD_STEPS  # fixed at construction (its step checkpoints too)
    aa.apgd.n_restarts = 1  # the toolbox's default; AutoAttack's "standard" uses 5
    x_peer, _ = aa.run_standard_evaluation(x, y, batch_size=500)
    assert float((x_peer - x).abs().max()) <= EPS + 1e-6
    theirs = _accuracy(digits_model, x_peer, y)
    assert 20.0 <= theirs <= 80.0
    assert abs(toolbox_apgd - theirs) <= 1.5, (
        f"toolbox APGD-CE {toolbox_apgd:.1f}% vs pyautoattack APGD-CE {theirs:.1f}% "
        f"(eps {EPS}, {APGD_STEPS} steps, 1 restart)")
