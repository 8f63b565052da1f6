"""The evaluation / baseline attacks the plugin adds: multi-targeted PGD (Multi-T) and one-step
TRADES' FGSM on KL from a uniform start."""

import pytest
import torch
import torch.nn.functional as F
from toolbox_atlas import FGSMKL, MultiTargeted, target_margin

import toolbox as tb


def _linear(c=4, d=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    m = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(d, c))
    with torch.no_grad():
        m[1].weight.copy_(torch.randn(c, d, generator=g))
        m[1].bias.copy_(torch.randn(c, generator=g))
    return m.eval()


def test_target_margin_by_hand():
    z = torch.tensor([[1.0, 3.0, -2.0], [0.5, 0.0, 4.0]])
    yy = torch.tensor([[0, 1], [2, 0]])
    assert torch.equal(target_margin(z, yy), torch.tensor([2.0, -3.5]))


def test_multi_targeted_is_exact_on_a_linear_model():
    """For f(x) = Wx + b and x away from the box edges, target t is reachable iff
    f_t(x) - f_c(x) + eps * ||w_t - w_c||_1 > 0; one step of size 2 eps reaches that vertex.  The
    attack must break exactly the examples where some wrong class is reachable, whichever class."""
    torch.manual_seed(0)
    model, eps = _linear(), 0.05
    with torch.no_grad():  # a class rarely second-likeliest but the easiest to reach
        model[1].weight[3] *= 4
        model[1].bias[3] -= 4
    x = 0.3 + 0.4 * torch.rand(400, 1, 3, 4)
    w, b = model[1].weight, model[1].bias
    with torch.no_grad():
        z = x.flatten(1) @ w.T + b
    y = z.argmax(1)  # every example starts correct
    reach = z - z.gather(1, y[:, None]) + eps * (w[None, :, :] - w[y][:, None, :]).abs().sum(2)
    reach.scatter_(1, y[:, None], float("-inf"))
    expected_broken = (reach > 0).any(1)
    assert 0 < int(expected_broken.sum()) < 400
    atk = MultiTargeted(tb.Linf(eps), steps=1, step_size=2 * eps, seed=0)
    xa = atk(model, x, y)
    assert (xa - x).abs().max() <= eps + 1e-6 and xa.min() >= 0 and xa.max() <= 1
    with torch.no_grad():
        broken = model(xa).argmax(1) != y
    assert torch.equal(broken, expected_broken)
    # the first target alone (the most likely wrong class) misses some the full sweep finds
    with torch.no_grad():
        one = model(MultiTargeted(tb.Linf(eps), steps=1, step_size=2 * eps, targets=1, seed=0)(model, x, y)).argmax(1) != y
    assert bool((broken & ~one).any()) and not bool((one & ~broken).any())


def test_multi_targeted_on_the_digits_cnn(digits_model, digits_data):
    _, _, xt, yt = digits_data
    x, y = xt[:80], yt[:80]
    thr = tb.Linf(0.1)
    a_all = tb.attack("multi-targeted", threat=thr, steps=10, step_size=0.025, seed=1)
    a_one = tb.attack("multi-targeted", threat=thr, steps=10, step_size=0.025, targets=1, seed=1)
    with torch.no_grad():
        clean = digits_model(x).argmax(1) == y
        acc_all = (digits_model(a_all(digits_model, x, y)).argmax(1) == y)
        acc_one = (digits_model(a_one(digits_model, x, y)).argmax(1) == y)
    # more targets break a superset (the first target's run is the same), and break something
    assert not bool((acc_all & ~acc_one).any())
    assert int(acc_all.sum()) < int(clean.sum())
    assert torch.equal(a_all(digits_model, x, y), a_all(digits_model, x, y))  # seeded
    # it runs inside tb.evaluate like any kernel attack, and the margin attack is no weaker there
    # than the untargeted CW-margin PGD of the same budget per run
    rep = tb.evaluate(digits_model, (x, y), {"un-t": tb.attack("pgd", threat=thr, steps=10, step_size=0.025, loss="cw"),
                                             "multi-t": a_all})
    acc = rep["accuracy"]
    assert acc["multi-t"] <= acc["un-t"] and acc["multi-t"] < acc["clean"]


def test_multi_targeted_bad_arguments():
    with pytest.raises(ValueError, match="targets"):
        MultiTargeted(tb.Linf(0.1), targets=0)
    with pytest.raises(ValueError, match="restarts"):
        MultiTargeted(tb.Linf(0.1), restarts=1.5)
    with pytest.raises(ValueError, match="step_size"):
        MultiTargeted(tb.Linf(0.1), step_size=-1)


def test_fgsm_kl_matches_a_direct_computation(digits_model, digits_data):
    _, _, xt, _ = digits_data
    x, eps = xt[:32], 0.2
    atk = FGSMKL(tb.Linf(eps), mode="eval")
    g1 = torch.Generator().manual_seed(3)
    xa = atk(digits_model, x, generator=g1)
    # by hand: uniform start in the ball (the threat's random_init), one signed step of 1.25 eps on
    # KL(p(x) || p(x')), projection into the ball and the box
    g2 = torch.Generator().manual_seed(3)
    with torch.no_grad():
        p = F.softmax(digits_model(x), 1)
    x0 = tb.Linf(eps).random_init(x, g2).requires_grad_(True)
    kl = (p * (p.log() - F.log_softmax(digits_model(x0), 1))).sum()
    (g,) = torch.autograd.grad(kl, x0)
    ref = torch.min(torch.max(x0.detach() + 1.25 * eps * g.sign(), x - eps), x + eps).clamp(0, 1)
    assert torch.allclose(xa, ref, atol=1e-6)
    assert (xa - x).abs().max() <= eps + 1e-6
    # during an eps warm-up the step follows the radius; at eps 0 the adversary is x
    assert atk.with_eps(0.1).step_size is None
    assert torch.equal(FGSMKL(tb.Linf(0.0))(digits_model, x), x)
