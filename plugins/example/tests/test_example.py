"""Tests of the template plugin; they use the fixtures of the toolbox's pytest plugin
(``digits_data``, ``digits_model``, ``toolbox_seed``), which pytest loads automatically."""

import pytest
import torch

import toolbox as tb


def test_registered_through_the_entry_point():
    assert "example-noise" in tb.names("attack")
    df = tb.plugins().set_index("plugin")
    assert df.loc["example", "distribution"] == "toolbox-example"
    assert "attack:example-noise" in df.loc["example", "registers"]


def test_bad_arguments_name_the_argument():
    with pytest.raises(ValueError, match="samples"):
        tb.attack("example-noise", threat=tb.Linf(0.1), samples=0)


def test_seeded_calls_are_reproducible(digits_model, digits_data, toolbox_seed):
    _, _, x, y = digits_data
    atk = tb.attack("example-noise", threat=tb.Linf(0.2), samples=3, seed=toolbox_seed)
    assert torch.equal(atk(digits_model, x[:50], y[:50]), atk(digits_model, x[:50], y[:50]))


def test_example_noise_stays_in_ball_and_is_weaker_than_pgd(digits_model, digits_data):
    _, _, x, y = digits_data
    x, y = x[:200], y[:200]
    threat = tb.Linf(0.2)
    noise = tb.attack("example-noise", threat=threat, samples=5, seed=0)
    x_adv = noise(digits_model, x, y)
    assert x_adv.shape == x.shape
    assert bool(threat.contains(x_adv, x).all())
    with torch.no_grad():
        acc_clean = (digits_model(x).argmax(1) == y).float().mean()
        acc_noise = (digits_model(x_adv).argmax(1) == y).float().mean()
        x_pgd = tb.attack("pgd", threat=threat, steps=10, seed=0)(digits_model, x, y)
        acc_pgd = (digits_model(x_pgd).argmax(1) == y).float().mean()
    assert acc_pgd < acc_noise <= acc_clean
