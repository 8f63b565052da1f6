"""The SEAT defense (Eq. 8): ``|CE(x+δ*) − b| + b + λ·g(δ*; x)``; ``b > 0`` is SEAT-FL."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

import toolbox as tb

from .attack import SEATAttack
from .linearity import linear_residual, reduce_residual

__all__ = ["SEAT", "flood"]


def flood(loss: torch.Tensor, b: float) -> torch.Tensor:
    """Flooding (Ishida et al. 2020): ``|L − b| + b``.  Equals ``L`` for ``L >= b`` and
    ``2b − L`` below it (gradient ascent there); ``b = 0`` returns ``|L|`` (= ``L`` for CE)."""
    return (loss - b).abs() + b


class SEAT(tb.Defense):
    """Stable and Efficient Adversarial Training (SEAT), ``tb.defense("seat", threat=tb.Linf(8/255))``.

    Loss per batch: ``|CE(x+δ*, y) − flood| + flood + lam·g(δ*; x)`` with
    ``g = |CE(x+δ*) − CE(x) − δ*ᵀ∇ₓCE(x)|`` (reduced by ``reduction``) and ``δ*`` from ``attack``.

    Args:
        threat: the ℓ∞ threat model; builds the default SEAT attack (ignored when ``attack=`` is
            given, which carries its own).
        lam: λ ≥ 0 of the training regulariser (paper's best 0.5; code 0.6).
        flood: flood level ``b >= 0`` (0: SEAT; > 0: SEAT-FL; the paper's b is not recoverable).
        attack: any registered attack (default ``tb.attack("seat", threat, lam=attack_lam, loss=,
            reduction=)``).
        attack_lam: λ inside the default attack (default ``lam``).
        loss: the default attack's loss, ``"mm"`` (paper) / ``"mm-prob"`` (code) / ``"ce"``.
        reduction: ``"mean"`` (paper: mean of per-example |residuals|) or ``"batch"`` (code:
            |batch mean|), in the loss and the default attack.
        double_backprop: differentiate the first-order term ``δᵀ∇ₓCE(x)`` w.r.t. the weights too
            (default True: the gradient of Eq. 8 as written).  ``False`` is the official code,
            which detaches it (``.item()``): cheaper, but the objective is then unbounded below
            (raising the clean loss lowers ``g`` with the first-order term frozen), and on MNIST
            at ε = 0.3 with Adam/cyclic 5e-3 it diverged to constant predictions in every run
            we tried (g of the FGSM probe → 10²–10⁴), while ``True`` trained normally.
        share_clean_pass: with the default attack, compute ``CE(x)`` and ``∇ₓCE(x)`` once, in the
            model's training mode, and use them in both the attack and the loss (3 forward passes
            per step instead of the code's 4).  The attack then runs in training mode (batch-norm
            uses batch statistics, as in the official code).  False: the attack runs as a normal
            attack (eval mode) and the loss recomputes the clean pass.

    Logs: ``loss``, ``adv_loss`` (CE at δ*), ``adv_acc``, ``lin_err`` (the batch's g as used in the
    loss; 0 when ``lam = 0`` unless ``log_lin_err``), ``clean_loss``.
    """

    name = "seat"

    def __init__(self, threat: Any = None, *, lam: float = 0.5, flood: float = 0.0, attack: tb.Attack | None = None,
                 attack_lam: float | None = None, loss: str = "mm", reduction: str = "mean",
                 double_backprop: bool = True, share_clean_pass: bool = True, log_lin_err: bool = False,
                 seed: int | None = None) -> None:
        for name, v in (("lam", lam), ("flood", flood)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0:
                raise ValueError(f"{name} must be a number >= 0, got {v!r}")
        if reduction not in ("mean", "batch"):
            raise ValueError(f"reduction must be 'mean' or 'batch', got {reduction!r}")
        self.default_attack = attack is None
        if attack is None:
            if threat is None:
                raise ValueError("defense 'seat' needs threat= (e.g. tb.Linf(8/255)) or attack=")
            attack = SEATAttack(threat, lam if attack_lam is None else attack_lam, loss=loss,
                                reduction=reduction, seed=seed)
        super().__init__(attack)
        self.lam, self.flood = float(lam), float(flood)
        self.reduction = reduction
        self.double_backprop = bool(double_backprop)
        self.share_clean_pass = bool(share_clean_pass)
        self.log_lin_err = bool(log_lin_err)

    def loss(self, model, batch):
        x, y = batch.x, batch.y
        atk = self.adversary(batch)
        need_g = self.lam > 0 or self.log_lin_err
        lc = gc = None
        # the Trainer's generator drives the random start unless the attack has its own seed
        gen = (batch.extra or {}).get("generator") if atk.seed is None else None
        if self.share_clean_pass and isinstance(atk, SEATAttack) and self.default_attack and atk.lam > 0:
            # one clean pass (training mode, graph kept for the weights) serves the attack and the loss
            lc, gc = self._clean(model, x, y)
            if gen is None:
                gen = atk.make_generator(x.device)
            with tb.attack_mode(model, "keep"):  # frozen weights: the attack's forward keeps no weight graph
                x_adv = atk.step(model, x, y, generator=gen, clean=(lc.detach(), gc.detach())).x_adv
        else:
            x_adv = atk(model, x, y, index=batch.index, check=False, generator=gen)
            if need_g:
                lc, gc = self._clean(model, x, y)
        logits = model(x_adv)
        la = F.cross_entropy(logits, y, reduction="none")
        adv = la.mean()
        total = flood(adv, self.flood)
        logs: dict[str, Any] = {"adv_loss": adv.detach(), "adv_acc": (logits.detach().argmax(1) == y).float().mean()}
        if need_g:
            grad = gc if self.double_backprop else gc.detach()
            g = reduce_residual(linear_residual(la, lc, x_adv - x, grad), self.reduction)
            if self.lam > 0:
                total = total + self.lam * g
            logs["lin_err"] = g.detach()
            logs["clean_loss"] = lc.detach().mean()
        logs["loss"] = total.detach()
        return total, logs

    def _clean(self, model, x, y):
        """Clean CE ``(N,)`` with its graph, and its input gradient (with a graph under
        ``double_backprop``)."""
        xc = x.detach().requires_grad_(True)
        lc = F.cross_entropy(model(xc), y, reduction="none")
        (gc,) = torch.autograd.grad(lc.sum(), xc, retain_graph=True, create_graph=self.double_backprop)
        return lc, gc

    def spec(self) -> dict[str, Any]:
        out = super().spec()
        out.update(lam=self.lam, flood=self.flood, reduction=self.reduction,
                   double_backprop=self.double_backprop, share_clean_pass=self.share_clean_pass)
        return out

    def __repr__(self) -> str:
        return (f"SEAT(lam={self.lam}, flood={self.flood}, reduction={self.reduction!r}, "
                f"attack={self.attack!r})")

