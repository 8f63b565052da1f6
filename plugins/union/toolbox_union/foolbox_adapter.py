"""Optional adapter for foolbox 3 attacks: the thesis's extra evaluation attacks (DeepFool, DDN,
C&W-L2, Boundary, Pointwise, Salt&Pepper, Gaussian noise, MIM, foolbox's FGSM and PGD).

foolbox is never required: it is imported when an adapter first runs (``pip install
toolbox-union[foolbox]``, i.e. ``foolbox==3.3.4``; it does not touch torch).  Whatever the
foolbox attack returns is projected onto the adapter's threat model (ball ∩ [0, 1], the
kernel's exact projection), so a minimum-norm attack (DeepFool, C&W, DDN, Boundary) or an ℓ0
attack (Pointwise, Salt&Pepper, used inside the ℓ1 ball in the thesis) only counts when its
projected output still fools the model.  Every output therefore lies inside the threat model:
the adapter can make a per-norm evaluation stronger, never unsound.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from toolbox.attacks.base import Attack

__all__ = ["FoolboxAttack", "FOOLBOX_ATTACKS", "FOOLBOX_SUITE", "foolbox_attacks"]


@dataclass(frozen=True)
class _Entry:
    classes: Mapping[str, str]   # threat name (or "*" for any) -> foolbox 3 class name
    white_box: bool              # reads gradients
    minimize: bool               # minimum-norm attack: run unbounded, then projected
    deterministic: bool = False  # same output every run: restarts are skipped
    start: str | None = None     # decision-based: class of the attack that finds adversarial starts
    defaults: Mapping[str, Any] | None = None  # constructor arguments unless given


#: short name -> how the adapter runs it (foolbox 3 class per threat-model name, ``"*"`` = any
#: norm, the output being projected; white-box?; minimum-norm?; deterministic?; start attack;
#: default constructor arguments).
FOOLBOX_ATTACKS: dict[str, _Entry] = {
    "deepfool": _Entry({"linf": "LinfDeepFoolAttack", "*": "L2DeepFoolAttack"}, True, True, True),
    "ddn": _Entry({"*": "DDNAttack"}, True, True, True),
    # foolbox 3's C&W default (9 x 10,000 iterations) is far beyond an evaluation budget
    "cw-l2": _Entry({"*": "L2CarliniWagnerAttack"}, True, True, True,
                    defaults={"binary_search_steps": 5, "steps": 1000}),
    "boundary": _Entry({"*": "BoundaryAttack"}, False, True, start="LinearSearchBlendedUniformNoiseAttack",
                       defaults={"steps": 5000}),
    "pointwise": _Entry({"*": "PointwiseAttack"}, False, True, start="SaltAndPepperNoiseAttack"),
    "salt-pepper": _Entry({"*": "SaltAndPepperNoiseAttack"}, False, True),
    "gaussian": _Entry({"l2": "L2RepeatedAdditiveGaussianNoiseAttack"}, False, False),
    "mim": _Entry({"linf": "LinfMomentumIterativeFastGradientMethod",
                   "l2": "L2MomentumIterativeFastGradientMethod",
                   "l1": "L1MomentumIterativeFastGradientMethod"}, True, False),
    "fgsm": _Entry({"linf": "LinfFastGradientAttack", "l2": "L2FastGradientAttack",
                    "l1": "L1FastGradientAttack"}, True, False, True),
    "pgd": _Entry({"linf": "LinfPGD", "l2": "L2PGD", "l1": "L1PGD"}, True, False),
}

#: the thesis's foolbox attacks per norm (digest §6.3): ℓ∞ FGSM, PGD, MIM; ℓ2 PGD, Gaussian
#: noise, Boundary, DeepFool, Pointwise, DDN, C&W-L2; ℓ1 Salt&Pepper and Pointwise
FOOLBOX_SUITE: dict[str, tuple[str, ...]] = {
    "linf": ("fgsm", "pgd", "mim"),
    "l2": ("pgd", "gaussian", "boundary", "deepfool", "pointwise", "ddn", "cw-l2"),
    "l1": ("salt-pepper", "pointwise"),
}


def _foolbox() -> Any:
    try:
        return importlib.import_module("foolbox")
    except ImportError as e:
        raise ImportError("the foolbox adapter needs foolbox 3: pip install 'foolbox==3.3.4' "
                          "(or pip install toolbox-union[foolbox])") from e


@contextlib.contextmanager
def _seeded(generator: torch.Generator | None, device: torch.device) -> Iterator[None]:
    """foolbox draws from torch's and numpy's global generators: with a ``generator``, seed both
    from it for the duration and restore their states afterwards (so seeded attacks are
    reproducible and leave the caller's global random state alone)."""
    if generator is None:
        yield
        return
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator, device=generator.device))
    devices = [device] if device.type == "cuda" else []
    np_state = np.random.get_state()
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        np.random.seed(seed)
        try:
            yield
        finally:
            np.random.set_state(np_state)


