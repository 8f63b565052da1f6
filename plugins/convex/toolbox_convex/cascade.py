"""Robust cascades (Wong et al. 2018, thesis §3.4.7, Algorithm 4).

A cascade is a list of models trained one after the other: stage ``k`` is trained (with the
robust loss) only on the training examples that stages ``< k`` do not certify.  At test time an
input goes to the first stage that certifies it *with respect to that stage's own prediction*
(every margin bound ``J(e_yhat - e_j) > 0``); that stage's prediction is the cascade's output,
and the cascade is certified on the example when that prediction is also the label.  An input
no stage certifies gets the last stage's prediction and no certificate.

This module follows the scoring of the reference code (each test example is scored at the first
stage that certifies it), with stages certified on their own prediction, so the rule needs no
label.  Algorithm 4's extra step "no certificate when ``f_i(x) != f_1(x)``" is not applied (the
reference evaluation does not apply it either).

**Not a certificate of the composite classifier.**  A "certified" example is certified by
one stage: that stage predicts the label everywhere in the ball.  But a perturbed input may
be routed differently: stage 0 predicts ``y`` at ``x'`` yet need not certify the ball around
``x'``, so ``x'`` falls through to a later stage that may predict something else.  On the
digits test (``tests/test_convex_cascade.py``) PGD against the composite rule breaks about
half of the cascade-certified examples (66 of 123; the thesis leaves this open).
So :meth:`Cascade.certify` is the paper's *cascade score*, not a ``Certifier`` (the
``dual-network`` certifier refuses a ``Cascade``), and ``tb.evaluate`` on a ``Cascade`` should
pair attacks with ``Cascade.certify`` only knowingly.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

import toolbox as tb
from toolbox.certify import Certificate

from .defense import ConvexDefense
from .dual import margin_lower_bounds, threat_norm


def self_certified(model: nn.Module, x: torch.Tensor, threat: Any, *, batch_size: int = 64,
                   projections: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Predictions ``(N,)`` of ``model`` on ``x`` ``(N, ...)`` and whether the dual network
    certifies each one over ``threat``'s ball (margins against the predicted class, so no
    label is needed): ``(pred, certified)``, both ``(N,)``.  ``projections=r`` uses
    random-projection bounds (an estimate, not a certificate; global RNG)."""
    norm = threat_norm(threat)
    eps = threat.eps
    preds, flags = [], []
    with torch.no_grad():
        for s in range(0, x.shape[0], batch_size):
            xb = x[s:s + batch_size]
            eb = eps[s:s + batch_size] if isinstance(eps, torch.Tensor) and eps.dim() else eps
            pred = model(xb).argmax(1)
            m = margin_lower_bounds(model, xb, pred, eb, norm, projections=projections)
            flags.append(m.scatter(1, pred.view(-1, 1), float("inf")).min(1).values > 0)
            preds.append(pred)
    if not preds:
        empty = torch.zeros(0, dtype=torch.long, device=x.device)
        return empty, empty.bool()
    return torch.cat(preds), torch.cat(flags)


class Cascade(nn.Module):
    """A robust cascade of ``stages`` (trained models), usable as one model.

    ``forward(x)`` returns the logits of the stage that handles each example (the first that
    certifies its own prediction, else the last), so attacks and ``tb.evaluate`` run on the
    composite decision rule.  :meth:`certify` is the paper's cascade score (module docstring:
    per stage, not a certificate of the composite rule).

    Args:
        stages: the models, in order (at least one).
        threat: the ``tb.Linf`` / ``tb.L2`` threat the routing certificates use.
        batch_size: examples per dual-network pass.
    """

    def __init__(self, stages: Sequence[nn.Module], threat: Any, *, batch_size: int = 64) -> None:
        super().__init__()
        if len(stages) < 1 or not all(isinstance(m, nn.Module) for m in stages):
            raise ValueError("stages must be a non-empty sequence of nn.Module")
        threat_norm(threat)
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.stages = nn.ModuleList(stages)
        self.threat = threat
        self.batch_size = int(batch_size)

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(pred, stage)``, each ``(N,)``: the cascade's prediction and the index of the stage
        that certifies it (``-1`` when none does; ``pred`` is then the last stage's)."""
        n = x.shape[0]
        stage = torch.full((n,), -1, dtype=torch.long, device=x.device)
        pred = torch.zeros(n, dtype=torch.long, device=x.device)
        todo = torch.arange(n, device=x.device)
        for k, model in enumerate(self.stages):
            p, ok = self_certified(model, x[todo], self.threat, batch_size=self.batch_size)
            pred[todo] = p                      # the last stage's prediction stays for the rest
            stage[todo[ok]] = k
            todo = todo[~ok]                    # certified examples never reach later stages
            if todo.numel() == 0:
                break
        return pred, stage

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, C)`` of the stage that handles each example (differentiable in ``x``
        through that stage; the routing itself is piecewise constant)."""
        with torch.no_grad():
            _, stage = self.route(x.detach())
        last = len(self.stages) - 1
        stage = torch.where(stage < 0, torch.full_like(stage, last), stage)
        out = None
        for k, model in enumerate(self.stages):
            sel = stage == k
            if not bool(sel.any()):
                continue
            z = model(x[sel])
            if out is None:
                out = z.new_zeros(x.shape[0], z.shape[1])
            out = out.index_put((sel.nonzero().flatten(),), z)
        assert out is not None
        return out

    def certify(self, x: torch.Tensor, y: torch.Tensor) -> Certificate:
        """The paper's cascade score: ``certified[i]`` iff some stage certifies ``x[i]`` and the
        first such stage predicts ``y[i]`` (that stage is then robust on the ball; the
        composite rule need not be, see the module docstring).  ``extra``: ``stage`` ``(N,)``
        (-1: none), ``pred``."""
        if y.shape != (x.shape[0],):
            raise ValueError(f"y must have shape ({x.shape[0]},), got {tuple(y.shape)}")
        pred, stage = self.route(x)
        return Certificate(certified=(stage >= 0) & (pred == y),
                           extra={"stage": stage, "pred": pred})

    def stage_table(self, x: torch.Tensor, y: torch.Tensor) -> list[dict[str, Any]]:
        """Per stage ``k``: ``examples`` routed to it (first certifier), ``correct`` among them,
        and the cascade's certified and clean accuracy using stages ``0..k`` only."""
        pred, stage = self.route(x)
        rows = []
        for k in range(len(self.stages)):
            sub = Cascade(list(self.stages[:k + 1]), self.threat, batch_size=self.batch_size)
            p_k, s_k = sub.route(x)
            rows.append({"stage": k, "examples": int((stage == k).sum()),
                         "correct": int(((stage == k) & (pred == y)).sum()),
                         "certified_acc": float(((s_k >= 0) & (p_k == y)).float().mean()),
                         "clean_acc": float((p_k == y).float().mean())})
        return rows


