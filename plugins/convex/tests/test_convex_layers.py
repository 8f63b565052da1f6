"""Modular dual layers: adjointness of every backward map, the registry (third-party layers,
clear errors), eval-mode BatchNorm equal to its folded network, residual blocks exact against
the LP of the equivalent plain network and sound against PGD with restarts."""

from __future__ import annotations

import pytest
import torch
from toolbox_convex import (
    AffineDual,
    DualNetwork,
    Residual,
    dual_bounds,
    margin_lower_bounds,
    register_dual_layer,
    registered_dual_layers,
)
from toolbox_convex import layers as dual_layers_module
from toolbox_convex.layers import dual_layers, run_chain
from toolbox_convex.oracles import one_hidden_layer_lp
from torch import nn

import toolbox as tb

torch.set_num_threads(1)
D = torch.float64




def randomise_bn(bn: nn.modules.batchnorm._BatchNorm, g: torch.Generator) -> None:
    c = bn.num_features
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(c, generator=g, dtype=D) * 0.5)
        bn.running_var.copy_(torch.rand(c, generator=g, dtype=D) * 2 + 0.2)
        bn.weight.copy_(torch.randn(c, generator=g, dtype=D))
        bn.bias.copy_(torch.randn(c, generator=g, dtype=D) * 0.3)


# ------------------------------------------------------------------------------ adjointness
def _layer_cases() -> list[tuple[str, nn.Module, tuple[int, ...]]]:
    g = torch.Generator().manual_seed(0)
    bn1, bn1c, bn2 = nn.BatchNorm1d(7), nn.BatchNorm1d(3), nn.BatchNorm2d(4)
    no_affine = nn.BatchNorm2d(4, affine=False)
    for bn in (bn1, bn1c, bn2):
        randomise_bn(bn.double(), g)
    with torch.no_grad():
        no_affine.running_var.uniform_(0.5, 2.0, generator=g)
    return [
        ("linear", nn.Linear(6, 7), (6,)),
        ("linear-nobias", nn.Linear(6, 5, bias=False), (6,)),
        ("conv-stride2-pad1", nn.Conv2d(2, 4, 3, stride=2, padding=1), (2, 8, 8)),
        ("conv-odd-outpad", nn.Conv2d(2, 3, 3, stride=2, padding=0), (2, 8, 8)),
        ("conv-dilated-groups", nn.Conv2d(4, 6, 3, padding=2, dilation=2, groups=2,
                                          bias=False), (4, 7, 7)),
        ("flatten", nn.Flatten(), (2, 3, 4)),
        ("bn1d", bn1, (7,)),
        ("bn1d-seq", bn1c, (3, 5)),
        ("bn2d", bn2, (4, 5, 5)),
        ("bn2d-no-affine", no_affine.double(), (4, 3, 3)),
    ]


@pytest.mark.parametrize("case", _layer_cases(), ids=lambda c: c[0])
def test_dual_layer_is_the_affine_map_and_its_adjoint(case):
    """For every built-in affine dual layer, in float64: ``module(h) = A h + b`` with ``A`` the
    layer's ``apply`` and ``b = module(0)``; ``<A g, v> = <g, A^T v>`` with ``A^T`` its
    ``transpose``; ``bias_dot(v) = <v, b>``."""
    _, module, in_shape = case
    module = module.double().eval()
    (dual,) = dual_layers(module)
    assert isinstance(dual, AffineDual)
    gen = torch.Generator().manual_seed(1)
    n, m = 3, 4
    h = torch.randn(n, *in_shape, generator=gen, dtype=D)
    out = module(h)
    dual.bind(torch.Size(in_shape), out.shape[1:])
    b = module(torch.zeros(1, *in_shape, dtype=D))
    torch.testing.assert_close(dual.apply(h.unsqueeze(1)).squeeze(1) + b, out,
                               atol=1e-12, rtol=1e-12)
    g = torch.randn(n, m, *in_shape, generator=gen, dtype=D)
    v = torch.randn(n, m, *out.shape[1:], generator=gen, dtype=D)
    ag, atv = dual.apply(g), dual.transpose(v)
    assert ag.shape == v.shape and atv.shape == g.shape
    lhs = (ag * v).flatten(2).sum(-1)
    rhs = (g * atv).flatten(2).sum(-1)
    torch.testing.assert_close(lhs, rhs, atol=1e-10, rtol=1e-10)
    bias = dual.bias_dot(v)
    expect = (v * b.unsqueeze(1)).flatten(2).sum(-1)
    if bias is None:
        assert (b == 0).all()
    else:
        torch.testing.assert_close(bias, expect, atol=1e-10, rtol=1e-10)