class FoolboxAttack(Attack):
    """A foolbox 3 attack as a toolbox :class:`~toolbox.Attack` inside ``threat``'s ball.

    Args:
        threat: one ℓp threat model (e.g. ``tb.L2(1.5)``); outputs are projected onto its
            ball ∩ [0, 1] box.
        method: a short name from :data:`FOOLBOX_ATTACKS` (``"deepfool"``, ``"ddn"``,
            ``"cw-l2"``, ``"boundary"``, ``"pointwise"``, ``"salt-pepper"``, ``"gaussian"``,
            ``"mim"``, ``"fgsm"``, ``"pgd"``; the foolbox class follows the threat's norm) or a
            foolbox attack instance.
        restarts: independent runs (the thesis: 10); per example the first projected output
            that fools the model is kept.  Deterministic attacks (DeepFool, DDN, C&W, FGSM) run
            once.
        attack_kwargs: constructor arguments of the foolbox class (on top of the adapter's
            defaults, e.g. C&W ``binary_search_steps=5, steps=1000``, Boundary ``steps=5000``).
        white_box, minimize: override the table's flags (``minimize``: run with
            ``epsilons=None`` and project; for an instance the default is whether it is a
            foolbox ``MinimizationAttack``).
        wrap: ``model -> foolbox model``; default ``foolbox.PyTorchModel(model, bounds=(0, 1),
            device=x.device)``.
        seed: seeds foolbox's (global torch and numpy) randomness for each call, restoring the
            global states afterwards.

    Inputs ``x`` ``(N, C, H, W)`` in [0, 1], labels ``(N,)``; returns ``(N, C, H, W)`` inside
    the ball ∩ box: the fooling projected output where some run fooled the model, else ``x``.
    Minimum-norm attacks run unbounded (``epsilons=None``); fixed-radius attacks get the
    threat's radius (the largest one for per-example radii, then projected per example).
    Decision-based attacks that need adversarial starts (Boundary, Pointwise) run only on the
    examples their start attack fooled (foolbox would otherwise refuse the batch).
    """

    name = "foolbox"

    def __init__(self, threat: Any, method: Any, *, restarts: int = 1, attack_kwargs: dict | None = None,
                 white_box: bool | None = None, minimize: bool | None = None, wrap: Any = None,
                 seed: int | None = None) -> None:
        super().__init__(threat, seed=seed)
        if isinstance(restarts, bool) or not isinstance(restarts, int) or restarts < 1:
            raise ValueError(f"restarts must be a positive int, got {restarts!r}")
        if attack_kwargs is not None and not isinstance(attack_kwargs, Mapping):
            raise ValueError(f"attack_kwargs must be a dict of constructor arguments, got {attack_kwargs!r}")
        self._entry: _Entry | None = None
        if isinstance(method, str):
            if method not in FOOLBOX_ATTACKS:
                raise KeyError(f"unknown foolbox attack {method!r}; available: {sorted(FOOLBOX_ATTACKS)}")
            entry = FOOLBOX_ATTACKS[method]
            if self.threat.name not in entry.classes and "*" not in entry.classes:
                raise ValueError(f"foolbox attack {method!r} has no {self.threat.name!r} version "
                                 f"(threat models: {sorted(entry.classes)})")
            self._entry = entry
            self.method = method
            self.white_box = entry.white_box
            self.minimize = entry.minimize
            self._fb_attack = None
        elif callable(method):
            self.method = type(method).__name__
            self.white_box = True
            self.minimize = None  # decided from the instance on first use
            self._fb_attack = method
        else:
            raise ValueError(f"method must be a name from {sorted(FOOLBOX_ATTACKS)} or a foolbox attack "
                             f"instance, got {method!r}")
        if white_box is not None:
            self.white_box = bool(white_box)
        if minimize is not None:
            self.minimize = bool(minimize)
        self.restarts = restarts
        self._attack_kwargs = dict(attack_kwargs or {})
        self._wrap = wrap

    @property
    def foolbox_class(self) -> str | None:
        """The foolbox class name this adapter runs (``None`` for an instance)."""
        if self._entry is None:
            return None
        c = self._entry.classes
        return c.get(self.threat.name, c.get("*"))

    def _resolve(self) -> Any:
        if self._fb_attack is None:
            fb = _foolbox()
            name = self.foolbox_class
            cls = getattr(fb.attacks, name, None)
            if cls is None:
                raise KeyError(f"foolbox {getattr(fb, '__version__', '?')} has no attack {name!r} "
                               f"(for {self.method!r}); the adapter targets foolbox 3.3.4")
            kw = {**(self._entry.defaults or {}), **self._attack_kwargs}
            self._fb_attack = cls(**kw)
        if self.minimize is None:
            base = getattr(_foolbox().attacks, "base", None)
            self.minimize = bool(base is not None and isinstance(self._fb_attack, base.MinimizationAttack))
        return self._fb_attack

    def _starts(self, fmodel: Any, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Adversarial starting points for Boundary / Pointwise: ``(starts, ok)``, ``ok`` the
        ``(N,)`` rows where the start attack fooled the model."""
        fb = _foolbox()
        init = self._attack_kwargs.get("init_attack")
        if init is None:
            init = getattr(fb.attacks, self._entry.start)()
        starts = torch.as_tensor(init.run(fmodel, x, y), device=x.device, dtype=x.dtype).detach()
        with torch.no_grad():
            ok = model(starts).argmax(1) != y
        return starts, ok

    def _run_once(self, fb_attack: Any, fmodel: Any, model: torch.nn.Module, x: torch.Tensor,
                  y: torch.Tensor, eps: float | None) -> torch.Tensor:
        """One foolbox run: the raw (minimisation) or radius-clipped output ``(N, ...)``."""
        if self._entry is not None and self._entry.start is not None:
            starts, ok = self._starts(fmodel, model, x, y)
            out = x.clone()
            if bool(ok.any()):
                res = fb_attack(fmodel, x[ok], y[ok], epsilons=eps, starting_points=starts[ok])
                out[ok] = torch.as_tensor(res[0] if eps is None else res[1], device=x.device, dtype=x.dtype)
            return out
        res = fb_attack(fmodel, x, y, epsilons=eps)
        return torch.as_tensor(res[0] if eps is None else res[1], device=x.device, dtype=x.dtype)

    def perturb(self, model, x, y, *, generator=None):
        fb_attack = self._resolve()
        fmodel = (self._wrap(model) if self._wrap is not None
                  else _foolbox().PyTorchModel(model, bounds=(0, 1), device=x.device))
        if self.minimize:
            eps = None
        else:
            e = self.threat.eps
            eps = float(e.max()) if isinstance(e, torch.Tensor) else float(e)
        runs = 1 if (self._entry is not None and self._entry.deterministic) else self.restarts
        best = x.clone()
        done = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        with _seeded(generator, x.device):
            for _ in range(runs):
                with torch.enable_grad():
                    adv = self._run_once(fb_attack, fmodel, model, x, y, eps).detach()
                cand = self.threat.project(adv.clamp(0, 1), x)
                with torch.no_grad():
                    fooled = model(cand).argmax(1) != y
                take = fooled & ~done
                best[take] = cand[take]
                done |= fooled
                if bool(done.all()):
                    break
        return best

    def spec(self) -> dict[str, Any]:
        out = super().spec()
        out["foolbox"] = self.method
        if self._attack_kwargs:
            out["attack_kwargs"] = {k: v for k, v in self._attack_kwargs.items()
                                    if isinstance(v, (int, float, str, bool))}
        return out


def foolbox_attacks(threat: Any, methods: Any = None, *, restarts: int = 1,
                    attack_kwargs: Mapping[str, Mapping[str, Any]] | None = None,
                    seed: int | None = None) -> dict[str, FoolboxAttack]:
    """Adapters for one ℓp ``threat``: ``{"fb-<method>": FoolboxAttack}``.

    ``methods``: names from :data:`FOOLBOX_ATTACKS`; default the thesis's attacks for the
    threat's norm (:data:`FOOLBOX_SUITE`).  ``restarts`` as in :class:`FoolboxAttack` (the
    Boundary attack always runs once, as in the thesis); ``attack_kwargs``: per method name,
    constructor arguments (e.g. ``{"boundary": {"steps": 1000}}``).
    """
    if methods is None:
        if threat.name not in FOOLBOX_SUITE:
            raise ValueError(f"no thesis foolbox suite for threat {threat.name!r}; give methods=")
        methods = FOOLBOX_SUITE[threat.name]
    kwargs = dict(attack_kwargs or {})
    unknown = set(kwargs) - set(FOOLBOX_ATTACKS)
    if unknown:
        raise KeyError(f"attack_kwargs names unknown foolbox attacks {sorted(unknown)}; "
                       f"available: {sorted(FOOLBOX_ATTACKS)}")
    return {f"fb-{m}": FoolboxAttack(threat, m, restarts=1 if m == "boundary" else restarts,
                                     attack_kwargs=dict(kwargs.get(m, {})), seed=seed)
            for m in methods}
