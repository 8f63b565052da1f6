"""Modular dual layers for :class:`toolbox_convex.dual.DualNetwork` (thesis §3.4.3).

The dual network treats a model as a chain of *dual layers*.  Each affine dual layer knows its
forward linear map ``A`` (no bias), its adjoint ``A^T`` (the backward / dual pass) and the bias
term ``lam . b``; the network itself handles the ReLU relaxation and residual additions.  A
registry maps module types to factories that build dual layers:

* ``nn.Linear``, ``nn.Conv2d`` (zero padding), ``nn.Flatten`` (``start_dim=1``),
  ``nn.BatchNorm1d`` / ``nn.BatchNorm2d`` in eval mode (per-channel affine from the running
  statistics), ``nn.ReLU``, ``nn.Identity``, ``nn.Sequential`` (expanded) and
  :class:`Residual` (``x + body(x)``).

Third-party layers register with :func:`register_dual_layer`::

    class Scale(nn.Module):            # y = s * x
        ...
    class ScaleDual(AffineDual):
        def apply(self, g):            # (N, m, *in_shape) -> (N, m, *out_shape)
            return g * self.module.s
        def transpose(self, lam):      # (N, m, *out_shape) -> (N, m, *in_shape)
            return lam * self.module.s
    register_dual_layer(Scale, ScaleDual)

A factory takes the module and returns a :class:`DualLayer` or a list of them (containers
expand into their children with :func:`dual_layers`).  The bound is only sound if ``apply``
is the exact linear part of the module (``module(h) = apply(h) + bias``) and ``transpose`` is
its adjoint: ``<apply(g), lam> = <g, transpose(lam)>``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


class Residual(nn.Module):
    """A residual block ``x + body(x)`` the dual network understands.

    Args:
        *layers: the body, any layers the dual network supports (ReLUs, nested residual
            blocks included); the body's output must have the input's shape.

    The dual of the addition sends the backward variable through both branches (the body's
    chain and the identity skip) and sums them where they fork.
    """

    def __init__(self, *layers: nn.Module) -> None:
        super().__init__()
        if not layers:
            raise ValueError("layers: a Residual block needs at least one layer in its body")
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x + body(x)``, same shape as ``x``."""
        return x + self.body(x)


class DualLayer:
    """Base class of a dual layer wrapping ``module``.

    ``in_shape`` / ``out_shape`` (per-example shapes, no batch dim) are set by the dual
    network with :meth:`bind` before any map is used.
    """

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        self.in_shape: torch.Size = torch.Size()
        self.out_shape: torch.Size = torch.Size()

    def bind(self, in_shape: torch.Size, out_shape: torch.Size) -> None:
        """Record the per-example input and output shapes."""
        self.in_shape, self.out_shape = torch.Size(in_shape), torch.Size(out_shape)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """The layer's own map on a batch ``(N, *in_shape)`` -> ``(N, *out_shape)``."""
        return self.module(h)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({type(self.module).__name__})"


class AffineDual(DualLayer):
    """An affine layer ``h -> A h + b``; subclasses implement :meth:`apply` and
    :meth:`transpose`, and :meth:`bias_dot` when there is a bias."""

    def apply(self, g: torch.Tensor) -> torch.Tensor:
        """``A g`` for ``g`` ``(N, m, *in_shape)`` -> ``(N, m, *out_shape)`` (no bias)."""
        raise NotImplementedError

    def transpose(self, lam: torch.Tensor) -> torch.Tensor:
        """``A^T lam`` for ``lam`` ``(N, m, *out_shape)`` -> ``(N, m, *in_shape)``."""
        raise NotImplementedError

    def bias_dot(self, lam: torch.Tensor) -> torch.Tensor | None:
        """``lam . b`` -> ``(N, m)``, or ``None`` without a bias."""
        return None


class ReLUDual(DualLayer):
    """Marker for ``nn.ReLU``: the dual network relaxes it with its pre-activation bounds."""