def residual_mlp(seed: int, width: int = 12, n_in: int = 64) -> nn.Sequential:
    """Flatten, Linear, ReLU, a residual block, a nested residual block, logits."""
    torch.manual_seed(seed)
    w = width
    return nn.Sequential(
        nn.Flatten(), nn.Linear(n_in, w), nn.ReLU(),
        Residual(nn.Linear(w, w), nn.ReLU(), nn.Linear(w, w)), nn.ReLU(),
        Residual(nn.Linear(w, w), nn.ReLU(),
                 Residual(nn.Linear(w, w), nn.ReLU(), nn.Linear(w, w))),
        nn.Linear(w, 10)).eval()


def test_residual_backward_is_the_adjoint_of_the_network():
    """No ReLU: the bound is exactly ``c^T f(x) - eps ||J^T c||_1`` (ℓ∞, no box) with ``J`` the
    network's Jacobian, so the backward pass through forks and additions is ``J^T``."""
    torch.manual_seed(3)
    model = nn.Sequential(
        nn.Linear(5, 6), Residual(nn.Linear(6, 6), Residual(nn.Linear(6, 6)), nn.Linear(6, 6)),
        nn.BatchNorm1d(6), Residual(nn.Linear(6, 6)), nn.Linear(6, 4)).double()
    randomise_bn(model[2], torch.Generator().manual_seed(4))
    model.eval()
    x = torch.rand(3, 5, dtype=D, generator=torch.Generator().manual_seed(5))
    c = torch.tensor([[1.0, -1.0, 0.0, 0.5], [0.0, 2.0, -1.0, 0.0]], dtype=D)
    jac = torch.autograd.functional.jacobian(lambda v: model(v.unsqueeze(0))[0], x[0])  # (4, 5)
    eps = 0.2
    j = DualNetwork(model, x, eps, box=False).bound(c).detach()
    expect = (model(x) @ c.t()).detach() - eps * (c @ jac).abs().sum(-1)
    torch.testing.assert_close(j, expect, atol=1e-10, rtol=1e-10)


# ------------------------------------------------------------------------------ registry
def test_unsupported_layer_error_names_it():
    for bad in (nn.Tanh(), nn.MaxPool2d(2), nn.LeakyReLU()):
        model = nn.Sequential(nn.Conv2d(1, 2, 3), bad, nn.Flatten(), nn.Linear(2, 2))
        with pytest.raises(ValueError, match=f"model: no dual layer for {type(bad).__name__}"):
            DualNetwork(model, torch.rand(2, 1, 8, 8), 0.1)
    # nested inside a residual block too
    with pytest.raises(ValueError, match="no dual layer for Sigmoid"):
        margin_lower_bounds(nn.Sequential(Residual(nn.Linear(3, 3), nn.Sigmoid()),
                                          nn.Linear(3, 2)),
                            torch.rand(2, 3), torch.zeros(2, dtype=torch.long), 0.1)


def test_train_mode_batchnorm_is_refused():
    model = nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5), nn.ReLU(), nn.Linear(5, 2))
    model.train()
    with pytest.raises(ValueError, match="BatchNorm1d is in train mode"):
        dual_bounds(model, torch.rand(3, 4), 0.1)
    model[1].eval()
    lo, hi = dual_bounds(model, torch.rand(3, 4), 0.1)
    assert (lo <= hi).all()
    no_stats = nn.BatchNorm1d(5, track_running_stats=False).eval()
    with pytest.raises(ValueError, match="running statistics"):
        dual_bounds(nn.Sequential(nn.Linear(4, 5), no_stats, nn.Linear(5, 2)),
                    torch.rand(3, 4), 0.1)


def test_residual_body_must_keep_the_shape():
    model = nn.Sequential(nn.Linear(4, 5), Residual(nn.Linear(5, 1)), nn.Linear(5, 2))
    with pytest.raises(ValueError, match="model: the body of a Residual"):
        DualNetwork(model, torch.rand(2, 4), 0.1)
    with pytest.raises(ValueError, match="model: the layers do not compose"):
        DualNetwork(nn.Sequential(nn.Linear(4, 5), Residual(nn.Linear(5, 3)), nn.Linear(3, 2)),
                    torch.rand(2, 4), 0.1)
    with pytest.raises(ValueError, match="layers"):
        Residual()


