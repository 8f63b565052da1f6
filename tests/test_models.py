"""The model zoo and the Normalize wrapper (toolbox/models.py)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import toolbox as tb
import toolbox.models as M
from toolbox.registry import UnknownNameError

torch.set_num_threads(1)


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def conv(cin, cout, k):
    return cout * cin * k * k + cout


def fc(i, o):
    return i * o + o


# name, kwargs, input shape, expected parameter count (computed from the layer list)
ZOO = [
    ("mnist-small", {}, (1, 28, 28), conv(1, 16, 4) + conv(16, 32, 4) + fc(1568, 100) + fc(100, 10)),
    ("mnist-large", {}, (1, 28, 28),
     conv(1, 32, 3) + conv(32, 32, 3) + conv(32, 64, 3) + conv(64, 64, 3) + fc(1024, 200) + fc(200, 200) + fc(200, 10)),
    ("lenet5-madry", {}, (1, 28, 28), conv(1, 32, 5) + conv(32, 64, 5) + fc(3136, 1024) + fc(1024, 10)),
    ("madry-mnist", {"num_classes": 7}, (1, 28, 28), conv(1, 32, 5) + conv(32, 64, 5) + fc(3136, 1024) + fc(1024, 7)),
    ("digits-cnn", {}, (1, 8, 8), conv(1, 16, 3) + conv(16, 32, 3) + fc(512, 64) + fc(64, 10)),
    ("preact-resnet18", {"num_classes": 10}, (3, 32, 32), None),
    ("preact-resnet18", {"num_classes": 100, "in_channels": 1}, (1, 28, 28), None),
    ("wide-resnet", {"depth": 10, "width": 2, "num_classes": 10}, (3, 32, 32), None),
    ("wide-resnet", {"depth": 16, "width": 1, "num_classes": 5, "dropout": 0.3}, (3, 32, 32), None),
]


@pytest.mark.parametrize("name,kw,shape,count", ZOO, ids=[f"{z[0]}-{i}" for i, z in enumerate(ZOO)])
def test_zoo_output_shape_and_params(name, kw, shape, count):
    m = tb.models.create(name, seed=0, **kw)
    out = m(torch.rand(3, *shape))
    assert out.shape == (3, kw.get("num_classes", 10)) and torch.isfinite(out).all()
    if count is not None:
        assert n_params(m) == count
    # gradients flow to the input (attacks need them)
    x = torch.rand(2, *shape, requires_grad=True)
    m.eval()
    m(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_resnet_parameter_counts():
    # published sizes: WRN-28-10 36.5M, WRN-34-10 46.2M (TRADES), PreActResNet18 11.2M
    wrn = M.WideResNet(28, 10)
    assert abs(n_params(wrn) - 36.48e6) < 0.01e6
    rn = M.PreActResNet18()
    assert abs(n_params(rn) - 11.17e6) < 0.01e6
    # WRN widths scale the blocks: channels 16, 16w, 32w, 64w
    w4 = M.WideResNet(16, 4)
    assert w4.fc.in_features == 256 and len(w4.block1) == 2
    del wrn


def test_mnist_small_layer_by_layer():
    m = tb.models.create("mnist-small")
    kinds = [type(layer) for layer in m]
    assert kinds == [nn.Conv2d, nn.ReLU, nn.Conv2d, nn.ReLU, nn.Flatten, nn.Linear, nn.ReLU, nn.Linear]
    c1, c2, f1, f2 = m[0], m[2], m[5], m[7]
    assert (c1.in_channels, c1.out_channels, c1.kernel_size, c1.stride, c1.padding) == (1, 16, (4, 4), (2, 2), (1, 1))
    assert (c2.in_channels, c2.out_channels, c2.kernel_size, c2.stride, c2.padding) == (16, 32, (4, 4), (2, 2), (1, 1))
    assert (f1.in_features, f1.out_features, f2.in_features, f2.out_features) == (32 * 7 * 7, 100, 100, 10)
    x = torch.rand(2, 1, 28, 28)
    h = m[1](m[0](x))
    assert h.shape == (2, 16, 14, 14)
    h = m[3](m[2](h))
    assert h.shape == (2, 32, 7, 7)
    # same state-dict layout as fast_adversarial's nn.Sequential mnist_net
    assert list(m.state_dict()) == ["0.weight", "0.bias", "2.weight", "2.bias", "5.weight", "5.bias",
                                    "7.weight", "7.bias"]


def test_normalize_correctness():
    mean, std = (0.1, 0.2, 0.3), (0.5, 0.25, 2.0)
    norm = M.Normalize(mean, std)
    x = torch.rand(4, 3, 5, 5)
    want = torch.stack([(x[:, c] - mean[c]) / std[c] for c in range(3)], 1)
    assert torch.allclose(norm(x), want)
    assert torch.allclose(M.Normalize(0.5, 0.25)(x), (x - 0.5) / 0.25)
    inner = tb.models.create("preact-resnet18", seed=1).eval()
    wrapped = M.with_normalization(inner, mean, std).eval()
    assert torch.allclose(wrapped(x.new_zeros(2, 3, 32, 32) + 0.4),
                          inner(((torch.zeros(2, 3, 32, 32) + 0.4) - torch.tensor(mean).view(1, 3, 1, 1))
                                / torch.tensor(std).view(1, 3, 1, 1)), atol=1e-5)
    assert set(wrapped.state_dict()) >= {"normalize.mean", "normalize.std"}
    m = tb.models.create("mnist-small", normalize="mnist", seed=0)
    assert isinstance(m[0], M.Normalize) and m[0].mean.flatten().tolist() == pytest.approx([0.1307])
    with pytest.raises(ValueError, match="std"):
        M.Normalize(0.5, 0.0)
    with pytest.raises(ValueError, match="normalize"):
        tb.models.create("mnist-small", normalize="imagenet-21k")


def test_create_seed_registry_and_bad_input():
    a = tb.models.create("mnist-small", seed=3)
    b = tb.models.create("mnist-small", seed=3)
    c = tb.models.create("mnist-small", seed=4)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    assert not torch.equal(a[0].weight, c[0].weight)
    state = torch.get_rng_state()
    tb.models.create("digits-cnn", seed=9)
    assert torch.equal(state, torch.get_rng_state())  # the global RNG is left alone
    names = set(tb.names("model"))
    assert {"mnist-small", "mnist-large", "lenet5-madry", "madry-mnist", "preact-resnet18",
            "wide-resnet", "digits-cnn"} <= names
    with pytest.raises(UnknownNameError, match="mnist-small"):
        tb.models.create("mnist-smal")
    with pytest.raises(ValueError, match="depth"):
        tb.models.create("wide-resnet", depth=27)
    with pytest.raises(ValueError, match="num_classes"):
        tb.models.create("mnist-small", num_classes=0)
    with pytest.raises(ValueError, match="dropout"):
        tb.models.create("mnist-large", dropout=1.5)
