"""Template toolbox plugin: registers the ``example-noise`` attack through the entry point."""

from __future__ import annotations

import torch

import toolbox as tb

__version__ = "0.1.0"


class RandomNoise(tb.Attack):
    """Best of ``samples`` uniform random points of the threat model's ball ∩ [0, 1] box.

    A weak, gradient-free baseline: per example, keep the first sample that is misclassified
    (else the last one).  Input ``x [B, ...]`` in [0, 1], labels ``y [B]``; output ``[B, ...]``.
    """

    name = "example-noise"

    def __init__(self, threat, samples: int = 10, *, seed: int | None = None, mode: str = "eval"):
        super().__init__(threat, seed=seed, mode=mode)
        if int(samples) < 1:
            raise ValueError(f"samples must be >= 1, got {samples!r}")
        self.samples = int(samples)

    @torch.no_grad()
    def perturb(self, model, x, y, *, generator=None, **_):
        best = x.clone()
        found = torch.zeros(len(x), dtype=torch.bool, device=x.device)
        for _ in range(self.samples):
            cand = self.threat.random_init(x, generator)
            wrong = model(cand).argmax(1) != y
            take = ~found
            best[take] = cand[take]
            found |= wrong
            if bool(found.all()):
                break
        return best


@tb.hookimpl
def toolbox_register(registry):
    registry.add("attack", "example-noise", RandomNoise)
