"""The Attack interface, the one mode/grad context manager, and the one iterative loop that
every gradient attack shares."""

from __future__ import annotations

import contextlib
import copy
import inspect
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from .._checks import check_choice, check_images, check_labels, check_logits, check_positive
from ..losses import LossFn
from ..threat import ThreatModel, _col, as_threat


@contextlib.contextmanager
def attack_mode(model: nn.Module, mode: str = "eval") -> Iterator[nn.Module]:
    """Freeze parameter gradients and (``mode="eval"``) switch to eval mode for the duration;
    restore every module's ``training`` flag, every parameter's ``requires_grad`` and leave
    ``.grad`` exactly as found, also when the body raises.

    ``mode="keep"`` leaves train/eval mode alone (for training-time attacks whose paper
    computes the adversary with batch-norm in train mode).
    """
    check_choice(mode, "mode", ("eval", "keep"))
    modes = [(m, m.training) for m in model.modules()]
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    grads = [p.grad for p in params]
    try:
        if mode == "eval":
            model.eval()
        for p in params:
            p.requires_grad_(False)
        yield model
    finally:
        for m, t in modes:
            m.training = t
        for p, f, g in zip(params, flags, grads, strict=True):
            p.requires_grad_(f)
            p.grad = g


class Attack:
    """Base class: ``x_adv = attack(model, x, y)``.

    ``x`` is ``(N, ...)`` in [0, 1], ``y`` ``(N,)`` integer labels; the result has the same
    shape, dtype and device as ``x`` and lies in ``threat``'s ball ∩ [0, 1].  Subclasses
    implement :meth:`perturb`; ``__call__`` checks the arguments and wraps the call in
    :func:`attack_mode`.

    Options shared by all attacks: ``seed`` (int; each call draws its randomness from a
    generator seeded with it, so calls are reproducible) and ``mode`` (``"eval"`` or
    ``"keep"``, see :func:`attack_mode`).
    """

    name: str = "attack"
    #: whether the attack reads gradients (False for score/decision-based attacks); used by
    #: the evaluation's "black-box beat white-box" sanity flag
    white_box: bool = True
    #: whether the attack accepts ``index=`` and keeps per-example state
    stateful: bool = False

    def __init__(self, threat: ThreatModel, *, seed: int | None = None, mode: str = "eval") -> None:
        self.threat = as_threat(threat)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ValueError(f"seed must be an int or None, got {seed!r}")
        self.seed = seed
        self.mode = check_choice(mode, "mode", ("eval", "keep"))

    # -- public call -------------------------------------------------------------------------
    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor | None = None, *,
                 index: torch.Tensor | None = None, generator: torch.Generator | None = None,
                 target: torch.Tensor | None = None, check: bool = True) -> torch.Tensor:
        """Attack a batch ``x`` ``(N, ...)`` in [0, 1] with labels ``y`` ``(N,)`` (int64).

        ``y=None`` uses the model's predictions as labels.  ``index`` (dataset indices
        ``(N,)``) is forwarded to stateful attacks.  ``generator`` overrides the attack's own
        seeded generator for this call.  ``target`` ``(N,)`` gives the target classes of a
        targeted attack (``targeted=True``) instead of its ``target_rule``.  ``check=False``
        skips the input validation (the Trainer's hot path).  Returns ``x_adv`` with the shape,
        dtype and device of ``x``, inside the threat model's ball ∩ [0, 1].
        """
        if check:
            check_images(x, "x")
            if isinstance(self.threat.eps, torch.Tensor) and self.threat.eps.shape[0] != x.shape[0]:
                raise ValueError(f"eps is per-example with {self.threat.eps.shape[0]} entries but "
                                 f"x has {x.shape[0]} examples")
            if generator is not None and not isinstance(generator, torch.Generator):
                raise ValueError(f"generator must be a torch.Generator or None, got {generator!r}")
        kw: dict[str, Any] = {}
        if target is not None:
            if not getattr(self, "targeted", False) or "target" not in inspect.signature(self.perturb).parameters:
                raise ValueError(f"target= is only accepted by targeted attacks that take explicit "
                                 f"targets (e.g. pgd/fgsm with targeted=True); {self.name!r} "
                                 f"with these options does not")
            kw["target"] = target
        if x.shape[0] == 0:
            return x.clone()
        gen = generator if generator is not None else self.make_generator(x.device)
        if check or y is None:
            # label checks and predicted labels use the eval-mode model (never train-mode
            # batch-norm, which a one-example batch would break and which would move its stats)
            with attack_mode(model, "eval"), torch.no_grad():
                logits = model(x[:1] if y is not None else x)
            if check:
                check_logits(logits, 1 if y is not None else x.shape[0])
                if y is not None:
                    check_labels(y, x.shape[0], "y", num_classes=logits.shape[1])
                if target is not None:
                    check_labels(target, x.shape[0], "target", num_classes=logits.shape[1])
            if y is None:
                y = logits.argmax(1)
        if target is not None and bool((target == y).any()):
            raise ValueError("target must differ from the label y of every example "
                             f"(found {int((target == y).sum())} equal)")
        kw["generator"] = gen
        if self.stateful:
            kw["index"] = index
        with attack_mode(model, self.mode):
            x_adv = self.perturb(model, x.detach(), y.detach(), **kw)
        return x_adv.detach()

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                generator: torch.Generator | None = None, **kw: Any) -> torch.Tensor:
        raise NotImplementedError

    # -- helpers -----------------------------------------------------------------------------
    def make_generator(self, device: torch.device | str) -> torch.Generator | None:
        if self.seed is None:
            return None
        g = torch.Generator(device=device)
        g.manual_seed(self.seed)
        return g

    def with_eps(self, eps: float | torch.Tensor) -> Attack:
        """A copy attacking at another radius.  Absolute step sizes are scaled by
        ``eps_new / eps_old`` so that the schedule keeps its shape (robustness curves)."""
        new = copy.copy(self)
        old = self.threat.eps
        new.threat = self.threat.with_eps(eps)
        step = getattr(self, "step_size", None)
        if step is not None and not isinstance(old, torch.Tensor) and old > 0 and not isinstance(eps, torch.Tensor):
            new.step_size = step * (float(eps) / old)
        return new

    def spec(self) -> dict[str, Any]:
        """JSON-friendly description (name, threat, hyper-parameters) for reports."""
        out: dict[str, Any] = {"attack": self.name, **self.threat.spec()}
        for k, v in vars(self).items():
            if k in ("threat",) or k.startswith("_"):
                continue
            if isinstance(v, (int, float, str, bool, type(None), tuple)):
                out[k] = v
        return out

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.spec().items() if k != "attack")
        return f"{type(self).__name__}({args})"


