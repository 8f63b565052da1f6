"""The thesis's MNIST architectures for provable training (thesis §3.5, Table 3.6).

* ``convex-small`` — "Small": Conv(16, 4x4, s2, pad 1) - ReLU - Conv(32, 4x4, s2, pad 1) -
  ReLU - FC(100) - ReLU - FC(num_classes), for 28x28 (MNIST: 4,804 hidden units, 166,406
  parameters, the same layers as the kernel's ``mnist-small``) or 32x32 inputs (CIFAR-10:
  6,244 units, 214,918 parameters; Table 3.4).
* ``convex-wide`` — Wide(k): Conv(4k, 4x4, stride 2, pad 1) - ReLU - Conv(8k, 4x4, stride 2,
  pad 1) - ReLU - FC(128k) - ReLU - FC(num_classes).  Wide(1) has 784 + 392 + 128 hidden
  units on MNIST (6.51 % robust / 2.27 % clean error at eps 0.1 in Table 3.6); Wide(4) is close
  to the "Small" model (``mnist-small``: conv16-conv32-fc100).

Registered as toolbox models (``tb.models.create("convex-wide", k=1)``); plain
``nn.Sequential`` nets, which the dual network supports.
"""

from __future__ import annotations

from torch import nn


def _check(**kw: int) -> None:
    for name, v in kw.items():
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    if kw.get("image_size", 4) < 4:
        raise ValueError(f"image_size must be >= 4, got {kw['image_size']}")


def small(num_classes: int = 10, in_channels: int = 1, image_size: int = 28) -> nn.Sequential:
    """The thesis's "Small" net for ``(N, in_channels, image_size, image_size)`` inputs in
    [0, 1]; returns logits ``(N, num_classes)``."""
    _check(num_classes=num_classes, in_channels=in_channels, image_size=image_size)
    side = (image_size // 2) // 2
    return nn.Sequential(
        nn.Conv2d(in_channels, 16, 4, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(16, 32, 4, stride=2, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(32 * side * side, 100), nn.ReLU(),
        nn.Linear(100, num_classes))


def wide(k: int = 1, num_classes: int = 10, in_channels: int = 1, image_size: int = 28) -> nn.Sequential:
    """Wide(k) of the thesis (Table 3.6) for ``(N, in_channels, image_size, image_size)``
    inputs in [0, 1]; returns logits ``(N, num_classes)``."""
    _check(k=k, num_classes=num_classes, in_channels=in_channels, image_size=image_size)
    side = (image_size // 2) // 2          # two 4x4 stride-2 convs with padding 1
    return nn.Sequential(
        nn.Conv2d(in_channels, 4 * k, 4, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(4 * k, 8 * k, 4, stride=2, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(8 * k * side * side, 128 * k), nn.ReLU(),
        nn.Linear(128 * k, num_classes))
