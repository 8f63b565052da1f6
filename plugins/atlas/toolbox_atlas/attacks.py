"""Attacks of the paper's evaluation and baselines that the kernel lacks, on the kernel's loop
(:func:`toolbox.attacks.base.iterate`):

* ``multi-targeted`` (Multi-T, Gowal et al. 2019, as the ATLAS paper runs it following Qin et
  al. 2019): for every wrong class ``i`` a PGD on the margin ``f_i(x') − f_c(x')``; an example
  counts as broken when any iterate of any target's run is misclassified.
* ``fgsm-kl``: one-step TRADES' adversary (the paper, App. B): FGSM on
  ``KL(p(x) ‖ p(x'))`` from a uniform random start in the ε-ball, step ``1.25 ε`` by default.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from toolbox.attacks.base import Attack, Signed, check_steps, iterate

__all__ = ["MultiTargeted", "FGSMKL", "target_margin"]


def target_margin(logits: torch.Tensor, yy: torch.Tensor) -> torch.Tensor:
    """``f_t − f_c`` per example ``(N,)``: ``logits`` ``(N, C)``, ``yy`` ``(N, 2)`` = (true
    class ``c``, target ``t``).  Positive means ``t`` beats the true class."""
    return logits.gather(1, yy[:, 1:2]).squeeze(1) - logits.gather(1, yy[:, :1]).squeeze(1)


def _misclassified(logits: torch.Tensor, yy: torch.Tensor) -> torch.Tensor:
    return logits.argmax(1) != yy[:, 0]


class MultiTargeted(Attack):
    """Multi-targeted PGD ("Multi-T"): for each wrong class ``t`` (the ``targets`` most likely
    ones under the clean logits, default all ``C − 1``), ``restarts`` runs of ``steps`` projected
    steepest-ascent steps of ``step_size`` (default ``2.5 ε / steps``) on ``f_t(x') − f_c(x')``.

    Success is any misclassification (not only reaching ``t``), checked at every iterate
    (the paper's "an adversary is found after a gradient update at any point"); the first such
    iterate is returned.  Each run only attacks the examples no earlier run has broken.  An
    unbroken example gets the point of highest margin over all runs.  Cost per example: up to
    ``targets × restarts × steps`` gradient passes (the paper: 20 × 50 per target on MNIST,
    5 × 20 on CIFAR-10).

    ``x`` ``(N, ...)`` in [0, 1], ``y`` ``(N,)``; returns ``x_adv`` of the same shape inside the
    threat model's ball ∩ [0, 1].
    """

    name = "multi-targeted"

    def __init__(self, threat, steps: int = 20, step_size: float | None = None, *, restarts: int = 1,
                 targets: int | None = None, random_start: bool = True, seed: int | None = None,
                 mode: str = "eval"):
        super().__init__(threat, seed=seed, mode=mode)
        self.steps = check_steps(steps)
        if step_size is not None and (isinstance(step_size, bool) or not isinstance(step_size, (int, float))
                                      or not step_size > 0):
            raise ValueError(f"step_size must be a number > 0 or None, got {step_size!r}")
        self.step_size = None if step_size is None else float(step_size)
        for v, n in ((restarts, "restarts"), (targets, "targets")):
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ValueError(f"{n} must be an int >= 1, got {v!r}")
        self.restarts, self.targets, self.random_start = restarts, targets, bool(random_start)

    def perturb(self, model, x, y, *, generator=None):
        with torch.no_grad():
            logits = model(x)
        c = logits.shape[1]
        if c < 2:
            raise ValueError(f"multi-targeted needs at least 2 classes, got logits of shape {tuple(logits.shape)}")
        # wrong classes, most likely first (so the cheap early runs break most examples)
        order = logits.scatter(1, y[:, None], float("-inf")).argsort(1, descending=True)[:, :c - 1]
        n_t = c - 1 if self.targets is None else min(self.targets, c - 1)
        size = self.threat.default_step_size(self.steps) if self.step_size is None else self.step_size
        per_example = isinstance(self.threat.eps, torch.Tensor)
        x_out = x.clone()
        best = torch.full((x.shape[0],), float("-inf"), device=x.device)
        todo = torch.arange(x.shape[0], device=x.device)
        for k in range(n_t):
            for r in range(self.restarts):
                if todo.numel() == 0:
                    return x_out
                xs, yy = x[todo], torch.stack([y[todo], order[todo, k]], 1)
                tm = self.threat.with_eps(self.threat.eps[todo]) if per_example else self.threat
                sz = size[todo] if isinstance(size, torch.Tensor) else size
                x0 = tm.random_init(xs, generator) if (self.random_start or r > 0) else xs
                # early_stop only skips work: the first successful iterate is kept either way
                xb, lb, ok = iterate(model, xs, yy, x0, steps=self.steps, rule=Signed(tm, sz), loss=target_margin,
                                     success=_misclassified, early_stop=True, keep_best=True, generator=generator)
                upd = lb > best[todo]
                x_out[todo[upd]] = xb[upd]
                best[todo[upd]] = lb[upd]
                todo = todo[~ok]
        return x_out


def _kl_clean_first(logits: torch.Tensor, p_clean: torch.Tensor) -> torch.Tensor:
    """``KL(p(x) ‖ softmax(logits))`` per example ``(N,)``; ``p_clean`` ``(N, C)``."""
    return (p_clean * (p_clean.clamp_min(1e-30).log() - F.log_softmax(logits.float(), dim=1))).sum(1)


def _never(logits: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    return torch.zeros(logits.shape[0], dtype=torch.bool, device=logits.device)


class FGSMKL(Attack):
    """One-step TRADES' adversary as the ATLAS paper trains it (App. B: "FGSM, combined with
    random initialization and a step size of 1.25ε ... KL distance for TRADES"): from a uniform
    start in the ε-ball ∩ [0, 1], one signed step of ``step_size`` (default ``1.25 ε``) on
    ``KL(p(x) ‖ p(x'))`` (``p(x)`` fixed), projected back.  Label-free (``y`` is ignored).
    ``mode="keep"`` attacks in the model's current mode (training mode inside the Trainer).

    ``x`` ``(N, ...)`` in [0, 1]; returns ``x_adv`` of the same shape in the ball ∩ [0, 1].
    """

    name = "fgsm-kl"

    def __init__(self, threat, step_size: float | None = None, *, seed: int | None = None, mode: str = "keep"):
        super().__init__(threat, seed=seed, mode=mode)
        if step_size is not None and (isinstance(step_size, bool) or not isinstance(step_size, (int, float))
                                      or not step_size > 0):
            raise ValueError(f"step_size must be a number > 0 or None, got {step_size!r}")
        self.step_size = None if step_size is None else float(step_size)

    def perturb(self, model, x, y, *, generator=None, **_):
        eps = self.threat.eps
        size = 1.25 * eps if self.step_size is None else self.step_size
        with torch.no_grad():
            p = F.softmax(model(x).float(), dim=1)
        x0 = self.threat.random_init(x, generator)
        x_adv, _, _ = iterate(model, x, p, x0, steps=1, rule=Signed(self.threat, size), loss=_kl_clean_first,
                              success=_never, keep_best=False, generator=generator)
        return x_adv
