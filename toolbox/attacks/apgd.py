"""Auto-PGD (Croce & Hein 2020): step-size-free PGD with momentum and checkpoint halving."""

from __future__ import annotations

import math

import torch

from .._checks import check_positive
from ._targets import objective, ranked_target
from .base import Attack, check_steps, iterate


def checkpoints(steps: int) -> list[int]:
    """Iterations at which APGD may halve its step: ``ceil(p_j * steps)`` with ``p_0 = 0``,
    ``p_1 = 0.22``, ``p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)``."""
    p = [0.0, 0.22]
    while p[-1] < 1:  # rounded: 0.41 + 0.16 must be 0.57, not 0.5700000000000001
        p.append(round(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06), 10))
    # ceil of a float product: 0.57 * 100 = 57.00000000000001 must give 57 (the paper's w_j)
    marks = {math.ceil(round(q * steps, 8)) for q in p[1:] if q <= 1}
    return sorted(m for m in marks if m > 0)


class APGDRule:
    """APGD's step rule for :func:`~toolbox.attacks.base.iterate`.

    Per example: ``z = P(x_t + η ascent(g_t))``, ``x_{t+1} = P(x_t + a(z - x_t) + (1-a)(x_t -
    x_{t-1}))`` with ``a = 0.75`` (``a = 1`` at the first step); at each checkpoint the step
    ``η`` (initially ``2 eps``) is halved and the iterate reset to the best point when fewer
    than ``rho`` of the steps since the last checkpoint increased the loss, or when neither
    ``η`` nor the best loss changed since then.
    """

    def __init__(self, threat, steps: int, rho: float = 0.75, momentum: float = 0.75):
        self.threat, self.rho, self.momentum = threat, rho, momentum
        self.marks = checkpoints(steps)
        self.eta: torch.Tensor | None = None

    def _init(self, x_adv: torch.Tensor, grad: torch.Tensor, loss: torch.Tensor) -> None:
        n = x_adv.shape[0]
        eps = self.threat.eps
        eps = eps.to(x_adv) if isinstance(eps, torch.Tensor) else torch.full((n,), float(eps), device=x_adv.device, dtype=x_adv.dtype)
        self.eta = 2 * eps
        self.x_prev = x_adv.clone()
        self.best_x, self.best_g, self.best_f = x_adv.clone(), grad.clone(), loss.clone()
        self.prev_f = loss.clone()
        self.ups = torch.zeros(n, device=x_adv.device)
        self.best_f_mark = loss.clone()
        self.reduced_mark = torch.ones(n, dtype=torch.bool, device=x_adv.device)
        self.last_mark = 0

    def select(self, keep: torch.Tensor) -> None:
        for k in ("eta", "x_prev", "best_x", "best_g", "best_f", "prev_f", "ups", "best_f_mark", "reduced_mark"):
            setattr(self, k, getattr(self, k)[keep])
        if isinstance(self.threat.eps, torch.Tensor):
            self.threat = self.threat.with_eps(self.threat.eps[keep])

    def __call__(self, t, x_adv, x, grad, loss, loss_fn, generator):
        if t == 0:
            self._init(x_adv, grad, loss)
        else:
            self.ups += (loss > self.prev_f).float()
            self.prev_f = loss.clone()
            better = loss > self.best_f
            self.best_x[better], self.best_g[better], self.best_f[better] = x_adv[better], grad[better], loss[better]
            if t in self.marks:
                span = t - self.last_mark
                cond1 = self.ups <= self.rho * span
                cond2 = ~self.reduced_mark & (self.best_f_mark >= self.best_f)
                red = cond1 | cond2
                self.reduced_mark, self.best_f_mark = red, self.best_f.clone()
                self.ups.zero_()
                self.last_mark = t
                if red.any():
                    self.eta = torch.where(red, self.eta / 2, self.eta)
                    x_adv = x_adv.clone()
                    grad = grad.clone()
                    x_adv[red], grad[red] = self.best_x[red], self.best_g[red]
        a = 1.0 if t == 0 else self.momentum
        z = self.threat.step(x_adv, x, grad, self.eta, loss_fn=loss_fn, generator=generator)
        nxt = self.threat.project(x_adv + a * (z - x_adv) + (1 - a) * (x_adv - self.x_prev), x)
        self.x_prev = x_adv
        return nxt


class APGD(Attack):
    """APGD with loss ``"ce"`` (APGD-CE), ``"dlr"`` (APGD-DLR) or any registered loss.

    ``targeted=True`` is APGD-T: the targeted DLR loss (unless another ``loss`` is given)
    against each of the ``n_target_classes`` most likely wrong classes in turn, each run only
    on the examples still unbroken.  ``restarts`` random restarts per run.  ``early_stop``
    (default on) stops computing an example once it is misclassified, which changes no result
    (examples are independent in eval mode) and saves time.
    """

    name = "apgd"

    def __init__(self, threat, steps: int = 100, *, restarts: int = 1, loss: str = "ce",
                 targeted: bool = False, n_target_classes: int = 9, rho: float = 0.75,
                 momentum: float = 0.75, early_stop: bool = True, seed: int | None = None,
                 mode: str = "eval"):
        super().__init__(threat, seed=seed, mode=mode)
        self.steps = check_steps(steps)
        self.restarts = check_positive(restarts, "restarts", integer=True)
        self.n_target_classes = check_positive(n_target_classes, "n_target_classes", integer=True)
        self.rho, self.momentum = check_positive(rho, "rho"), check_positive(momentum, "momentum")
        self.loss, self.targeted, self.early_stop = loss, bool(targeted), bool(early_stop)
        objective(loss, targeted)

    def perturb(self, model, x, y, *, generator=None):
        loss, success = objective(self.loss, self.targeted)
        x_out = x.clone()
        todo = torch.arange(x.shape[0], device=x.device)
        filled = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        if self.targeted:
            with torch.no_grad():
                logits = model(x)
            n_targets = min(self.n_target_classes, logits.shape[1] - 1)
            runs = [torch.stack([y, ranked_target(logits, r + 2)], 1) for r in range(n_targets)]
        else:
            runs = [y]
        for yy in runs:
            for _ in range(self.restarts):
                if todo.numel() == 0:
                    return x_out
                tm = self.threat
                if isinstance(tm.eps, torch.Tensor):
                    tm = tm.with_eps(tm.eps[todo])
                xs = x[todo]
                x0 = tm.random_init(xs, generator)
                xb, _, ok = iterate(model, xs, yy[todo], x0, steps=self.steps,
                                    rule=APGDRule(tm, self.steps, self.rho, self.momentum),
                                    loss=loss, success=success, early_stop=self.early_stop,
                                    generator=generator)
                # successes always; unbroken examples keep the best point of their first run
                upd = ok | ~filled[todo]
                x_out[todo[upd]] = xb[upd]
                filled[todo[upd]] = True
                todo = todo[~ok]
        return x_out