class ResidualFork(DualLayer):
    """Marks where a residual block's input is kept for the skip connection (identity)."""

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h


class ResidualAdd(DualLayer):
    """Marks the addition ``skip + body(x)`` that closes a residual block."""

    def forward(self, h: torch.Tensor) -> torch.Tensor:  # pragma: no cover - needs the skip
        raise RuntimeError("ResidualAdd needs the skip input; run the chain with run_chain")


class LinearDual(AffineDual):
    """``nn.Linear``: ``A = W``."""

    def apply(self, g: torch.Tensor) -> torch.Tensor:
        return g @ self.module.weight.t()

    def transpose(self, lam: torch.Tensor) -> torch.Tensor:
        return lam @ self.module.weight

    def bias_dot(self, lam: torch.Tensor) -> torch.Tensor | None:
        b = self.module.bias
        return None if b is None else lam @ b


class Conv2dDual(AffineDual):
    """``nn.Conv2d`` (zero padding): ``A^T`` is the transposed convolution, with the output
    padding that restores ``in_shape``."""

    def __init__(self, module: nn.Conv2d) -> None:
        if isinstance(module.padding, str):
            raise ValueError("model: nn.Conv2d with string padding is not supported")
        if module.padding_mode != "zeros":
            raise ValueError("model: nn.Conv2d must use padding_mode='zeros'")
        super().__init__(module)

    def apply(self, g: torch.Tensor) -> torch.Tensor:
        n, m = g.shape[:2]
        c = self.module
        out = F.conv2d(g.reshape(n * m, *self.in_shape), c.weight, None, c.stride, c.padding,
                       c.dilation, c.groups)
        return out.reshape(n, m, *self.out_shape)

    def transpose(self, lam: torch.Tensor) -> torch.Tensor:
        n, m = lam.shape[:2]
        c = self.module
        k = c.weight.shape[-2:]
        pad = [0, 0]
        for i in range(2):
            natural = ((self.out_shape[1 + i] - 1) * c.stride[i] - 2 * c.padding[i]
                       + c.dilation[i] * (k[i] - 1) + 1)
            pad[i] = self.in_shape[1 + i] - natural
        flat = F.conv_transpose2d(lam.reshape(n * m, *self.out_shape), c.weight, None, c.stride,
                                  c.padding, tuple(pad), c.groups, c.dilation)
        return flat.reshape(n, m, *self.in_shape)

    def bias_dot(self, lam: torch.Tensor) -> torch.Tensor | None:
        b = self.module.bias
        if b is None:
            return None
        return (lam.flatten(3).sum(-1) * b).sum(-1)


class FlattenDual(AffineDual):
    """``nn.Flatten(start_dim=1)``: a reshape both ways."""

    def __init__(self, module: nn.Flatten) -> None:
        if module.start_dim != 1:
            raise ValueError(f"model: nn.Flatten must have start_dim=1, got {module.start_dim}")
        super().__init__(module)

    def apply(self, g: torch.Tensor) -> torch.Tensor:
        return g.reshape(*g.shape[:2], *self.out_shape)

    def transpose(self, lam: torch.Tensor) -> torch.Tensor:
        return lam.reshape(*lam.shape[:2], *self.in_shape)


