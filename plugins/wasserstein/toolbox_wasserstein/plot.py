"""Perturbation heatmaps: where a Wasserstein adversary moves mass (thesis Figures 5.3, 5.6)."""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["perturbation_grid"]


def perturbation_grid(x: torch.Tensor, x_adv: torch.Tensor, *, titles: list[str] | None = None,
                      n: int = 8, path: Any = None):
    """A matplotlib grid of ``n`` examples: the clean image, the adversarial image and the
    perturbation ``x_adv - x`` (summed over channels) as a red/blue heatmap on a symmetric
    scale (red: mass added, blue: mass removed), so that mass moving along strokes shows as
    adjacent red/blue pairs.  ``x``, ``x_adv`` ``(N, C, H, W)`` in [0, 1]; ``titles``: one
    string per column (e.g. ``"7→3, ε=0.42"``).  Returns the Figure; saves it when ``path``
    is given."""
    import matplotlib.pyplot as plt

    if not isinstance(x, torch.Tensor) or x.dim() != 4 or not isinstance(x_adv, torch.Tensor) \
            or x_adv.shape != x.shape:
        raise ValueError("x and x_adv must be (N, C, H, W) tensors of the same shape")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    n = min(n, x.shape[0])
    xc, xa = x[:n].detach().float().cpu(), x_adv[:n].detach().float().cpu()
    delta = (xa - xc).sum(1)
    lim = float(delta.abs().max()) or 1.0
    fig, axes = plt.subplots(3, n, figsize=(1.4 * n, 4.4), squeeze=False)

    def show(img: torch.Tensor, ax, **kw) -> Any:
        if img.shape[0] == 3:
            return ax.imshow(img.permute(1, 2, 0).clamp(0, 1).numpy(), **kw)
        return ax.imshow(img.mean(0).numpy(), cmap="gray", vmin=0, vmax=1, **kw)

    im = None
    for j in range(n):
        show(xc[j], axes[0, j])
        show(xa[j], axes[1, j])
        im = axes[2, j].imshow(delta[j].numpy(), cmap="RdBu_r", vmin=-lim, vmax=lim)
        if titles is not None and j < len(titles):
            axes[0, j].set_title(titles[j], fontsize=8)
        for i in range(3):
            axes[i, j].set_xticks([])
            axes[i, j].set_yticks([])
    for i, name in enumerate(("clean", "adversarial", "x_adv - x")):
        axes[i, 0].set_ylabel(name, fontsize=8)
    fig.colorbar(im, ax=axes[2, :].tolist(), shrink=0.8, label="mass moved")
    if path is not None:
        from toolbox.plot import save
        save(fig, path)
    return fig
