"""Alpha optimisation of the final margin bounds: never worse than the paper's fixed slopes,
sound for every slope in [0, 1], and equal to the triangle-relaxation LP on one hidden layer."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from toolbox_convex import DualNetwork, margin_lower_bounds, optimized_margin_bounds
from toolbox_convex.oracles import one_hidden_layer_lp
from toolbox_convex.oracles import random_mlp as rand_net

torch.set_num_threads(1)




def _case(sizes: list[int], seed: int, n: int = 6):
    model = rand_net(sizes, seed, scale=0.8).double()
    g = torch.Generator().manual_seed(100 + seed)
    x = torch.rand(n, sizes[0], generator=g, dtype=torch.float64)
    y = torch.randint(0, sizes[-1], (n,), generator=g)
    return model, x, y


def _margin_objectives(y: torch.Tensor, k: int) -> torch.Tensor:
    eye = torch.eye(k, dtype=torch.float64)
    return eye[y].unsqueeze(1) - eye.unsqueeze(0)


def _attacked_margins(model, x, y, eps, steps=60, restarts=3) -> torch.Tensor:
    """Smallest z_y - z_j found per (example, j) by sign-gradient descent in the ℓ∞ ball ∩ box
    (from the centre and random starts) and by 500 random points: an upper bound on the minimum."""
    g = torch.Generator().manual_seed(7)
    lo, hi = (x - eps).clamp_min(0), (x + eps).clamp_max(1)
    k = model(x[:1]).shape[1]
    best = torch.full((x.shape[0], k), float("inf"), dtype=x.dtype)
    for j in range(k):
        for r in range(restarts):
            xa = x.clone() if r == 0 else lo + (hi - lo) * torch.rand(x.shape, generator=g, dtype=x.dtype)
            for s in range(steps):
                xa.requires_grad_(True)
                z = model(xa)
                m = z.gather(1, y.view(-1, 1)).squeeze(1) - z[:, j]
                (grad,) = torch.autograd.grad(m.sum(), xa)
                with torch.no_grad():
                    best[:, j] = torch.minimum(best[:, j], m)
                    step = eps * 0.25 * (1 - s / steps)
                    xa = torch.min(torch.max(xa - step * grad.sign(), lo), hi)
        with torch.no_grad():
            xs = lo.unsqueeze(1) + (hi - lo).unsqueeze(1) * torch.rand(x.shape[0], 500, x.shape[1],
                                                                      generator=g, dtype=x.dtype)
            z = model(xs)
            m = (z.gather(2, y.view(-1, 1, 1).expand(-1, 500, 1)).squeeze(2) - z[..., j]).min(1).values
            best[:, j] = torch.minimum(best[:, j], m)
    return best.scatter(1, y.view(-1, 1), 0.0)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_one_hidden_layer_optimized_equals_the_triangle_lp(seed):
    model, x, y = _case([5, 8, 3], seed)
    eps = 0.15
    dn = DualNetwork(model, x, eps)
    assert int(((dn.lower[1] < 0) & (dn.upper[1] > 0)).sum()) >= 5   # crossing ReLUs
    default = margin_lower_bounds(model, x, y, eps)
    opt = optimized_margin_bounds(model, x, y, eps, steps=1000, lr=0.1)
    assert (opt >= default - 1e-12).all()
    gain = 0.0
    for i in range(x.shape[0]):
        for j in range(3):
            if j == int(y[i]):
                assert opt[i, j].item() == 0.0
                continue
            c = np.zeros(3)
            c[int(y[i])], c[j] = 1.0, -1.0
            lp_tri = one_hidden_layer_lp(model, x[i].numpy(), eps, c, triangle=True)
            lp_dual = one_hidden_layer_lp(model, x[i].numpy(), eps, c, triangle=False)
            assert default[i, j].item() == pytest.approx(lp_dual, abs=1e-7)
            assert opt[i, j].item() <= lp_tri + 1e-7            # sound w.r.t. the LP optimum
            assert lp_tri - opt[i, j].item() <= 1e-4 * max(1.0, abs(lp_tri))
            gain = max(gain, lp_tri - lp_dual)
    assert gain > 1e-3     # the fixed slopes are strictly looser somewhere: the test has teeth


@pytest.mark.parametrize("sizes", [[5, 8, 3], [6, 10, 10, 4]])
def test_every_alpha_gives_a_valid_bound(sizes):
    """Random slopes in [0, 1] (including 0 and 1) and the optimised ones stay below the
    attacked margins; on one hidden layer also below the triangle LP."""
    model, x, y = _case(sizes, 5, n=5)
    eps = 0.2
    k = sizes[-1]
    dn = DualNetwork(model, x, eps)
    assert all(int(((dn.lower[t] < 0) & (dn.upper[t] > 0)).sum()) > 0 for t in dn.lower)
    c = _margin_objectives(y, k)
    attacked = _attacked_margins(model, x, y, eps)
    g = torch.Generator().manual_seed(3)
    trials = []
    for kind in ("zeros", "ones", "rand", "rand"):
        alphas = {}
        for t in dn.lower:
            shape = (x.shape[0], k, *dn.shapes[t])
            if kind == "rand":
                alphas[t] = torch.rand(shape, generator=g, dtype=torch.float64)
            else:
                alphas[t] = torch.full(shape, 0.0 if kind == "zeros" else 1.0, dtype=torch.float64)
        trials.append(dn.bound(c, alphas).detach())
    trials.append(optimized_margin_bounds(model, x, y, eps, steps=60).detach())
    for b in trials:
        assert (b <= attacked + 1e-9).all()
    if len(sizes) == 3:
        for i in range(x.shape[0]):
            for j in range(k):
                if j == int(y[i]):
                    continue
                cc = np.zeros(k)
                cc[int(y[i])], cc[j] = 1.0, -1.0
                lp_tri = one_hidden_layer_lp(model, x[i].numpy(), eps, cc, triangle=True)
                assert max(b[i, j].item() for b in trials) <= lp_tri + 1e-7


def test_default_unchanged_and_deep_net_never_worse():
    model, x, y = _case([6, 10, 10, 4], 2)
    eps = 0.15
    dn = DualNetwork(model, x, eps)
    c = _margin_objectives(y, 4)
    plain = dn.bound(c)
    # slopes equal to d reproduce the default bound; alpha_steps=0 is the default path
    d = {t: dn._slope(t).unsqueeze(1).expand(x.shape[0], 4, *dn.shapes[t]) for t in dn.lower}
    torch.testing.assert_close(dn.bound(c, d), plain, atol=1e-12, rtol=0)
    assert torch.equal(margin_lower_bounds(model, x, y, eps, alpha_steps=0), plain)
    opt = margin_lower_bounds(model, x, y, eps, alpha_steps=80, alpha_lr=0.05)
    assert (opt >= plain - 1e-12).all()
    assert (opt - plain).max() > 1e-4           # and strictly tighter somewhere
    # the result stays differentiable in the parameters (final pass at the best slopes)
    opt.sum().backward()
    assert model[0].weight.grad is not None and torch.isfinite(model[0].weight.grad).all()


def test_alpha_bad_inputs_raise():
    model, x, y = _case([5, 8, 3], 0, n=2)
    with pytest.raises(ValueError, match="alpha_steps"):
        margin_lower_bounds(model, x, y, 0.1, alpha_steps=-1)
    with pytest.raises(ValueError, match="alpha_lr"):
        margin_lower_bounds(model, x, y, 0.1, alpha_steps=3, alpha_lr=0.0)
    dn = DualNetwork(model, x, 0.1)
    c = _margin_objectives(y, 3)
    with pytest.raises(ValueError, match=r"alphas\[1\]"):
        dn.bound(c, {1: torch.zeros(2, 3, 5, dtype=torch.float64)})
    with pytest.raises(ValueError, match="alphas"):
        dn.bound(c, {0: torch.zeros(2, 3, 8, dtype=torch.float64)})