class Scale(nn.Module):
    """A third-party layer: ``y = s * x + t`` with per-feature ``s, t``."""

    def __init__(self, s: torch.Tensor, t: torch.Tensor) -> None:
        super().__init__()
        self.s, self.t = nn.Parameter(s), nn.Parameter(t)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.s + self.t


class ScaleDual(AffineDual):
    def apply(self, g):
        return g * self.module.s

    def transpose(self, lam):
        return lam * self.module.s

    def bias_dot(self, lam):
        return lam @ self.module.t


def test_third_party_layer_registers_and_matches_its_folded_net():
    g = torch.Generator().manual_seed(7)
    lin1, lin2 = nn.Linear(5, 6).double(), nn.Linear(6, 3).double()
    s, t = torch.randn(6, generator=g, dtype=D), torch.randn(6, generator=g, dtype=D) * 0.3
    model = nn.Sequential(lin1, Scale(s, t), nn.ReLU(), lin2).eval()
    x = torch.rand(4, 5, generator=g, dtype=D)
    y = torch.tensor([0, 1, 2, 0])
    with pytest.raises(ValueError, match="no dual layer for Scale"):
        margin_lower_bounds(model, x, y, 0.1)
    register_dual_layer(Scale, ScaleDual)
    try:
        assert registered_dual_layers()[Scale] is ScaleDual
        folded = nn.Linear(5, 6).double()
        with torch.no_grad():
            folded.weight.copy_(lin1.weight * s[:, None])
            folded.bias.copy_(lin1.bias * s + t)
        plain = nn.Sequential(folded, nn.ReLU(), lin2).eval()
        for norm, eps in (("linf", 0.1), ("l2", 0.3)):
            torch.testing.assert_close(margin_lower_bounds(model, x, y, eps, norm),
                                       margin_lower_bounds(plain, x, y, eps, norm),
                                       atol=1e-10, rtol=1e-10)
    finally:
        dual_layers_module._REGISTRY.pop(Scale, None)
    with pytest.raises(ValueError, match="layer_type"):
        register_dual_layer(object, ScaleDual)
    with pytest.raises(ValueError, match="factory"):
        register_dual_layer(Scale, None)


# ------------------------------------------------------------------------------ BatchNorm
def fold_bn(model: nn.Sequential) -> nn.Sequential:
    """The same network with every eval-mode BN folded into the Linear/Conv2d before it."""
    out: list[nn.Module] = []
    for m in model:
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            prev = out[-1]
            s = m.weight / torch.sqrt(m.running_var + m.eps)
            t = m.bias - m.running_mean * s
            new = (nn.Linear(prev.in_features, prev.out_features) if isinstance(prev, nn.Linear)
                   else nn.Conv2d(prev.in_channels, prev.out_channels, prev.kernel_size,
                                  prev.stride, prev.padding, prev.dilation, prev.groups))
            new = new.double()
            with torch.no_grad():
                new.weight.copy_(prev.weight * s.view(-1, *([1] * (prev.weight.dim() - 1))))
                new.bias.copy_(prev.bias * s + t)
            out[-1] = new
        else:
            out.append(m)
    return nn.Sequential(*out).eval()


def bn_nets(seed: int) -> list[nn.Sequential]:
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    conv = nn.Sequential(nn.Conv2d(1, 3, 3, stride=2, padding=1), nn.BatchNorm2d(3), nn.ReLU(),
                         nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.Flatten(), nn.Linear(64, 12), nn.BatchNorm1d(12), nn.ReLU(),
                         nn.Linear(12, 10)).double()
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.BatchNorm1d(16), nn.ReLU(),
                        nn.Linear(16, 16), nn.BatchNorm1d(16), nn.ReLU(),
                        nn.Linear(16, 10)).double()
    for net in (conv, mlp):
        for m in net:
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                randomise_bn(m, g)
    return [conv.eval(), mlp.eval()]


