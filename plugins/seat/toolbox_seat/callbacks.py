"""Catastrophic-overfitting diagnostics: the local-linearity error on a fixed validation batch."""

from __future__ import annotations

import math
from typing import Any

import torch

import toolbox as tb
from toolbox.train.callbacks import Callback

from .attack import clean_loss_and_grad, max_linearity_error
from .linearity import linear_residual, reduce_residual

__all__ = ["LinearityMonitor", "measure_linearity"]


def measure_linearity(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, probe: tb.Attack,
                      pgd: tb.Attack | None = None, *, seed: int = 0, max_steps: int = 10,
                      max_restarts: int = 1) -> dict[str, float]:
    """Linearity errors and accuracies of ``model`` (eval mode) on one batch.

    ``x`` ``(N, ...)`` in [0, 1], ``y`` ``(N,)``; ``probe``: the attack whose perturbation
    ``δ = probe(x) − x`` is measured (FGSM: Eq. 4's single-step δ); ``pgd``: the multi-step attack
    for robust accuracy (skipped when None).  ``max_steps`` / ``max_restarts``: the ascent on g
    of :func:`~toolbox_seat.max_linearity_error` for the maximised measure (the probe's
    ``threat.eps`` is the radius; ``max_restarts=0``: the maximum over the probe and PGD points only).

    Returns (errors in nats, means over the batch of per-example values unless said otherwise):

    - ``lin_err``: g of the probe's δ (mean of per-example |r|);
    - ``lin_err_batch``: |batch mean of r| for the probe's δ (the official code's form);
    - ``lin_err_pgd``: g at the PGD point (only with ``pgd``);
    - ``lin_err_max``: γ, the per-example maximum of g over the ball (probe point, PGD point and
      the ascent), the measure that sees catastrophic overfitting in any direction (only for an
      ℓ∞ probe);
    - ``lin_clean_acc``, ``lin_probe_acc``, ``lin_pgd_acc``: fractions (adversarial ones count
      an example only if it is also classified correctly when clean).
    """
    device = x.device
    out: dict[str, float] = {}
    with tb.attack_mode(model, "eval"):
        lc, gc = clean_loss_and_grad(model, x, y)
        g = torch.Generator(device=device)
        g.manual_seed(seed)
        x_p = probe(model, x, y, generator=g, check=False)
        with torch.no_grad():
            logits_c, logits_p = model(x), model(x_p)
            lp = torch.nn.functional.cross_entropy(logits_p, y, reduction="none")
            r = linear_residual(lp, lc, x_p - x, gc)
        out["lin_err"] = float(reduce_residual(r, "mean"))
        out["lin_err_batch"] = float(reduce_residual(r, "batch"))
        clean = logits_c.argmax(1) == y
        out["lin_clean_acc"] = clean.float().mean().item()
        out["lin_probe_acc"] = ((logits_p.argmax(1) == y) & clean).float().mean().item()
        starts = [x_p]
        if pgd is not None:
            g.manual_seed(seed + 1)
            x_a = pgd(model, x, y, generator=g, check=False)
            with torch.no_grad():
                logits_a = model(x_a)
                la = torch.nn.functional.cross_entropy(logits_a, y, reduction="none")
                out["lin_err_pgd"] = float(reduce_residual(linear_residual(la, lc, x_a - x, gc), "mean"))
                out["lin_pgd_acc"] = ((logits_a.argmax(1) == y) & clean).float().mean().item()
            starts.append(x_a)
        if isinstance(probe.threat, tb.Linf):   # the ascent is an ℓ∞ one (vertices, sign steps)
            g.manual_seed(seed + 2)
            gam, _ = max_linearity_error(model, x, y, probe.threat.eps, steps=max_steps, restarts=max_restarts,
                                         starts=starts, generator=g, clean=(lc, gc))
            out["lin_err_max"] = float(gam.mean())
    return out


def _threat_of(trainer: Any) -> Any:
    d = getattr(trainer, "defense", None)
    atk = getattr(d, "attack", None)
    if atk is None:
        raise ValueError("LinearityMonitor needs threat= when the defense has no attack")
    return atk.threat


