"""Random-projection bounds (thesis §3.4.5, checks 3.5.1-3.5.3): the median / Gaussian
estimators have the right centre and spread, converge to the exact bounds, fall back to the
exact computation bit-for-bit-close when a source is small, and certify about as much as the
exact bound on a real model; the projected robust loss trains."""

from __future__ import annotations

import math

import pytest
import torch
from toolbox_convex import DualNetwork, DualNetworkCertifier, margin_lower_bounds
from toolbox_convex.dual import sample_median
from toolbox_convex.oracles import small_conv_net
from torch import nn

import toolbox as tb
from toolbox.defense import Batch

torch.set_num_threads(1)


def mlp(sizes: list[int], seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Flatten()]
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers).double().eval()


def spreads(dn: DualNetwork) -> torch.Tensor:
    """All intermediate half-widths ``(u - l) / 2``, concatenated."""
    return torch.cat([((dn.upper[t] - dn.lower[t]) / 2).flatten() for t in sorted(dn.lower)])


def test_sample_median():
    a = torch.tensor([[3.0, 1.0, 2.0], [5.0, 4.0, 6.0]])
    assert sample_median(a, 1).tolist() == [2.0, 5.0]
    b = torch.tensor([[4.0, 1.0, 3.0, 2.0]])
    assert sample_median(b, 1).tolist() == [2.5]        # mean of the middle two (torch: 2.0)
    assert sample_median(b.t(), 0).tolist() == [2.5]