@pytest.mark.parametrize("norm,eps", [("linf", 0.05), ("l2", 0.4)])
def test_batchnorm_equals_the_folded_network(norm, eps, digits_data):
    x, y = digits_data[2][:12].double(), digits_data[3][:12]
    for model in bn_nets(11):
        plain = fold_bn(model)
        assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in plain)
        torch.testing.assert_close(model(x), plain(x), atol=1e-10, rtol=1e-10)
        a = DualNetwork(model, x, eps, norm)
        b = DualNetwork(plain, x, eps, norm)
        relu_a = [t for t, m in enumerate(a.layers) if isinstance(m, nn.ReLU)]
        relu_b = [t for t, m in enumerate(b.layers) if isinstance(m, nn.ReLU)]
        assert len(relu_a) == len(relu_b) == len(a.lower) == len(b.lower)
        crossing = 0
        for ta, tb_ in zip(relu_a, relu_b, strict=True):
            torch.testing.assert_close(a.lower[ta], b.lower[tb_], atol=1e-9, rtol=1e-9)
            torch.testing.assert_close(a.upper[ta], b.upper[tb_], atol=1e-9, rtol=1e-9)
            crossing += int(((a.lower[ta] < 0) & (a.upper[ta] > 0)).sum())
        assert crossing > 0
        torch.testing.assert_close(margin_lower_bounds(model, x, y, eps, norm),
                                   margin_lower_bounds(plain, x, y, eps, norm),
                                   atol=1e-9, rtol=1e-9)
        # the projected (forward-mode) bounds agree too, draw for draw (no closed-form first
        # layer, which the folded net would take and the BN net not)
        pa, pb = (DualNetwork(net, x, eps, norm, fast_first=False, projections=5,
                              generator=torch.Generator().manual_seed(0))
                  for net in (model, plain))
        for ta, tb_ in zip(relu_a, relu_b, strict=True):
            torch.testing.assert_close(pa.lower[ta], pb.lower[tb_], atol=1e-9, rtol=1e-9)
            torch.testing.assert_close(pa.upper[ta], pb.upper[tb_], atol=1e-9, rtol=1e-9)
        assert not torch.allclose(pa.upper[relu_a[-1]], a.upper[relu_a[-1]])


def test_batchnorm_bound_is_differentiable_in_its_affine_parameters():
    model = bn_nets(12)[1]
    x = torch.rand(4, 1, 8, 8, dtype=D, generator=torch.Generator().manual_seed(0))
    margin_lower_bounds(model, x, torch.tensor([0, 1, 2, 3]), 0.05).sum().backward()
    assert model[2].weight.grad is not None and model[2].weight.grad.abs().sum() > 0
    assert model[2].bias.grad is not None and model[2].bias.grad.abs().sum() > 0


# ------------------------------------------------------------------------------ residual
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_residual_equals_its_plain_unrolling_and_the_lp(seed):
    """``Residual(Linear W1, ReLU, Linear W2)`` then ``Linear W3`` on inputs in [0, 1] is the
    one-hidden-layer net ``[x; relu(W1 x + b1)]`` (the identity units are stably active) with
    output weights ``W3 [I, W2]``: the dual bounds agree, and equal the dual relaxation's LP."""
    g = torch.Generator().manual_seed(seed)
    n_in, n_h, n_out = 5, 8, 3
    w1, b1 = torch.randn(n_h, n_in, generator=g, dtype=D), torch.randn(n_h, generator=g, dtype=D)
    w2, b2 = torch.randn(n_in, n_h, generator=g, dtype=D) * 0.7, torch.randn(n_in, generator=g,
                                                                            dtype=D) * 0.3
    w3, b3 = torch.randn(n_out, n_in, generator=g, dtype=D), torch.randn(n_out, generator=g,
                                                                        dtype=D) * 0.3
    lin = [nn.Linear(n_in, n_h), nn.Linear(n_h, n_in), nn.Linear(n_in, n_out),
           nn.Linear(n_in, n_in + n_h), nn.Linear(n_in + n_h, n_out)]
    lin = [m.double() for m in lin]
    with torch.no_grad():
        for m, (w, b) in zip(lin[:3], ((w1, b1), (w2, b2), (w3, b3)), strict=True):
            m.weight.copy_(w)
            m.bias.copy_(b)
        lin[3].weight.copy_(torch.cat([torch.eye(n_in, dtype=D), w1]))
        lin[3].bias.copy_(torch.cat([torch.zeros(n_in, dtype=D), b1]))
        lin[4].weight.copy_(w3 @ torch.cat([torch.eye(n_in, dtype=D), w2], 1))
        lin[4].bias.copy_(w3 @ b2 + b3)
    res = nn.Sequential(Residual(lin[0], nn.ReLU(), lin[1]), lin[2]).eval()
    plain = nn.Sequential(lin[3], nn.ReLU(), lin[4]).eval()
    x = torch.rand(5, n_in, generator=g, dtype=D)
    torch.testing.assert_close(res(x), plain(x), atol=1e-12, rtol=1e-12)
    eps = 0.15
    cs = torch.tensor([[1.0, -1.0, 0.0], [0.0, 1.0, -1.0], [-1.0, 0.0, 1.0]], dtype=D)
    j_res = DualNetwork(res, x, eps).bound(cs).detach()
    dn_plain = DualNetwork(plain, x, eps)
    j_plain = dn_plain.bound(cs).detach()
    torch.testing.assert_close(j_res, j_plain, atol=1e-10, rtol=1e-10)
    crossing = int(((dn_plain.lower[1] < 0) & (dn_plain.upper[1] > 0)).sum())
    assert crossing > 0
    for i in range(x.shape[0]):
        for k, c in enumerate(cs):
            lp = one_hidden_layer_lp(plain, x[i].numpy(), eps, c.numpy(), triangle=False)
            assert j_res[i, k].item() == pytest.approx(lp, abs=1e-6)


