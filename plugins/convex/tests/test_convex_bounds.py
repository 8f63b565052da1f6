"""The dual-network bound: soundness against attacks and sampling, exactness against linear
programs on tiny nets, tightness at eps = 0, conv layers, registration and evaluate rows."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from toolbox_convex import (
    DualNetwork,
    DualNetworkCertifier,
    certified_radius,
    dual_bounds,
    margin_lower_bounds,
)
from toolbox_convex.oracles import one_hidden_layer_lp
from toolbox_convex.oracles import random_mlp as rand_net
from toolbox_convex.oracles import small_conv_net as conv_net
from torch import nn

import toolbox as tb

torch.set_num_threads(1)


def true_margins(model, x, y):
    z = model(x)
    return z.gather(1, y.view(-1, 1)) - z


# ------------------------------------------------------------------------------ tightness
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_eps_zero_bounds_are_the_logits(norm, digits_data):
    x = digits_data[2][:20]
    y = digits_data[3][:20]
    for model in (conv_net(0), nn.Sequential(nn.Flatten(), rand_net([64, 30, 20, 10], 1))):
        lo, hi = dual_bounds(model, x, 0.0, norm)
        z = model(x)
        torch.testing.assert_close(lo, z, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(hi, z, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(margin_lower_bounds(model, x, y, 0.0, norm),
                                   true_margins(model, x, y), atol=1e-4, rtol=1e-4)


def test_bounds_widen_with_eps_and_intermediate_bounds_are_sound(digits_data):
    model = conv_net(3)
    x = digits_data[2][:16]
    prev = None
    for eps in (0.0, 0.01, 0.05, 0.2):
        lo, hi = dual_bounds(model, x, eps)
        assert (hi - lo >= -1e-5).all()
        if prev is not None:   # nested input sets (eps grows): the first layer's bounds nest
            assert (hi - lo).sum() > (prev[1] - prev[0]).sum()
        prev = (lo, hi)
    # every intermediate pre-activation of random points in the ball lies in [l, u]
    dn = DualNetwork(model, x, 0.05)
    g = torch.Generator().manual_seed(0)
    xs = (x + (torch.rand(x.shape, generator=g) * 2 - 1) * 0.05).clamp(0, 1)
    h = xs
    for t, layer in enumerate(dn.layers):
        if t in dn.lower:
            assert (h >= dn.lower[t] - 1e-5).all() and (h <= dn.upper[t] + 1e-5).all()
        h = layer(h)


# ------------------------------------------------------------------------------ soundness
@pytest.mark.parametrize("norm,eps", [("linf", 0.05), ("l2", 0.3)])
def test_bound_below_pgd_and_sampled_margins(norm, eps, digits_data):
    """J(e_y - e_j) <= z_y(x') - z_j(x') for PGD points (margin loss, each target j) and for
    random points of the ball; a bound above an attainable margin would be unsound."""
    x, y = digits_data[2][:40], digits_data[3][:40]
    model = conv_net(1)
    bound = margin_lower_bounds(model, x, y, eps, norm).detach()
    threat = tb.Linf(eps) if norm == "linf" else tb.L2(eps)
    best = true_margins(model, x, y).detach()
    for j in range(10):
        tgt = torch.full_like(y, j)
        # targeted PGD toward class j minimises z_y - z_j roughly; keep the per-j minimum
        atk = tb.attack("pgd", threat=threat, steps=20, loss="cw", targeted=True, seed=j)
        keep = y != j
        x_adv = atk(model, x[keep], y[keep], target=tgt[keep])
        assert threat.contains(x_adv, x[keep]).all()
        m = true_margins(model, x_adv, y[keep]).detach()
        best[keep, j] = torch.minimum(best[keep, j], m[:, j])
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        xs = threat.random_init(x, generator=g)
        best = torch.minimum(best, true_margins(model, xs, y).detach())
    assert (bound <= best + 1e-5).all()
    # and the bound is not vacuous: it is a real fraction of the gap at this radius
    assert (bound > -1e3).all()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_one_hidden_layer_equals_its_lp_and_is_below_triangle_lp(seed):
    model = rand_net([5, 8, 3], seed, scale=0.8)
    g = torch.Generator().manual_seed(100 + seed)
    x = torch.rand(6, 5, generator=g)
    eps = 0.15
    dn = DualNetwork(model, x, eps)
    crossing = 0
    for i in range(x.shape[0]):
        l0, u0 = dn.lower[1][i], dn.upper[1][i]
        crossing += int(((l0 < 0) & (u0 > 0)).sum())
        for c in (np.array([1.0, -1.0, 0.0]), np.array([0.0, 1.0, -1.0]), np.array([-1.0, 0.0, 1.0])):
            j = dn.bound(torch.tensor(c, dtype=torch.float32)[None])[i, 0].item()
            lp_dual = one_hidden_layer_lp(model, x[i].double().numpy(), eps, c, triangle=False)
            lp_tri = one_hidden_layer_lp(model, x[i].double().numpy(), eps, c, triangle=True)
            assert j == pytest.approx(lp_dual, abs=1e-4)
            assert j <= lp_tri + 1e-4
            # the triangle LP is itself a lower bound on the true minimum (sampled)
            xs = (x[i] + (torch.rand(4000, 5, generator=g) * 2 - 1) * eps).clamp(0, 1)
            true_min = (model(xs).detach().double().numpy() @ c).min()
            assert lp_tri <= true_min + 1e-4
    assert crossing > 0     # the test exercises the relaxation, not only stable units


def test_conv_matches_its_dense_unrolling(digits_data):
    """The transposed-convolution pass equals the same network with each conv as a matrix."""
    model = conv_net(2)
    x = digits_data[2][:8]

    def unroll(conv: nn.Conv2d, in_shape):
        k = int(np.prod(in_shape))
        eye = torch.eye(k).view(k, *in_shape)
        with torch.no_grad():
            cols = nn.functional.conv2d(eye, conv.weight, None, conv.stride, conv.padding)
        out_shape = cols.shape[1:]
        lin = nn.Linear(k, cols[0].numel())
        with torch.no_grad():
            lin.weight.copy_(cols.flatten(1).t())
            lin.bias.copy_(conv.bias.repeat_interleave(out_shape[1] * out_shape[2]))
        return lin, out_shape

    l1, s1 = unroll(model[0], (1, 8, 8))
    l2, _ = unroll(model[2], tuple(s1))
    dense = nn.Sequential(nn.Flatten(), l1, nn.ReLU(), l2, nn.ReLU(), model[5], nn.ReLU(), model[7])
    torch.testing.assert_close(dense(x), model(x), atol=1e-5, rtol=1e-5)
    for norm, eps in (("linf", 0.05), ("l2", 0.4)):
        a = dual_bounds(model, x, eps, norm)
        b = dual_bounds(dense, x, eps, norm)
        torch.testing.assert_close(a[0], b[0], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(a[1], b[1], atol=1e-4, rtol=1e-4)


# ------------------------------------------------------------------------------ certifier
def test_certifier_registered_and_below_pgd_in_evaluate(digits_data, digits_model):
    x, y = digits_data[2][:32], digits_data[3][:32]
    eps = 0.02
    cert = tb.certifier("dual-network", threat=tb.Linf(eps), batch_size=16)
    assert isinstance(cert, DualNetworkCertifier)
    res = cert(digits_model, x, y)
    assert res.certified.shape == (32,) and res.margins.shape == (32, 10)
    assert (res.margins.gather(1, y.view(-1, 1)) == 0).all()
    pgd = tb.attack("pgd", threat=tb.Linf(eps), steps=20, seed=0)
    table = tb.evaluate(digits_model, (x, y), {"pgd": pgd}, certifiers={"dual": cert}, progress=False)
    cert_acc = float(table.loc["dual", "accuracy"])
    pgd_acc = float(table.loc["pgd", "accuracy"])
    assert table.loc["dual", "kind"] == "certified"
    assert cert_acc <= pgd_acc
    assert cert_acc <= res.accuracy + 1e-9   # evaluate also requires a correct prediction
    # at a tiny radius the certificate is informative on a trained net
    tiny = tb.certifier("dual-network", threat=tb.Linf(1e-3))(digits_model, x[:16], y[:16])
    clean = (digits_model(x[:16]).argmax(1) == y[:16]).float().mean().item()
    assert tiny.accuracy >= clean - 0.05


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="model"):
        DualNetwork(nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2)),
                    torch.rand(2, 4), 0.1)
    with pytest.raises(ValueError, match="norm"):
        DualNetwork(rand_net([4, 3, 2], 0), torch.rand(2, 4), 0.1, norm="l1")
    with pytest.raises(ValueError, match="eps"):
        DualNetwork(rand_net([4, 3, 2], 0), torch.rand(2, 4), -0.1)
    with pytest.raises(ValueError, match="threat"):
        tb.certifier("dual-network", threat=tb.L1(1.0))
    with pytest.raises(ValueError, match="c must"):
        DualNetwork(rand_net([4, 3, 2], 0), torch.rand(2, 4), 0.1).bound(torch.ones(1, 5))


def test_per_example_eps_and_box(digits_data):
    """A ``(N,)`` eps gives each row its own scalar-eps bound; the [0, 1] box only tightens."""
    model = conv_net(4)
    x, y = digits_data[2][:6], digits_data[3][:6]
    eps = torch.tensor([0.0, 0.01, 0.02, 0.05, 0.1, 0.2])
    joint = margin_lower_bounds(model, x, y, eps)
    for i in range(6):
        alone = margin_lower_bounds(model, x[i:i + 1], y[i:i + 1], float(eps[i]))
        torch.testing.assert_close(joint[i:i + 1], alone, atol=1e-5, rtol=1e-5)
    loose = margin_lower_bounds(model, x, y, eps, box=False)
    assert (joint >= loose - 1e-5).all() and (joint > loose + 1e-4).any()
    cert = tb.certifier("dual-network", threat=tb.Linf(eps))(model, x, y)
    torch.testing.assert_close(cert.margins, joint.detach(), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("norm,eps", [("linf", 0.05), ("l2", 0.5)])
def test_closed_form_first_layer_equals_the_dual_pass(norm, eps, digits_data):
    x = digits_data[2][:5]
    for model in (conv_net(5), nn.Sequential(nn.Flatten(), rand_net([64, 20, 10], 6))):
        fast = DualNetwork(model, x, eps, norm)
        slow = DualNetwork(model, x, eps, norm, fast_first=False)
        assert fast.lower.keys() == slow.lower.keys()
        for t in fast.lower:
            torch.testing.assert_close(fast.lower[t], slow.lower[t], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(fast.upper[t], slow.upper[t], atol=1e-5, rtol=1e-5)


def test_no_relu_net_is_exact_and_attained():
    """Without ReLUs the bound is cᵀ(Wx + b) - eps ||Wᵀc||_1 (no box), attained at a vertex."""
    model = rand_net([6, 4], 7)
    x = torch.rand(3, 6, generator=torch.Generator().manual_seed(1))
    c = torch.tensor([[1.0, -1.0, 0.0, 0.5]])
    eps = 0.2
    j = DualNetwork(model, x, eps, box=False).bound(c)[:, 0]
    wc = c[0] @ model[0].weight
    expect = (model(x) @ c[0]) - eps * wc.abs().sum()
    torch.testing.assert_close(j, expect.detach(), atol=1e-5, rtol=1e-5)
    vertex = x - eps * wc.sign()
    torch.testing.assert_close(j, (model(vertex) @ c[0]).detach(), atol=1e-5, rtol=1e-5)


def test_much_tighter_than_interval_arithmetic():
    model = rand_net([2, 100, 100, 100, 2], 8, scale=0.3)
    x = torch.rand(4, 2, generator=torch.Generator().manual_seed(2))
    eps = 0.05
    lo, hi = dual_bounds(model, x, eps, box=False)
    ilo, ihi = x - eps, x + eps
    for layer in model:
        if isinstance(layer, nn.Linear):
            mid, rad = (ilo + ihi) / 2, (ihi - ilo) / 2
            mid, rad = layer(mid), rad @ layer.weight.abs().t()
            ilo, ihi = mid - rad, mid + rad
        else:
            ilo, ihi = ilo.clamp_min(0), ihi.clamp_min(0)
    assert (lo >= ilo - 1e-5).all() and (hi <= ihi + 1e-5).all()
    assert ((hi - lo).mean() * 5 < (ihi - ilo).mean()).item()


def test_certified_radius_bisection(digits_data):
    model = conv_net(9)
    x, y = digits_data[2][:6], digits_data[3][:6]
    y = model(x).argmax(1)        # correctly classified by construction
    r = certified_radius(model, x, y, eps_max=0.5, tol=1e-3)
    assert (r > 0).all() and (r < 0.5).all()
    ok = margin_lower_bounds(model, x, y, r).scatter(1, y.view(-1, 1), 1e9).min(1).values > 0
    assert ok.all()
    beyond = margin_lower_bounds(model, x, y, r + 1e-3).scatter(1, y.view(-1, 1), 1e9).min(1).values
    assert (beyond <= 0).all()
    # no attack finds an adversarial example inside the certified radius
    x_adv = tb.attack("pgd", threat=tb.Linf(r * 0.999), steps=30, seed=0)(model, x, y)
    assert (model(x_adv).argmax(1) == y).all()
