"""The ATLAS defense (paper Eq. 2/12):

``CE(f(x'), y) + α_t·‖J(x')‖²_F + β_t·KL(p(x') ‖ p(x))`` with ``x'`` from any attack (default
FGSM with a uniform random start, step 1.25 ε), ``J`` the logit Jacobian at the adversary, and
``α_t = α·ε_t/ε``, ``β_t = β·ε_t/ε`` during an ε warm-up (the Trainer's ``eps_schedule``).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

import toolbox as tb
from toolbox.defense import batch_ce

from .jacobian import jacobian_norm_sq

__all__ = ["ATLAS", "atlas_loss", "fgsm_rs_attack", "kl_adv_clean", "VARIANTS"]

#: ``variant`` -> which terms are on: ATLAS (both), ATLAS-l (β = 0), ATLAS-g (α = 0)
VARIANTS = {"atlas": (True, True), "atlas-l": (True, False), "atlas-g": (False, True)}


def kl_adv_clean(logits_adv: torch.Tensor, logits_clean: torch.Tensor) -> torch.Tensor:
    """Per-example ``KL(p(x') ‖ p(x)) = Σ_k p_k(x')·(log p_k(x') − log p_k(x))``, ``(N,)``.

    ``logits_adv``, ``logits_clean``: ``(N, C)``.  Note the direction: the adversary's
    distribution comes first (the reverse of TRADES' regulariser).  Gradients flow through both.
    """
    if logits_adv.shape != logits_clean.shape or logits_adv.dim() != 2:
        raise ValueError(f"logits_adv and logits_clean must both be (N, C), got {tuple(logits_adv.shape)} "
                         f"and {tuple(logits_clean.shape)}")
    la, lc = F.log_softmax(logits_adv, dim=1), F.log_softmax(logits_clean, dim=1)
    return (la.exp() * (la - lc)).sum(1)


def fgsm_rs_attack(threat: Any, step_size: float | None = None, *, clamp_start: bool = False,
                   mode: str = "keep") -> tb.Attack:
    """The paper's one-step adversary (Wong et al. 2020's FGSM-RS): FGSM on CE from a uniform
    start in the ε-ball, step ``step_size`` (default ``1.25 ε``), output in ball ∩ [0, 1].
    ``clamp_start=False`` leaves the start unclamped for the gradient pass (fast_adversarial's
    MNIST code); ``mode="keep"`` attacks in the model's training mode, as that code does."""
    thr = tb.threat(threat) if isinstance(threat, str) else threat
    eps = _scalar_eps(thr)
    return tb.attack("fgsm", threat=thr, step_size=1.25 * eps if step_size is None else step_size,
                     random_start=True, clamp_start=clamp_start, mode=mode)


def _scalar_eps(threat: Any) -> float:
    eps = getattr(threat, "eps", None)
    if eps is None or isinstance(eps, torch.Tensor):
        raise ValueError(f"ATLAS needs a threat model with a scalar eps, got {threat!r}")
    return float(eps)


def _weight(v: Any, name: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0:
        raise ValueError(f"{name} must be a number >= 0, got {v!r}")
    return float(v)


def atlas_loss(model: torch.nn.Module, x: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor, *,
               alpha: float, beta: float, n_proj: int = 1, exact: bool = False, half: bool = False,
               generator: torch.Generator | None = None, batch: tb.Batch | None = None,
               log_jacobian: bool = False) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """ATLAS loss on a given adversary: ``CE(f(x'),y) + alpha·mean‖J(x')‖²_F + beta·mean KL(p(x')‖p(x))``.

    Args:
        x, x_adv: ``(N, ...)`` clean and adversarial inputs in [0, 1] (``x_adv`` is detached here).
        y: ``(N,)`` labels.
        alpha, beta: weights (>= 0); a zero weight skips its term (no extra passes).
        n_proj, exact, half, generator: the Jacobian estimator's options (:func:`jacobian_norm_sq`).
        batch: when given, CE is mixup-aware (:func:`toolbox.defense.batch_ce`).
        log_jacobian: measure ``‖J(x')‖²_F`` (detached) even when ``alpha = 0``.

    Returns ``(loss, parts)``: ``parts`` holds detached ``ce``, ``jac`` (if computed), ``kl``
    (if computed) and ``logits_adv``.
    """
    alpha, beta = _weight(alpha, "alpha"), _weight(beta, "beta")
    need_jac = alpha > 0 or log_jacobian
    xa = x_adv.detach().requires_grad_(need_jac)
    z_adv = model(xa)
    ce = batch_ce(z_adv, batch) if batch is not None else F.cross_entropy(z_adv, y)
    loss = ce
    parts: dict[str, torch.Tensor] = {"ce": ce.detach(), "logits_adv": z_adv.detach()}
    if need_jac:
        jac = jacobian_norm_sq(xa, z_adv, n_proj=n_proj, exact=exact, create_graph=alpha > 0,
                               generator=generator, half=half).mean()
        if alpha > 0:
            loss = loss + alpha * jac
        parts["jac"] = jac.detach()
    if beta > 0:
        kl = kl_adv_clean(z_adv, model(x)).mean()
        loss = loss + beta * kl
        parts["kl"] = kl.detach()
    return loss, parts


class ATLAS(tb.Defense):
    """Adversarial Training via LocAl Stability, ``tb.defense("atlas", threat=tb.Linf(0.3))``.

    Loss per batch: ``CE(f(x'), y) + α_t·‖J(x')‖²_F + β_t·KL(p(x') ‖ p(x))`` (batch means), the
    Jacobian term by random projections with double backprop.

    Args:
        threat: threat model of the default adversary (one-step FGSM-RS, step ``1.25 ε``).
        alpha: weight α of the Jacobian term (paper, one-step: MNIST 1e-5, CIFAR 2e-4;
            multi-step: 5e-6 / 1e-4).
        beta: weight β of the KL term (one-step: MNIST 0.3, CIFAR 5; multi-step 0.2 / 5).
        attack: any registered attack instead (``"pgd"`` with ``threat=`` for multi-step ATLAS;
            a name, a dict spec or an Attack).
        step_size: the default attack's step (default ``1.25 ε``); not with ``attack=``.
        variant: ``"atlas"`` (both terms), ``"atlas-l"`` (β = 0, Eq. 18) or ``"atlas-g"``
            (α = 0, Eq. 19).
        eps_scale: during an ε warm-up (``batch.eps`` below the attack's ε, from the Trainer's
            ``eps_schedule``) use ``α·ε_t/ε`` and ``β·ε_t/ε``; at ``ε_t = 0`` the adversary is
            ``x`` and the loss is ``CE(x)``.
        n_proj: random projections per step (paper 1); ``exact=True``: one-hot basis (C passes).
        half: the 1/2 factor of Hoffman et al.'s code (only rescales α; off by default).
        log_jacobian: log the Jacobian estimate even when α_t = 0 (costs one backward pass).

    Logs: ``loss``, ``adv_loss`` (CE at x'), ``adv_acc``, ``jac`` (batch-mean ‖J(x')‖²_F estimate),
    ``kl``, ``alpha_t``, ``beta_t``, ``eps_t``.
    """

    name = "atlas"

    def __init__(self, threat: Any = None, alpha: float = 1e-5, beta: float = 0.3, *, attack: Any = None,
                 step_size: float | None = None, variant: str = "atlas", eps_scale: bool = True,
                 n_proj: int = 1, exact: bool = False, half: bool = False, log_jacobian: bool = False) -> None:
        self.alpha, self.beta = _weight(alpha, "alpha"), _weight(beta, "beta")
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {sorted(VARIANTS)}, got {variant!r}")
        if isinstance(n_proj, bool) or not isinstance(n_proj, int) or n_proj < 1:
            raise ValueError(f"n_proj must be an int >= 1, got {n_proj!r}")
        if attack is None:
            if threat is None:
                raise ValueError("defense 'atlas' needs threat= (e.g. tb.Linf(0.3)) or attack=")
            attack = fgsm_rs_attack(threat, step_size)
        else:
            if step_size is not None:
                raise ValueError("defense 'atlas': give either attack= or step_size=, not both")
            if isinstance(attack, str):
                attack = tb.attack(attack, threat=threat)
            elif isinstance(attack, dict):
                spec = dict(attack)
                if "name" not in spec:
                    raise ValueError(f"attack: a dict spec needs a 'name' key, got {attack!r}")
                attack = tb.attack(spec.pop("name"), threat=spec.pop("threat", threat), **spec)
        super().__init__(attack)
        self.eps = _scalar_eps(self.attack.threat)
        self.variant = variant
        self.eps_scale, self.n_proj, self.exact = bool(eps_scale), n_proj, bool(exact)
        self.half, self.log_jacobian = bool(half), bool(log_jacobian)

    def weights(self, eps_t: float | None) -> tuple[float, float]:
        """``(α_t, β_t)`` at radius ``eps_t`` (``None``: the full ε), after the variant switch."""
        use_a, use_b = VARIANTS[self.variant]
        s = 1.0
        if self.eps_scale and eps_t is not None and self.eps > 0:
            s = min(max(float(eps_t) / self.eps, 0.0), 1.0)
        return (self.alpha * s if use_a else 0.0), (self.beta * s if use_b else 0.0)

    def loss(self, model, batch):
        x, y = batch.x, batch.y
        eps_t = self.eps if batch.eps is None else float(batch.eps)
        a_t, b_t = self.weights(eps_t)
        gen = (batch.extra or {}).get("generator")
        if eps_t <= 0:
            x_adv = x
        else:
            x_adv = self.adversary(batch)(model, x, y, index=batch.index, generator=gen, check=False)
        loss, parts = atlas_loss(model, x, x_adv, y, alpha=a_t, beta=b_t, n_proj=self.n_proj, exact=self.exact,
                                 half=self.half, generator=gen, batch=batch, log_jacobian=self.log_jacobian)
        logs: dict[str, Any] = {"loss": loss.detach(), "adv_loss": parts["ce"],
                                "adv_acc": (parts["logits_adv"].argmax(1) == y).float().mean(),
                                "alpha_t": a_t, "beta_t": b_t, "eps_t": eps_t}
        for k in ("jac", "kl"):
            if k in parts:
                logs[k] = parts[k]
        return loss, logs

    def spec(self) -> dict[str, Any]:
        out = super().spec()
        out.update(alpha=self.alpha, beta=self.beta, variant=self.variant, eps_scale=self.eps_scale,
                   n_proj=self.n_proj, exact=self.exact, half=self.half)
        return out

    def __repr__(self) -> str:
        return (f"ATLAS(alpha={self.alpha}, beta={self.beta}, variant={self.variant!r}, n_proj={self.n_proj}, "
                f"attack={self.attack!r})")