@pytest.mark.parametrize("norm,eps", [("linf", 0.05), ("l2", 0.3)])
def test_residual_bounds_are_sound_against_pgd_with_restarts(norm, eps, digits_data):
    """On 200 digits, a net with a residual block and a nested one: every intermediate bound
    holds at attacked and random points, J <= the margin of every attacked point (untargeted
    CW PGD with 3 restarts, and targeted runs), and J is exact at eps = 0."""
    x, y = digits_data[2][:200], digits_data[3][:200]
    model = residual_mlp(0)
    torch.testing.assert_close(margin_lower_bounds(model, x, y, 0.0, norm).detach(),
                               (model(x).gather(1, y.view(-1, 1)) - model(x)).detach(),
                               atol=1e-4, rtol=1e-4)
    dn = DualNetwork(model, x, eps, norm)
    eye = torch.eye(10)
    bound = dn.bound(eye[y].unsqueeze(1) - eye.unsqueeze(0)).detach()
    threat = tb.Linf(eps) if norm == "linf" else tb.L2(eps)
    points = [tb.attack("pgd", threat=threat, steps=30, loss="cw", restarts=3, seed=0)(model, x, y)]
    for j in (0, 3, 8):
        keep = y != j
        xt = x.clone()
        xt[keep] = tb.attack("pgd", threat=threat, steps=20, loss="cw", targeted=True, seed=j)(
            model, x[keep], y[keep], target=torch.full_like(y[keep], j))
        points.append(xt)
    g = torch.Generator().manual_seed(0)
    points += [threat.random_init(x, generator=g) for _ in range(5)]
    best = None
    with torch.no_grad():
        for xp in points:
            assert threat.contains(xp, x).all()
            hs = run_chain(dn.duals, xp)
            for t in dn.lower:
                assert (hs[t] >= dn.lower[t] - 1e-5).all() and (hs[t] <= dn.upper[t] + 1e-5).all()
            z = hs[-1]
            m = z.gather(1, y.view(-1, 1)) - z
            best = m if best is None else torch.minimum(best, m)
    assert (bound <= best + 1e-5).all()
    # and not vacuous: its looseness is below the size of the clean margins themselves
    with torch.no_grad():
        clean = model(x).gather(1, y.view(-1, 1)) - model(x)
    assert (clean - bound).mean() < clean.abs().mean()


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_residual_projected_bounds_reduce_to_exact(norm, digits_data):
    """Forward mode through forks and additions: with more projections than any source has
    units the projected bounds are the exact ones; with few they are estimates, not equal."""
    x = digits_data[2][:6].double()
    model = residual_mlp(1).double()
    eps = 0.05 if norm == "linf" else 0.3
    exact = DualNetwork(model, x, eps, norm, fast_first=False)
    proj = DualNetwork(model, x, eps, norm, fast_first=False, projections=10_000)
    assert exact.lower.keys() == proj.lower.keys() and len(exact.lower) == 5
    for t in exact.lower:
        torch.testing.assert_close(proj.lower[t], exact.lower[t], atol=1e-9, rtol=1e-9)
        torch.testing.assert_close(proj.upper[t], exact.upper[t], atol=1e-9, rtol=1e-9)
    few = DualNetwork(model, x, eps, norm, fast_first=False, projections=3,
                      generator=torch.Generator().manual_seed(0))
    last = max(exact.lower)
    assert not torch.allclose(few.upper[last], exact.upper[last])


def test_residual_model_through_the_certifier(digits_data):
    x, y = digits_data[2][:16], digits_data[3][:16]
    model = residual_mlp(2)
    res = tb.certifier("dual-network", threat=tb.Linf(0.0))(model, x, y)
    pred_ok = model(x).argmax(1) == y
    assert (res.certified == pred_ok).all()
    res = tb.certifier("dual-network", threat=tb.Linf(0.02))(model, x, y)
    assert (res.certified <= pred_ok).all()
