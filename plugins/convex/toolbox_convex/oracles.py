"""Reference models and exact linear programs for testing the dual network on tiny nets (the
plugin's own tests use them; so can a plugin that adds dual layers).  Needs scipy."""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linprog
from torch import nn

__all__ = ["random_mlp", "small_conv_net", "one_hidden_layer_lp"]


def random_mlp(sizes: list[int], seed: int, scale: float = 0.6) -> nn.Sequential:
    """A ReLU MLP ``Linear(sizes[0], sizes[1]) - ReLU - ... - Linear(.., sizes[-1])`` (no
    Flatten) with Gaussian weights of std ``scale`` and biases of std 0.3 from ``seed``, float32,
    in eval mode."""
    g = torch.Generator().manual_seed(seed)
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        lin = nn.Linear(a, b)
        with torch.no_grad():
            lin.weight.copy_(torch.randn(b, a, generator=g) * scale)
            lin.bias.copy_(torch.randn(b, generator=g) * 0.3)
        layers.append(lin)
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers).eval()


def small_conv_net(seed: int) -> nn.Sequential:
    """A tiny conv net for ``(N, 1, 8, 8)`` inputs (two convs, two linear layers, 10 outputs),
    default PyTorch initialisation under ``torch.manual_seed(seed)``, float32, in eval mode."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3, stride=2, padding=1), nn.ReLU(),
                         nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(96, 12), nn.ReLU(), nn.Linear(12, 10)).eval()


def one_hidden_layer_lp(model, x0, eps, c, triangle: bool) -> float:
    """``min c^T f(x)`` over the ℓ∞ ball of radius ``eps`` around ``x0`` (a ``(n_in,)`` numpy
    vector) ∩ [0, 1], for ``model = Sequential(Linear, ReLU, Linear)`` and a ``(n_out,)`` numpy
    ``c``, as a linear program (HiGHS): each unstable ReLU relaxed either by the dual network's
    relaxation (d z <= a <= d (z - l)) or by the triangle (a >= 0, a >= z, a <= d (z - l)),
    with interval bounds l, u on the hidden pre-activations."""
    w1, b1 = model[0].weight.detach().double().numpy(), model[0].bias.detach().double().numpy()
    w2, b2 = model[2].weight.detach().double().numpy(), model[2].bias.detach().double().numpy()
    n_in, n_h = w1.shape[1], w1.shape[0]
    lo, hi = np.clip(x0 - eps, 0, 1), np.clip(x0 + eps, 0, 1)
    zl = np.minimum(w1, 0) @ hi + np.maximum(w1, 0) @ lo + b1
    zu = np.maximum(w1, 0) @ hi + np.minimum(w1, 0) @ lo + b1
    # variables v = [x (n_in), a (n_h)]; z = w1 x + b1
    a_ub, b_ub, bounds = [], [], [(lo[i], hi[i]) for i in range(n_in)]
    for j in range(n_h):
        row = np.zeros(n_in + n_h)
        if zl[j] >= 0:        # active: a = z
            bounds.append((None, None))
            row[:n_in], row[n_in + j] = w1[j], -1.0
            a_ub += [row, -row]
            b_ub += [-b1[j], b1[j]]
        elif zu[j] <= 0:      # dead: a = 0
            bounds.append((0.0, 0.0))
        else:
            d = zu[j] / (zu[j] - zl[j])
            bounds.append((0.0, None) if triangle else (None, None))
            up = np.zeros(n_in + n_h)      # a - d (w1 x + b1 - l) <= 0
            up[:n_in], up[n_in + j] = -d * w1[j], 1.0
            a_ub.append(up)
            b_ub.append(d * (b1[j] - zl[j]))
            low = np.zeros(n_in + n_h)     # lower relaxation, as  (.) <= rhs
            if triangle:                   # z - a <= 0
                low[:n_in], low[n_in + j] = w1[j], -1.0
                b_ub.append(-b1[j])
            else:                          # d z - a <= 0
                low[:n_in], low[n_in + j] = d * w1[j], -1.0
                b_ub.append(-d * b1[j])
            a_ub.append(low)
    obj = np.concatenate([np.zeros(n_in), c @ w2])
    res = linprog(obj, A_ub=np.array(a_ub) if a_ub else None, b_ub=np.array(b_ub) if b_ub else None,
                  bounds=bounds, method="highs")
    if res.status != 0:
        raise RuntimeError(f"the LP failed: {res.message}")
    return float(res.fun + c @ b2)