# --------------------------------------------------------------------------------------------
# the shared iterative loop
# --------------------------------------------------------------------------------------------
StepRule = Callable[..., torch.Tensor]


class Signed:
    """Default step rule: the threat model's projected steepest-ascent step of fixed size.

    ``step_size`` is a float or per-example ``(N,)`` tensor, or a callable ``t -> size`` (a
    schedule over iterations).
    """

    def __init__(self, threat: ThreatModel, step_size: float | torch.Tensor | Callable[[int], float]):
        self.threat, self.step_size = threat, step_size

    def __call__(self, t: int, x_adv: torch.Tensor, x: torch.Tensor, grad: torch.Tensor,
                 loss: torch.Tensor, loss_fn: Callable[[torch.Tensor], torch.Tensor],
                 generator: torch.Generator | None) -> torch.Tensor:
        size = self.step_size(t) if callable(self.step_size) else self.step_size
        return self.threat.step(x_adv, x, grad, size, loss_fn=loss_fn, generator=generator)

    def select(self, keep: torch.Tensor) -> None:
        """Keep the rows of per-example radii / step sizes whose examples are still active."""
        if isinstance(self.threat.eps, torch.Tensor):
            self.threat = self.threat.with_eps(self.threat.eps[keep])
        if isinstance(self.step_size, torch.Tensor):
            self.step_size = self.step_size[keep]