def train_cascade(make_model: Callable[[int], nn.Module], train: tb.data.Dataset, threat: Any, *,
                  stages: int = 2, epochs: int = 1, optimizer: Callable[[Any], Any] | None = None,
                  defense_kwargs: dict[str, Any] | None = None,
                  trainer_kwargs: dict[str, Any] | None = None, min_examples: int = 1,
                  cert_batch_size: int = 256, select_projections: int | None | str = "defense",
                  device: str | torch.device = "cpu") -> tuple[Cascade, list[dict[str, Any]]]:
    """Train a robust cascade (Algorithm 4): stage ``k`` on the examples stages ``< k`` leave
    uncertified.

    Args:
        make_model: ``stage index -> fresh nn.Module``.
        train: the training :class:`toolbox.data.Dataset`.
        threat: ``tb.Linf`` / ``tb.L2`` (scalar eps), used for training and for the routing.
        stages: the largest number of stages; training stops early when fewer than
            ``min_examples`` uncertified examples remain.
        epochs: epochs per stage.
        optimizer: ``params -> torch optimizer`` (default Adam, lr 1e-3, the thesis's MNIST
            setting).
        defense_kwargs: extra arguments of :class:`ConvexDefense` (e.g. ``projections``).
        trainer_kwargs: extra arguments of :class:`toolbox.Trainer` (``batch_size``,
            ``eps_schedule``, ``seed``...).
        cert_batch_size: examples per dual pass when selecting the next stage's data.
        select_projections: bounds used to select the next stage's training data: ``None``
            exact, an int ``r`` projections, ``"defense"`` (default) the same as training
            (``defense_kwargs["projections"]``, exact when absent).  Selection needs no
            soundness, and exact bounds on a whole training set are slow for conv nets; test
            time routing (:class:`Cascade`) is always exact.
        device: where training and certification run.
    Returns:
        ``(cascade, log)``: the :class:`Cascade` (eval mode) and one dict per trained stage
        with ``n_train`` (examples it trained on), ``indices`` (their dataset indices),
        ``n_certified`` (of those, certified on its
        own prediction), ``n_certified_correct`` and the Trainer's ``history``.
    """
    if int(stages) < 1 or int(epochs) < 1 or int(min_examples) < 1:
        raise ValueError(f"stages, epochs and min_examples must be >= 1, got {stages}, {epochs}, "
                         f"{min_examples}")
    threat_norm(threat)
    if select_projections == "defense":
        select_projections = (defense_kwargs or {}).get("projections")
    elif select_projections is not None and (isinstance(select_projections, (bool, str))
                                             or int(select_projections) < 1):
        raise ValueError(f"select_projections must be None, an int >= 1 or 'defense', got "
                         f"{select_projections!r}")
    data = train
    models: list[nn.Module] = []
    log: list[dict[str, Any]] = []
    for k in range(int(stages)):
        if len(data) < int(min_examples):
            break
        model = make_model(k)
        opt = optimizer(model.parameters()) if optimizer else torch.optim.Adam(model.parameters(), lr=1e-3)
        defense = ConvexDefense(threat=threat, **(defense_kwargs or {}))
        trainer = tb.Trainer(model, defense, optimizer=opt, device=device, **(trainer_kwargs or {}))
        history = trainer.fit(data, epochs=int(epochs))
        model.eval()
        x, y, _ = data.tensors(device)
        pred, ok = self_certified(model, x, threat, batch_size=cert_batch_size,
                                  projections=select_projections)
        models.append(model)
        log.append({"stage": k, "n_train": len(data), "indices": data.indices.clone(),
                    "n_certified": int(ok.sum()),
                    "n_certified_correct": int((ok & (pred == y)).sum()), "history": history})
        data = tb.data.subset(data, (~ok).nonzero().flatten().cpu())
    return Cascade(models, threat).eval(), log
