import torch

import toolbox as tb


def test_example_noise_stays_in_ball_and_is_weaker_than_pgd(digits_model, digits_data):
    _, _, x, y = digits_data
    x, y = x[:200], y[:200]
    threat = tb.Linf(0.2)
    noise = tb.attack("example-noise", threat=threat, samples=5, seed=0)
    x_adv = noise(digits_model, x, y)
    assert x_adv.shape == x.shape
    assert bool(threat.contains(x_adv, x).all())
    with torch.no_grad():
        acc_noise = (digits_model(x_adv).argmax(1) == y).float().mean()
        x_pgd = tb.attack("pgd", threat=threat, steps=10, seed=0)(digits_model, x, y)
        acc_pgd = (digits_model(x_pgd).argmax(1) == y).float().mean()
    assert acc_pgd < acc_noise
