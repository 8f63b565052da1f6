"""Mixup and Cutout as defense options (Rice, Wong & Kolter 2020, §4.4 of the thesis).

Both act on the batch *before* the attack, as in the robust-overfitting code:

* **Cutout** zeroes one ``L x L`` square per image, placed uniformly at random *fully inside*
  the image (cifar10-fast style: exactly ``L*L`` pixels per channel are zeroed).  The kernel's
  :class:`toolbox.data.Cutout` instead centres the square anywhere and clips it at the border
  (DeVries & Taylor); both work with every defense, the one here is the thesis' variant.
* **Mixup** draws one ``lam ~ Beta(alpha, alpha)`` per batch and a random pairing ``perm``:
  ``x~ = lam x + (1 - lam) x[perm]``.  The attack maximises the *mixed* loss
  ``lam l(f(x'), y) + (1 - lam) l(f(x'), y[perm])`` and training minimises it.

A defense of this plugin reads mixup labels from ``batch.extra`` (``y2``, ``lam``) too, so the
kernel's batch transform ``tb.Trainer(..., transform=toolbox.data.Mixup(alpha))`` gives the same
training as the ``mixup=alpha`` option.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from toolbox import losses as _losses

__all__ = ["cutout", "InsideCutout", "draw_mixup", "mixed_ce", "with_mixed_loss"]


def _check_size(size: Any, name: str = "cutout") -> int:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or int(size) < 1:
        raise ValueError(f"{name} must be a positive integer (the square's side in pixels), got {size!r}")
    return int(size)


def cutout(x: torch.Tensor, size: int, generator: torch.Generator | None = None
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero one ``size x size`` square per image, placed uniformly at random fully inside it.

    ``x`` ``(N, C, H, W)`` in [0, 1]; returns ``(x_cut, corners)`` with ``x_cut`` the same shape
    (a new tensor) and ``corners`` ``(N, 2)`` int64, the (row, column) of each square's top-left
    pixel.  Exactly ``size * size`` pixels of every channel are set to 0 (pixels already 0 stay
    0).  ``size`` larger than the image raises ``ValueError``.
    """
    size = _check_size(size, "size")
    if x.dim() != 4:
        raise ValueError(f"x must be a batch of images (N, C, H, W), got shape {tuple(x.shape)}")
    n, _, h, w = x.shape
    if size > min(h, w):
        raise ValueError(f"size must be at most the image side {min(h, w)}, got {size}")
    top = torch.randint(0, h - size + 1, (n,), generator=generator, device=x.device)
    left = torch.randint(0, w - size + 1, (n,), generator=generator, device=x.device)
    r = torch.arange(h, device=x.device)[None, :]
    c = torch.arange(w, device=x.device)[None, :]
    rows = (r >= top[:, None]) & (r < (top + size)[:, None])          # (N, H)
    cols = (c >= left[:, None]) & (c < (left + size)[:, None])        # (N, W)
    mask = (rows[:, :, None] & cols[:, None, :])[:, None]             # (N, 1, H, W)
    return x.masked_fill(mask, 0.0), torch.stack([top, left], 1)


class InsideCutout:
    """Batch transform ``t(x, y, generator) -> (x, y, extra)`` for ``tb.Trainer(transform=)``:
    :func:`cutout` with the square fully inside the image; ``extra["cutout_corners"]``."""

    def __init__(self, size: int) -> None:
        self.size = _check_size(size, "size")

    def __call__(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None = None):
        xc, corners = cutout(x, self.size, generator)
        return xc, y, {"cutout_corners": corners}

    def __repr__(self) -> str:
        return f"InsideCutout(size={self.size})"


def draw_mixup(x: torch.Tensor, y: torch.Tensor, alpha: float, generator: torch.Generator | None = None
               ) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Mix a batch: ``lam ~ Beta(alpha, alpha)`` (one per batch), ``perm`` a random pairing.

    ``x`` ``(N, ...)``, ``y`` ``(N,)``; returns ``(lam * x + (1 - lam) * x[perm], y[perm], lam)``.
    The draw is reproducible from ``generator``.
    """
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not alpha > 0:
        raise ValueError(f"mixup must be a positive Beta parameter alpha, got {alpha!r}")
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=x.device).item())
    lam = float(np.random.default_rng(seed).beta(alpha, alpha))
    perm = torch.randperm(x.shape[0], generator=generator, device=x.device)
    return x * lam + x[perm] * (1.0 - lam), y[perm], lam


def mixed_ce(logits: torch.Tensor, y: torch.Tensor, y2: torch.Tensor | None = None,
             lam: float = 1.0) -> torch.Tensor:
    """Per-example mixup cross-entropy ``lam CE(logits, y) + (1 - lam) CE(logits, y2)`` ``(N,)``;
    plain CE when ``y2`` is ``None``.  ``logits`` ``(N, C)``, ``y``/``y2`` ``(N,)``."""
    ce = F.cross_entropy(logits, y, reduction="none")
    if y2 is None:
        return ce
    return lam * ce + (1.0 - lam) * F.cross_entropy(logits, y2, reduction="none")


def with_mixed_loss(attack: Any, y2: torch.Tensor, lam: float) -> Any:
    """A copy of ``attack`` that maximises the mixup loss ``lam l(., y) + (1 - lam) l(., y2)``,
    ``l`` being the attack's own loss (``attack.loss``, a name or callable).

    The second labels ``y2`` ``(N,)`` belong to the whole batch, so the attack must compute
    every example at every step: attacks with ``early_stop=True`` or ``restarts > 1`` (which
    drop examples) and targeted attacks raise ``ValueError``.  With ``lam == 1`` the objective
    is exactly the attack's own.
    """
    if not hasattr(attack, "loss"):
        raise ValueError(f"mixup needs an attack with a loss= option (fgsm, pgd, apgd ...), got {attack!r}")
    if getattr(attack, "targeted", False):
        raise ValueError("mixup cannot drive a targeted attack (its objective is a mixed label loss)")
    if getattr(attack, "early_stop", False) or int(getattr(attack, "restarts", 1)) > 1:
        raise ValueError("mixup needs an attack that keeps every example at every step: use "
                         f"early_stop=False and restarts=1 (got {attack!r})")
    base = _losses.get(attack.loss)
    n = y2.shape[0]

    def mixed(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if logits.shape[0] != n:
            raise RuntimeError(f"the mixup loss saw {logits.shape[0]} of the batch's {n} examples; "
                               "use an attack with early_stop=False and restarts=1")
        return lam * base(logits, y) + (1.0 - lam) * base(logits, y2)

    new = copy.copy(attack)
    new.loss = mixed
    return new