@pytest.mark.parametrize("r", [10, 50])
def test_median_estimator_is_centred_with_the_predicted_spread(r):
    """First hidden layer (no closed form: ``fast_first=False``), input dim 200 > r: the
    estimated half-width over 400 independent draws has median ratio 1 to the exact ℓ1 term
    (the median of |Cauchy(0, s)| is s) and relative std pi / (2 sqrt r) (0.50 at r = 10,
    0.22 at r = 50).  With an even r the sample median averages the two middle values, which
    biases it up slightly when they are far apart: about +5 % at r = 10, +1 % at r = 50."""
    net = mlp([200, 8, 3], 0)
    x = torch.rand(1, 200, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    exact = spreads(DualNetwork(net, x, 0.1, fast_first=False))
    g = torch.Generator().manual_seed(0)
    ratios = torch.stack([spreads(DualNetwork(net, x, 0.1, fast_first=False, projections=r,
                                              generator=g)) / exact for _ in range(400)])
    # 400 draws x 8 units: the median and the std are pinned to a few percent
    tol = 0.03 if r == 50 else 0.08
    assert ratios.median().item() == pytest.approx(1.0, abs=tol)
    assert ratios.log().mean().item() == pytest.approx(0.0, abs=tol)
    rel_std = ratios.std(0).mean().item()
    assert rel_std == pytest.approx(math.pi / (2 * math.sqrt(r)), rel=0.2)


def test_gaussian_estimator_for_l2_is_unbiased_in_the_square():
    """ℓ2 input ball: ||G R||_2^2 / r is unbiased for ||g||_2^2 and its relative std is
    about 1 / sqrt(2 r)."""
    r = 20
    net = mlp([200, 8, 3], 2)
    x = torch.rand(1, 200, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    exact = spreads(DualNetwork(net, x, 0.5, "l2", fast_first=False))
    g = torch.Generator().manual_seed(0)
    ratios = torch.stack([spreads(DualNetwork(net, x, 0.5, "l2", fast_first=False,
                                              projections=r, generator=g)) / exact
                          for _ in range(400)])
    assert ratios.square().mean().item() == pytest.approx(1.0, abs=0.03)
    assert ratios.std(0).mean().item() == pytest.approx(1 / math.sqrt(2 * r), rel=0.2)


@pytest.mark.parametrize("norm,eps", [("linf", 0.05), ("l2", 0.4)])
@pytest.mark.parametrize("fast_first", [True, False])
def test_exact_fallback_equals_the_backward_pass(norm, eps, fast_first):
    """With r above every source's size the forward pass pushes exact bases: its bounds equal
    the backward dual pass with c = ±e_m (check 1.5.2) to float64 rounding, and so do the
    margins."""
    net = small_conv_net(1).double()
    x = torch.rand(6, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    y = torch.arange(6) % 10
    exact = DualNetwork(net, x, eps, norm, fast_first=fast_first)
    proj = DualNetwork(net, x, eps, norm, fast_first=fast_first, projections=10_000)
    assert set(exact.lower) == set(proj.lower) == {1, 3, 6}
    for t in exact.lower:
        torch.testing.assert_close(proj.lower[t], exact.lower[t], atol=1e-12, rtol=0)
        torch.testing.assert_close(proj.upper[t], exact.upper[t], atol=1e-12, rtol=0)
    torch.testing.assert_close(margin_lower_bounds(net, x, y, eps, norm, projections=10_000),
                               margin_lower_bounds(net, x, y, eps, norm), atol=1e-12, rtol=0)
    # with few projections the bounds differ (the estimate is in use) but stay finite
    few = DualNetwork(net, x, eps, norm, fast_first=fast_first, projections=3,
                      generator=torch.Generator().manual_seed(0))
    assert not torch.allclose(few.lower[6], exact.lower[6])
    assert all(torch.isfinite(few.lower[t]).all() for t in few.lower)
    # eps = 0: every source is empty (nothing crosses), the margins are the true ones
    z = net(x)
    torch.testing.assert_close(margin_lower_bounds(net, x, y, 0.0, norm, projections=3),
                               z.gather(1, y.view(-1, 1)) - z, atol=1e-10, rtol=0)


def test_many_projections_converge_to_the_exact_bounds():
    """Input dim 1000 and ~800 crossing units, both above r = 600, so both sources are
    projected: the second layer's half-widths are within 6 % of the exact ones on average
    (per-unit std of one estimate pi / (2 sqrt 600) = 6.4 %; measured 3.8 %) with a small
    bias, and 15 times fewer projections are clearly worse (check 3.5.2)."""
    net = mlp([1000, 1000, 100, 10], 3)
    x = torch.rand(2, 1000, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    exact = DualNetwork(net, x, 0.02)
    t = sorted(exact.lower)[0]
    assert ((exact.lower[t] < 0) & (exact.upper[t] > 0)).any(0).sum().item() > 600
    proj = DualNetwork(net, x, 0.02, projections=600, generator=torch.Generator().manual_seed(0))
    rel = spreads(proj)[-200:] / spreads(exact)[-200:] - 1     # the 2 x 100 second-layer units
    assert rel.abs().mean().item() < 0.06
    assert abs(rel.mean().item()) < 0.04
    small = DualNetwork(net, x, 0.02, projections=40, generator=torch.Generator().manual_seed(0))
    rel40 = spreads(small)[-200:] / spreads(exact)[-200:] - 1
    assert rel40.abs().mean().item() > rel.abs().mean().item() * 2


@pytest.mark.slow
def test_projected_certificates_close_to_exact(digits_data, digits_model):
    """On the trained digits CNN, the certified fraction with r = 50 projections is within a
    few points of the exact one and the margins agree closely; ``projections`` is in the spec."""
    x, y = digits_data[2][:200], digits_data[3][:200]
    exact = tb.certifier("dual-network", threat=tb.Linf(0.02))(digits_model, x, y)
    cert = tb.certifier("dual-network", threat=tb.Linf(0.02), projections=50, seed=0)
    proj = cert(digits_model, x, y)
    assert isinstance(cert, DualNetworkCertifier) and cert.spec()["projections"] == 50
    assert 0.2 < exact.accuracy < 0.95           # a non-trivial mix of certified examples
    assert abs(proj.accuracy - exact.accuracy) <= 0.05
    m_e, m_p = exact.extra["min_margin"], proj.extra["min_margin"]
    assert torch.corrcoef(torch.stack([m_e, m_p]))[0, 1] > 0.98
    again = cert(digits_model, x, y)              # seeded: reproducible
    assert torch.equal(again.certified, proj.certified)


def test_projected_robust_loss_trains_and_validates(digits_data):
    x, y = digits_data[0][:40], digits_data[1][:40]
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 80), nn.ReLU(), nn.Linear(80, 60),
                          nn.ReLU(), nn.Linear(60, 10))
    d = tb.defense("convex", threat=tb.Linf(0.1), projections=10)
    assert d.spec()["projections"] == 10
    g = torch.Generator().manual_seed(0)
    loss, logs = d.loss(model, Batch(x=x, y=y, extra={"generator": g}))
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    exact_loss, _ = tb.defense("convex", threat=tb.Linf(0.1)).loss(model, Batch(x=x, y=y))
    assert loss.item() == pytest.approx(exact_loss.item(), rel=0.25)
    for bad in (0, -3, True):
        with pytest.raises(ValueError, match="projections"):
            tb.defense("convex", threat=tb.Linf(0.1), projections=bad)
        with pytest.raises(ValueError, match="projections"):
            tb.certifier("dual-network", threat=tb.Linf(0.1), projections=bad)
        with pytest.raises(ValueError, match="projections"):
            DualNetwork(model, x, 0.1, projections=bad)