def iterate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, x_init: torch.Tensor, *,
            steps: int, rule: StepRule, loss: LossFn, success: Callable[[torch.Tensor], torch.Tensor],
            early_stop: bool = False, keep_best: bool = True, stats: bool = True,
            generator: torch.Generator | None = None,
            ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Run ``steps`` gradient-ascent steps of ``rule`` on ``loss(model(x_adv), y)`` from
    ``x_init`` and return ``(x_best, loss_best, succeeded)``, each per example.

    ``x_best`` is, per example, the first iterate that made ``success(logits)`` true (a
    misclassification, or the target reached), otherwise the iterate of highest loss;
    ``loss_best`` ``(N,)`` its loss (``+inf`` once succeeded, so restarts keep it) and
    ``succeeded`` ``(N,)`` bool.  With ``early_stop`` the examples that succeeded stop being
    computed.  ``rule(t, x_adv, x, grad, loss, loss_fn, generator) -> x_next`` makes one step;
    it must keep the iterate inside the threat model.  Costs ``steps`` forward+backward passes
    and one final forward pass.

    ``keep_best=False`` returns the last iterate instead (the first successful one under
    ``early_stop``) and skips the final forward pass: Madry-style training adversaries.
    ``y`` may carry extra columns (``(N, k)``, e.g. true and target label): rows follow the
    examples and ``loss``/``success`` receive them as they are.

    ``stats=False`` (only with ``keep_best=False`` and no ``early_stop``) skips the per-step
    success and loss bookkeeping and returns ``(x_last, None, None)``: the hot path of
    one-step training adversaries, whose callers read only the point.
    """
    def loss_fn(z: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return loss(model(z), ys)

    if not stats:
        if keep_best or early_stop:
            raise ValueError("iterate: stats=False needs keep_best=False and early_stop=False")
        ys = y
        x_adv = x_init.detach()
        for t in range(steps):
            with torch.enable_grad():
                x_adv.requires_grad_(True)
                lval = loss(model(x_adv), y)
                grad = torch.autograd.grad(lval.sum(), x_adv)[0]
            with torch.no_grad():
                x_adv = rule(t, x_adv.detach(), x, grad, lval.detach().float(), loss_fn, generator)
        return _own(x_adv, False, x_init), None, None

    n = x.shape[0]
    # without keep_best or early_stop the per-step x_best is overwritten at the end: skip it
    track_x = keep_best or early_stop
    x_best = x_init.detach().clone() if track_x else x_init.detach()
    loss_best = torch.full((n,), float("-inf"), device=x.device, dtype=torch.float32)
    done = torch.zeros(n, dtype=torch.bool, device=x.device)
    idx: torch.Tensor | None = None  # rows still computed; None = all (no copies, no gathers)
    xs, ys = x, y
    x_adv = x_init.detach()
    inf = float("inf")
    col = (-1,) + (1,) * (x.dim() - 1)
    # on the CPU a host-side test is free: when every row improved, x_best just becomes the
    # iterate (no copy; torch.where over the batch costs as much as six element-wise passes).
    # Iterates are never written in place, so the alias is safe; x_best is then written out of
    # place once before any in-place update (it may alias x_init, the caller's tensor).
    host = x.device.type == "cpu"
    owned = track_x  # x_best is a private copy (else it may alias the caller's x_init)

    for t in range(steps + 1 if keep_best else steps):
        last = t == steps
        with torch.enable_grad():
            x_adv.requires_grad_(not last)
            logits = model(x_adv)
            lval = loss(logits, ys)
            grad = None if last else torch.autograd.grad(lval.sum(), x_adv)[0]
        with torch.no_grad():
            x_adv = x_adv.detach()
            lval = lval.detach().float()
            ok = success(logits.detach(), ys)
            if idx is None:
                fresh = ok & ~done
                # loss_best is +inf on rows already done, so they never count as "better"
                upd = fresh | (lval > loss_best) if keep_best else fresh
                if track_x:
                    if host and bool(upd.all()):
                        x_best, owned = x_adv, False
                    elif not host or bool(upd.any()):
                        if owned:
                            torch.where(upd.view(col), x_adv, x_best, out=x_best)
                        else:
                            x_best, owned = torch.where(upd.view(col), x_adv, x_best), True
                torch.where(upd, lval, loss_best, out=loss_best)
                loss_best.masked_fill_(fresh, inf)
                done |= fresh
            else:
                was = done[idx]
                fresh = ok & ~was
                upd = fresh | ((lval > loss_best[idx]) & ~was) if keep_best else fresh
                if upd.any():
                    if not owned:
                        x_best, owned = x_best.clone(), True
                    sel = idx[upd]
                    x_best[sel] = x_adv[upd]
                    loss_best[sel] = torch.where(fresh[upd], inf, lval[upd])
                    done[idx[fresh]] = True
            if last:
                break
            x_next = rule(t, x_adv, xs, grad, lval, loss_fn, generator)
            if early_stop and ok.any():
                keep = ~ok
                idx = keep.nonzero().squeeze(1) if idx is None else idx[keep]
                if idx.numel() == 0:
                    return _own(x_best, owned, x_init), loss_best, done
                x_next, xs, ys = x_next[keep], x[idx], y[idx]
                _shrink_rule(rule, keep)
            x_adv = x_next
    if not keep_best:
        if idx is None:
            x_best, owned = x_adv, False
        else:
            if not owned:
                x_best = x_best.clone()
            x_best[idx] = x_adv.detach()
    return _own(x_best, owned, x_init), loss_best, done


def best_over_restarts(x: torch.Tensor, restarts: int,
                       run: Callable[[int, torch.Tensor | None],
                                     tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """Restarts that keep, per example, the best result: ``run(r, rows)`` attacks restart
    ``r`` on the rows ``rows`` of ``x`` (an index tensor, or ``None`` for all of them) and
    returns :func:`iterate`'s ``(x_best, loss_best, succeeded)`` for those rows.  Restart 0
    runs on every row, each later one only on the rows no restart has broken yet; a row takes
    a later restart's point when its loss is higher.  Returns ``x_adv`` shaped like ``x``.
    """
    n = x.shape[0]
    if restarts == 1:  # no bookkeeping
        return run(0, None)[0]
    x_out = x.clone()
    best = torch.full((n,), float("-inf"), device=x.device)
    todo = torch.arange(n, device=x.device)
    for r in range(restarts):
        xb, lb, ok = run(r, None if todo.numel() == n else todo)
        upd = (lb > best[todo]) | (r == 0)
        x_out[todo[upd]] = xb[upd]
        best[todo[upd]] = lb[upd]
        todo = todo[~ok]
        if todo.numel() == 0:
            break
    return x_out


def _own(x_best: torch.Tensor, owned: bool, x_init: torch.Tensor) -> torch.Tensor:
    """``x_best``, copied when it may share memory with the caller's ``x_init``."""
    if not owned and x_best.untyped_storage().data_ptr() == x_init.untyped_storage().data_ptr():
        return x_best.clone()
    return x_best


def _shrink_rule(rule: Any, keep: torch.Tensor) -> None:
    """Let stateful step rules (APGD) drop the rows of examples that stopped early."""
    shrink = getattr(rule, "select", None)
    if shrink is not None:
        shrink(keep)


def misclassified(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return logits.argmax(1) != y


def check_steps(steps: Any, name: str = "steps") -> int:
    return check_positive(steps, name, allow_zero=True, integer=True)


__all__ = ["Attack", "attack_mode", "iterate", "Signed", "misclassified", "check_steps", "_col"]