class LinearityMonitor(Callback):
    """Logs SEAT's central diagnostic: the local-linearity error ``g`` on a fixed held batch,
    beside PGD accuracy on the same batch (registered callback ``"linearity-monitor"``).

    Two forms of ``g`` are logged: ``lin_err``, g of the FGSM perturbation (Eq. 4's single-step
    δ), and ``lin_err_max``, its maximum over the ε-ball per example (γ: the FGSM point, the PGD
    point and a short ascent on g; :func:`~toolbox_seat.max_linearity_error`).  Catastrophic
    overfitting of FGSM training shows as ``g`` jumping by orders of magnitude while PGD accuracy
    collapses; SEAT keeps ``g`` small.  A collapse can leave the loss nearly linear along the FGSM
    direction while the model is broken in others (it happened on MNIST: a 2.5x gap in
    ``lin_err``), so ``lin_err_max`` is the one to compare across methods.  At fit start the monitor draws ``n`` examples
    (with ``seed``) from the validation data (else the training data) and measures at fit start
    and at the end of every epoch, and with ``every=k`` also after every ``k``-th optimizer step
    (global step a multiple of ``k``), in eval mode with fixed
    seeds: see :func:`measure_linearity`.  The epoch's history row gets the last measurement's
    ``lin_err``, ``lin_err_batch``, ``lin_err_pgd``, ``lin_err_max``, ``lin_clean_acc``,
    ``lin_probe_acc`` and ``lin_pgd_acc``;
    :attr:`records` holds every measurement with its ``step`` and ``epoch`` (fractional).

    Args:
        n: examples in the held batch.
        threat: threat model of the probes (default the defense's attack's).
        probe: the attack whose perturbation is measured (default FGSM, zero init, step ε).
        pgd: the robust-accuracy attack (default PGD-10, step ε/4, one random start);
            ``False`` skips it.
        every: ``"epoch"`` or a positive number of optimizer steps.
        split: ``"val"`` (validation data when given, else training data) or ``"train"``.
        seed: for drawing the batch and the attacks' random starts.
        max_steps, max_restarts: the ascent on g for ``lin_err_max`` (default 10 steps of ε/4
            from one random vertex; ``max_restarts=0``: the maximum over the FGSM and PGD
            points only).
    """

    order = 5

    def __init__(self, n: int = 200, *, threat: Any = None, probe: tb.Attack | None = None,
                 pgd: tb.Attack | bool | None = None, every: str | int = "epoch", split: str = "val",
                 seed: int = 0, max_steps: int = 10, max_restarts: int = 1) -> None:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive int, got {n!r}")
        if every != "epoch" and (isinstance(every, bool) or not isinstance(every, int) or every < 1):
            raise ValueError(f"every must be 'epoch' or a positive number of steps, got {every!r}")
        if split not in ("val", "train"):
            raise ValueError(f"split must be 'val' or 'train', got {split!r}")
        for name, a in (("probe", probe), ("pgd", pgd)):
            if a is not None and not isinstance(a, (tb.Attack, bool)):
                raise ValueError(f"{name} must be a toolbox Attack or None, got {a!r}")
        if probe is False:
            raise ValueError("probe must be an Attack or None")
        self.n, self.threat, self.probe, self.pgd = n, threat, probe, pgd
        for name, v in (("max_steps", max_steps), ("max_restarts", max_restarts)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"{name} must be an int >= 0, got {v!r}")
        self.every, self.split, self.seed = every, split, int(seed)
        self.max_steps, self.max_restarts = max_steps, max_restarts
        self.records: list[dict[str, float]] = []
        self._last: dict[str, float] = {}
        self._last_step = 0

    def on_fit_start(self, trainer):
        data = trainer.val_data if (self.split == "val" and trainer.val_data is not None) else trainer.train_data
        if data is None:
            raise ValueError("LinearityMonitor needs training or validation data")
        gen = torch.Generator()
        gen.manual_seed(self.seed)
        idx = torch.randperm(len(data), generator=gen)[: self.n].tolist()
        items = [data[i] for i in idx]
        self._x = torch.stack([torch.as_tensor(it[0]) for it in items]).float().to(trainer.device)
        self._y = torch.as_tensor([int(it[1]) for it in items], dtype=torch.int64, device=trainer.device)
        threat = self.threat if self.threat is not None else _threat_of(trainer)
        threat = tb.threat(threat) if isinstance(threat, str) else threat
        self._probe = self.probe if self.probe is not None else tb.attack("fgsm", threat=threat)
        if self.pgd is None or self.pgd is True:
            eps = threat.eps
            self._pgd = tb.attack("pgd", threat=threat, steps=10, step_size=float(eps) / 4)
        else:
            self._pgd = self.pgd or None
        if not self.records:
            self.measure(trainer)

    def measure(self, trainer) -> dict[str, float]:
        """Measure now; appends to :attr:`records` and returns the measurement."""
        model = getattr(trainer.model, "module", trainer.model)
        m = measure_linearity(model, self._x, self._y, self._probe, self._pgd, seed=self.seed,
                              max_steps=self.max_steps, max_restarts=self.max_restarts)
        step = int(getattr(trainer, "step", 0))
        spe = max(int(getattr(trainer, "steps_per_epoch", 1) or 1), 1)
        rec = {"step": step, "epoch": step / spe, **m}
        self.records.append(rec)
        self._last, self._last_step = m, step
        return m

    def on_batch_end(self, trainer, batch, logs):
        step = int(trainer.step)
        if self.every != "epoch" and step % self.every == 0 and step != self._last_step:
            self.measure(trainer)

    def on_epoch_end(self, trainer, epoch, logs):
        if self.every == "epoch" or int(trainer.step) != self._last_step:
            self.measure(trainer)
        for k in ("lin_err", "lin_err_batch", "lin_err_pgd", "lin_err_max", "lin_clean_acc", "lin_probe_acc",
                  "lin_pgd_acc"):
            logs[k] = self._last.get(k, math.nan)

    def dataframe(self):
        """Every measurement as a DataFrame (columns ``step``, ``epoch``, ``lin_*``)."""
        import pandas as pd

        return pd.DataFrame(self.records)

    def state_dict(self) -> dict:
        return {"records": [dict(r) for r in self.records], "last_step": self._last_step}

    def load_state_dict(self, state: dict) -> None:
        self.records = [dict(r) for r in state["records"]]
        self._last_step = int(state["last_step"])
        self._last = {k: v for k, v in self.records[-1].items() if k.startswith("lin_")} if self.records else {}

    def __repr__(self) -> str:
        return f"LinearityMonitor(n={self.n}, every={self.every!r}, split={self.split!r})"
