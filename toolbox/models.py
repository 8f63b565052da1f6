"""The model zoo.  Every model maps images in [0, 1] ``(N, C, H, W)`` to logits
``(N, num_classes)``; normalisation, when wanted, is a :class:`Normalize` layer inside the model.

=====================  ===========================================================================
``mnist-small``        Wong et al. 2020 (fast AT) MNIST net, (1, 28, 28): Conv(1,16,4,s2,p1)-ReLU-
                       Conv(16,32,4,s2,p1)-ReLU-Flatten-FC(1568,100)-ReLU-FC(100,10); 166,406
                       parameters; same ``nn.Sequential`` layout (state-dict keys) as
                       locuslab/fast_adversarial's ``mnist_net``.
``mnist-large``        Carlini & Wagner / MMA MNIST net, (1, 28, 28): Conv3x3 32-32, MaxPool 2,
                       Conv3x3 64-64, MaxPool 2 (no padding), FC(1024,200)-ReLU-[Dropout]-
                       FC(200,200)-ReLU-FC(200,10); ``dropout`` 0 by default (TRADES' SmallCNN
                       uses 0.5).
``lenet5-madry``       Madry et al. MNIST net (MMA's "LeNet5"), alias ``madry-mnist``:
                       Conv(1,32,5,p2)-ReLU-MaxPool2-Conv(32,64,5,p2)-ReLU-MaxPool2-FC(3136,1024)-
                       ReLU-FC(1024,10).
``preact-resnet18``    PreAct ResNet-18 (He et al. 2016), CIFAR style (3x3 stem, no stem pooling,
                       blocks 64-128-256-512 x 2, final BN-ReLU, global average pool).
``wide-resnet``        WRN-``depth``-``width`` (Zagoruyko & Komodakis 2016), pre-activation basic
                       blocks, ``(depth - 4) / 6`` blocks per group, channels 16, 16w, 32w, 64w.
``digits-cnn``         a tiny CNN for 8x8 digits: Conv(1,16,3,p1)-ReLU-Conv(16,32,3,s2,p1)-ReLU-
                       Flatten-FC(512,64)-ReLU-FC(64,10).
=====================  ===========================================================================

``create(name, normalize=(mean, std) or "cifar10", seed=0, **kw)`` builds one.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ._checks import check_positive
from .hookspecs import hookimpl

__all__ = [
    "Normalize",
    "with_normalization",
    "create",
    "mnist_small",
    "mnist_large",
    "lenet5_madry",
    "PreActResNet18",
    "WideResNet",
    "digits_cnn",
]


# ------------------------------------------------------------------------------------------------
class Normalize(nn.Module):
    """``(x - mean) / std`` per channel; ``mean``, ``std`` floats or per-channel sequences.
    Input ``(N, C, H, W)`` (or ``(N, C, ...)``); the statistics are buffers (saved, moved with
    the model)."""

    def __init__(self, mean: float | Sequence[float], std: float | Sequence[float]) -> None:
        super().__init__()
        m = torch.as_tensor(mean, dtype=torch.float32).reshape(-1)
        s = torch.as_tensor(std, dtype=torch.float32).reshape(-1)
        if m.numel() == 0 or not torch.isfinite(m).all():
            raise ValueError(f"mean must be finite numbers, got {mean!r}")
        if s.numel() == 0 or not torch.isfinite(s).all() or (s <= 0).any():
            raise ValueError(f"std must be finite and > 0, got {std!r}")
        if m.numel() != s.numel() and 1 not in (m.numel(), s.numel()):
            raise ValueError(f"mean and std must have the same number of channels, got {mean!r} and {std!r}")
        self.register_buffer("mean", m.view(1, -1, 1, 1))
        self.register_buffer("std", s.view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return (x - self.mean.view(shape).to(x.dtype)) / self.std.view(shape).to(x.dtype)

    def extra_repr(self) -> str:
        return f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}"


def with_normalization(model: nn.Module, mean: float | Sequence[float], std: float | Sequence[float]) -> nn.Sequential:
    """``nn.Sequential(normalize=Normalize(mean, std), model=model)``: takes [0, 1] input."""
    return nn.Sequential(OrderedDict([("normalize", Normalize(mean, std)), ("model", model)]))


# ------------------------------------------------------------------------------------------------
# MNIST nets
# ------------------------------------------------------------------------------------------------
def mnist_small(num_classes: int = 10, in_channels: int = 1) -> nn.Sequential:
    """The fast-AT MNIST net (input ``(N, in_channels, 28, 28)``)."""
    _check_common(num_classes, in_channels)
    return nn.Sequential(
        nn.Conv2d(in_channels, 16, 4, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 4, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(32 * 7 * 7, 100),
        nn.ReLU(),
        nn.Linear(100, num_classes),
    )


def mnist_large(num_classes: int = 10, in_channels: int = 1, dropout: float = 0.0) -> nn.Sequential:
    """The C&W / MMA MNIST net (input ``(N, in_channels, 28, 28)``); ``dropout`` after fc1."""
    _check_common(num_classes, in_channels)
    if not 0 <= dropout < 1:
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
    return nn.Sequential(
        nn.Conv2d(in_channels, 32, 3),
        nn.ReLU(),
        nn.Conv2d(32, 32, 3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3),
        nn.ReLU(),
        nn.Conv2d(64, 64, 3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64 * 4 * 4, 200),
        nn.ReLU(),
        nn.Dropout(dropout),
        nn.Linear(200, 200),
        nn.ReLU(),
        nn.Linear(200, num_classes),
    )


def lenet5_madry(num_classes: int = 10, in_channels: int = 1) -> nn.Sequential:
    """Madry et al.'s MNIST net (input ``(N, in_channels, 28, 28)``)."""
    _check_common(num_classes, in_channels)
    return nn.Sequential(
        nn.Conv2d(in_channels, 32, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(7 * 7 * 64, 1024),
        nn.ReLU(),
        nn.Linear(1024, num_classes),
    )


def digits_cnn(num_classes: int = 10, in_channels: int = 1) -> nn.Sequential:
    """A tiny CNN for scikit-learn's digits (input ``(N, in_channels, 8, 8)``)."""
    _check_common(num_classes, in_channels)
    return nn.Sequential(
        nn.Conv2d(in_channels, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(32 * 4 * 4, 64),
        nn.ReLU(),
        nn.Linear(64, num_classes),
    )


# ------------------------------------------------------------------------------------------------
# PreAct ResNet-18
# ------------------------------------------------------------------------------------------------
class PreActBlock(nn.Module):
    """BN-ReLU-Conv3x3-BN-ReLU-Conv3x3 plus a shortcut (1x1 conv on the pre-activated input
    when the shape changes)."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if hasattr(self, "shortcut") else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class PreActResNet18(nn.Module):
    """PreAct ResNet-18, CIFAR style: input ``(N, in_channels, H, W)`` (32x32 for CIFAR)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        _check_common(num_classes, in_channels)
        self.in_planes = 64
        self.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
        self.layer1 = self._make_layer(64, 2, 1)
        self.layer2 = self._make_layer(128, 2, 2)
        self.layer3 = self._make_layer(256, 2, 2)
        self.layer4 = self._make_layer(512, 2, 2)
        self.bn = nn.BatchNorm2d(512)
        self.linear = nn.Linear(512, num_classes)

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        layers = []
        for s in [stride] + [1] * (blocks - 1):
            layers.append(PreActBlock(self.in_planes, planes, s))
            self.in_planes = planes
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(x)
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = F.relu(self.bn(out))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


# ------------------------------------------------------------------------------------------------
# Wide ResNet
# ------------------------------------------------------------------------------------------------
class WideBlock(nn.Module):
    """Pre-activation wide basic block: BN-ReLU-Conv3x3-[Dropout]-BN-ReLU-Conv3x3 + shortcut."""

    def __init__(self, in_planes: int, planes: int, stride: int, dropout: float) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.dropout = dropout
        self.equal = in_planes == planes and stride == 1
        self.shortcut = None if self.equal else nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o = F.relu(self.bn1(x))
        shortcut = x if self.shortcut is None else self.shortcut(o)
        out = self.conv1(o)
        out = F.relu(self.bn2(out))
        if self.dropout > 0:
            out = F.dropout(out, p=self.dropout, training=self.training)
        return self.conv2(out) + shortcut


class WideResNet(nn.Module):
    """WRN-depth-width: input ``(N, in_channels, 32, 32)``; ``depth = 6 n + 4``."""

    def __init__(self, depth: int = 28, width: int = 10, num_classes: int = 10, dropout: float = 0.0,
                 in_channels: int = 3) -> None:
        super().__init__()
        _check_common(num_classes, in_channels)
        check_positive(width, "width", integer=True)
        if not isinstance(depth, int) or isinstance(depth, bool) or depth < 10 or (depth - 4) % 6:
            raise ValueError(f"depth must be 6 n + 4 with n >= 1 (10, 16, 22, 28, 34, ...), got {depth!r}")
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        n = (depth - 4) // 6
        ch = [16, 16 * width, 32 * width, 64 * width]
        self.depth, self.width = depth, width
        self.conv1 = nn.Conv2d(in_channels, ch[0], 3, stride=1, padding=1, bias=False)
        blocks = []
        for g, stride in enumerate((1, 2, 2)):
            layer = [WideBlock(ch[g] if i == 0 else ch[g + 1], ch[g + 1], stride if i == 0 else 1, dropout)
                     for i in range(n)]
            blocks.append(nn.Sequential(*layer))
        self.block1, self.block2, self.block3 = blocks
        self.bn = nn.BatchNorm2d(ch[3])
        self.fc = nn.Linear(ch[3], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        out = F.relu(self.bn(out))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.fc(out)


# ------------------------------------------------------------------------------------------------
def _check_common(num_classes: Any, in_channels: Any) -> None:
    check_positive(num_classes, "num_classes", integer=True)
    check_positive(in_channels, "in_channels", integer=True)


def _resolve_normalize(normalize: Any) -> tuple[Any, Any] | None:
    if normalize is None or normalize is False:
        return None
    if isinstance(normalize, str):
        from .data import STATS

        key = normalize.lower()
        if key not in STATS:
            raise ValueError(f"normalize must be (mean, std) or one of {', '.join(sorted(STATS))}, got {normalize!r}")
        return STATS[key]
    if isinstance(normalize, dict) and {"mean", "std"} <= set(normalize):
        return normalize["mean"], normalize["std"]
    try:
        mean, std = normalize
    except (TypeError, ValueError):
        raise ValueError(f"normalize must be a (mean, std) pair or a dataset name, got {normalize!r}") from None
    return mean, std


def _factory(builder: Any, doc: str):
    def make(*, normalize: Any = None, seed: int | None = None, **kw: Any) -> nn.Module:
        stats = _resolve_normalize(normalize)
        if seed is not None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(seed))
                model = builder(**kw)
        else:
            model = builder(**kw)
        return with_normalization(model, *stats) if stats is not None else model

    make.__doc__ = doc
    make.__name__ = getattr(builder, "__name__", "model")
    return make


_ZOO: dict[str, tuple[Any, str]] = {
    "mnist-small": (mnist_small, "Wong et al. fast-AT MNIST net: conv16-4x4-s2, conv32-4x4-s2, fc100, fc10"),
    "mnist-large": (mnist_large, "C&W/MMA MNIST net: conv32-conv32-pool-conv64-conv64-pool-fc200-fc200-fc10"),
    "lenet5-madry": (lenet5_madry, "Madry et al. MNIST net: conv32-5x5-pool-conv64-5x5-pool-fc1024-fc10"),
    "madry-mnist": (lenet5_madry, "alias of lenet5-madry"),
    "preact-resnet18": (PreActResNet18, "PreAct ResNet-18, CIFAR style (num_classes, in_channels)"),
    "wide-resnet": (WideResNet, "Wide ResNet (depth=28, width=10, num_classes, dropout, in_channels)"),
    "digits-cnn": (digits_cnn, "tiny CNN for 8x8 digits"),
}


def create(name: str, /, *, normalize: Any = None, seed: int | None = None, **kw: Any) -> nn.Module:
    """Build a registered model: ``create("preact-resnet18", num_classes=10, normalize="cifar10")``.

    ``normalize``: ``(mean, std)`` (floats or per-channel sequences), a dataset name with known
    statistics (``"mnist"``, ``"fashion-mnist"``, ``"cifar10"``) or ``None``; when given the
    model is ``with_normalization(model, mean, std)``.  ``seed`` makes the initialisation
    deterministic without touching the global RNG.  Unknown names raise a ``KeyError`` listing
    the available models.
    """
    from .plugins import registry

    entry = registry().entry("model", name)
    factory = entry.factory
    if entry.plugin == "builtin-models":  # builtins handle normalize/seed themselves
        return factory(normalize=normalize, seed=seed, **kw)
    stats = _resolve_normalize(normalize)
    if seed is not None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            model = factory(**kw)
    else:
        model = factory(**kw)
    return with_normalization(model, *stats) if stats is not None else model


@hookimpl
def toolbox_register(registry) -> None:
    for name, (builder, doc) in _ZOO.items():
        registry.add_model(name, _factory(builder, doc), doc=doc)