class BatchNormDual(AffineDual):
    """Eval-mode ``nn.BatchNorm1d`` / ``nn.BatchNorm2d``: per channel (dim 1 of the input)
    ``y = s x + t`` with ``s = gamma / sqrt(running_var + eps)``, ``t = beta - mean s``.

    Train-mode batch norm depends on the batch, not an affine map of one input: refused.
    """

    def __init__(self, module: nn.modules.batchnorm._BatchNorm) -> None:
        if module.training:
            raise ValueError(f"model: {type(module).__name__} is in train mode (its output depends "
                             "on the batch); call model.eval() before bounding")
        if module.running_mean is None or module.running_var is None:
            raise ValueError(f"model: {type(module).__name__} has no running statistics "
                             "(track_running_stats=False) and is not affine in eval mode")
        super().__init__(module)

    def scale_shift(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel ``(s, t)``, each ``(C,)``."""
        bn = self.module
        s = torch.rsqrt(bn.running_var + bn.eps)
        if bn.weight is not None:
            s = s * bn.weight
        t = -bn.running_mean * s
        if bn.bias is not None:
            t = t + bn.bias
        return s, t

    def _view(self, v: torch.Tensor) -> torch.Tensor:
        return v.view(-1, *([1] * (len(self.in_shape) - 1)))

    def apply(self, g: torch.Tensor) -> torch.Tensor:
        return g * self._view(self.scale_shift()[0])

    def transpose(self, lam: torch.Tensor) -> torch.Tensor:
        return lam * self._view(self.scale_shift()[0])

    def bias_dot(self, lam: torch.Tensor) -> torch.Tensor | None:
        return (lam * self._view(self.scale_shift()[1])).flatten(2).sum(-1)


Factory = Callable[[nn.Module], DualLayer | list[DualLayer]]
_REGISTRY: dict[type, Factory] = {}


def register_dual_layer(layer_type: type, factory: Factory) -> None:
    """Teach the dual network a layer type.

    Args:
        layer_type: an ``nn.Module`` subclass; instances of it (and of its subclasses, unless
            they have their own entry) use ``factory``.
        factory: ``factory(module)`` -> a :class:`DualLayer` (usually an :class:`AffineDual`
            subclass, whose constructor fits) or a list of them (containers).

    Registering a type again replaces its factory.
    """
    if not (isinstance(layer_type, type) and issubclass(layer_type, nn.Module)):
        raise ValueError(f"layer_type must be an nn.Module subclass, got {layer_type!r}")
    if not callable(factory):
        raise ValueError(f"factory must be callable, got {factory!r}")
    _REGISTRY[layer_type] = factory


def registered_dual_layers() -> dict[type, Factory]:
    """A copy of the registry: layer type -> factory."""
    return dict(_REGISTRY)


def dual_layers(module: nn.Module) -> list[DualLayer]:
    """The dual layers of ``module`` as a flat chain (containers expanded).

    Raises ``ValueError`` naming the first layer type with no registered dual layer.
    """
    for cls in type(module).__mro__:
        if cls in _REGISTRY:
            out = _REGISTRY[cls](module)
            return [out] if isinstance(out, DualLayer) else list(out)
    names = ", ".join(sorted(t.__name__ for t in _REGISTRY))
    raise ValueError(f"model: no dual layer for {type(module).__name__} ({module!r}); supported: "
                     f"{names}; register one with toolbox_convex.register_dual_layer")


def _sequential(module: nn.Sequential) -> list[DualLayer]:
    return [d for child in module for d in dual_layers(child)]


def _residual(module: Residual) -> list[DualLayer]:
    return [ResidualFork(module), *dual_layers(module.body), ResidualAdd(module)]


register_dual_layer(nn.Sequential, _sequential)
register_dual_layer(nn.Identity, lambda m: [])
register_dual_layer(Residual, _residual)
register_dual_layer(nn.Linear, LinearDual)
register_dual_layer(nn.Conv2d, Conv2dDual)
register_dual_layer(nn.Flatten, FlattenDual)
register_dual_layer(nn.BatchNorm1d, BatchNormDual)
register_dual_layer(nn.BatchNorm2d, BatchNormDual)
register_dual_layer(nn.ReLU, ReLUDual)


def run_chain(chain: list[DualLayer], h: torch.Tensor) -> list[torch.Tensor]:
    """Every intermediate ``h_t`` of the chain on ``h`` (``h_0 = h``), residual additions
    included: a list of ``len(chain) + 1`` tensors."""
    hs, stack = [h], []
    for d in chain:
        if isinstance(d, ResidualFork):
            stack.append(h)
        elif isinstance(d, ResidualAdd):
            h = stack.pop() + h
            hs.append(h)
            continue
        h = d.forward(h)
        hs.append(h)
    return hs
