"""Projected gradient descent (Madry et al. 2018) in any threat model's geometry."""

from __future__ import annotations

import torch

from .._checks import check_choice, check_positive
from ._targets import TARGET_RULES, attack_labels, objective
from .base import Attack, Signed, best_over_restarts, check_steps, iterate


class PGD(Attack):
    """``steps`` projected steepest-ascent steps of ``step_size`` (default ``2.5 eps/steps``).

    ``restarts`` runs from fresh random starts (the first from ``x`` itself when
    ``random_start=False``) and keeps, per example, the best result: a successful adversarial
    example if any run found one, otherwise the highest loss (each restart runs only on the
    examples still unbroken, which gives the same result faster).  ``early_stop`` stops
    computing an example once it is misclassified.  ``keep_best=False`` returns the last
    iterate (Madry-style training adversary, one forward pass cheaper).  ``targeted=True``
    maximises the chosen ``loss`` towards ``target`` (call keyword) or a class picked by
    ``target_rule`` (``"random"``, ``"next-likely"``, ``"least-likely"``).
    """

    name = "pgd"

    def __init__(self, threat, steps: int = 10, step_size: float | None = None, *,
                 restarts: int = 1, random_start: bool = True, loss: str = "ce",
                 targeted: bool = False, target_rule: str = "random", early_stop: bool = False,
                 keep_best: bool = True, seed: int | None = None, mode: str = "eval"):
        super().__init__(threat, seed=seed, mode=mode)
        self.steps = check_steps(steps)
        self.step_size = (None if step_size is None else check_positive(step_size, "step_size"))
        self.restarts = check_positive(restarts, "restarts", integer=True)
        self.random_start, self.loss = bool(random_start), loss
        self.targeted, self.target_rule = bool(targeted), target_rule
        self.early_stop, self.keep_best = bool(early_stop), bool(keep_best)
        check_choice(target_rule, "target_rule", TARGET_RULES)
        objective(loss, targeted)

    def perturb(self, model, x, y, *, generator=None, target=None):
        size = self.threat.default_step_size(self.steps) if self.step_size is None else self.step_size
        yy = attack_labels(model, x, y, targeted=self.targeted, target=target,
                           target_rule=self.target_rule, generator=generator)
        loss, success = objective(self.loss, self.targeted)
        rule = Signed(self.threat, size)

        def run(r, rows):
            xs, ys, tm, rl = x, yy, self.threat, rule
            if rows is not None:
                xs, ys = x[rows], yy[rows]
                if isinstance(tm.eps, torch.Tensor):  # per-example radii follow the examples
                    tm = tm.with_eps(tm.eps[rows])
                    rl = Signed(tm, size[rows] if isinstance(size, torch.Tensor) else size)
            x0 = tm.random_init(xs, generator) if (self.random_start or r > 0) else xs
            return iterate(model, xs, ys, x0, steps=self.steps, rule=rl, loss=loss, success=success,
                           early_stop=self.early_stop, keep_best=self.keep_best, generator=generator,
                           # one run of a last-iterate PGD returns only the point: skip the bookkeeping
                           stats=self.keep_best or self.early_stop or self.restarts > 1)

        return best_over_restarts(x, self.restarts, run)
