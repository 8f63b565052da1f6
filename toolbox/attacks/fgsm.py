"""FGSM (Goodfellow et al. 2015), optionally from a random start (Wong et al. 2020)."""

from __future__ import annotations

from .._checks import check_choice, check_positive
from ._targets import TARGET_RULES, attack_labels, objective
from .base import Attack, Signed, iterate


class FGSM(Attack):
    """One steepest-ascent step of size ``step_size`` (default ``eps``).

    ``random_start=True`` starts from ``threat.random_init``; ``clamp_start=False`` leaves the
    random start unclamped to the [0, 1] box for the gradient pass (the paper-exact FGSM-RS
    of Wong et al.; clamping it first makes catastrophic overfitting far more likely on
    MNIST).  The output is always projected into ball ∩ box.  ``targeted=True`` steps towards
    ``target`` (call keyword) or a class chosen by ``target_rule``.
    """

    name = "fgsm"

    def __init__(self, threat, step_size: float | None = None, *, random_start: bool = False,
                 clamp_start: bool = True, loss: str = "ce", targeted: bool = False,
                 target_rule: str = "random", seed: int | None = None, mode: str = "eval"):
        super().__init__(threat, seed=seed, mode=mode)
        self.step_size = None if step_size is None else check_positive(step_size, "step_size")
        self.random_start, self.clamp_start = bool(random_start), bool(clamp_start)
        self.loss, self.targeted, self.target_rule = loss, bool(targeted), target_rule
        check_choice(target_rule, "target_rule", TARGET_RULES)
        objective(loss, targeted)  # fail early on an unknown loss name

    def perturb(self, model, x, y, *, generator=None, target=None):
        size = self.threat.eps if self.step_size is None else self.step_size
        x0 = self.threat.random_init(x, generator, box=self.clamp_start) if self.random_start else x
        yy = attack_labels(model, x, y, targeted=self.targeted, target=target,
                           target_rule=self.target_rule, generator=generator)
        loss, success = objective(self.loss, self.targeted)
        x_adv, _, _ = iterate(model, x, yy, x0, steps=1, rule=Signed(self.threat, size),
                              loss=loss, success=success, keep_best=False, stats=False, generator=generator)
        return x_adv
