"""Optional adapter for foolbox 3 attacks (the thesis's extra evaluation attacks: DeepFool, DDN,
C&W-L2, Boundary, Pointwise, Salt&Pepper, Gaussian noise, MIM).

foolbox is never required: it is imported when an adapter first runs (``pip install
toolbox-union[foolbox]``, i.e. ``foolbox==3.3.4``).  Whatever the foolbox attack returns is
projected onto the adapter's threat model (ball ∩ [0, 1]), so a minimum-norm attack (DeepFool,
C&W, DDN, Boundary) or an ℓ0 attack (Pointwise, Salt&Pepper, used inside the ℓ1 ball in the
thesis) can only count when its projected output still fools the model.
"""

from __future__ import annotations

import importlib
from typing import Any

import torch

from toolbox.attacks.base import Attack

__all__ = ["FoolboxAttack", "FOOLBOX_ATTACKS"]

#: short name -> (foolbox 3 class names to try, white-box?, minimisation attack?)
FOOLBOX_ATTACKS: dict[str, tuple[tuple[str, ...], bool, bool]] = {
    "deepfool": (("L2DeepFoolAttack",), True, True),
    "deepfool-linf": (("LinfDeepFoolAttack",), True, True),
    "ddn": (("DDNAttack",), True, True),
    "cw-l2": (("L2CarliniWagnerAttack",), True, True),
    "boundary": (("BoundaryAttack",), False, True),
    "pointwise": (("PointwiseAttack",), False, True),
    "salt-pepper": (("SaltAndPepperNoiseAttack",), False, True),
    "gaussian": (("L2RepeatedAdditiveGaussianNoiseAttack", "L2AdditiveGaussianNoiseAttack"), False, False),
    "mim": (("LinfMomentumIterativeFastGradientMethod", "MomentumIterativeAttack", "MIFGSM"), True, False),
    "fgsm": (("LinfFastGradientAttack", "FGSM"), True, False),
    "pgd-linf": (("LinfPGD",), True, False),
    "pgd-l2": (("L2PGD",), True, False),
}


def _foolbox() -> Any:
    try:
        return importlib.import_module("foolbox")
    except ImportError as e:  # pragma: no cover - message checked in the tests
        raise ImportError("the foolbox adapter needs foolbox 3: pip install 'foolbox==3.3.4' "
                          "(or pip install toolbox-union[foolbox])") from e


class FoolboxAttack(Attack):
    """A foolbox 3 attack as a toolbox :class:`~toolbox.Attack` in ``threat``'s ball.

    Args:
        threat: one ℓp threat model (e.g. ``tb.L2(1.5)``); outputs are projected onto its
            ball ∩ box.
        attack: a short name from :data:`FOOLBOX_ATTACKS` or a foolbox attack instance.
        restarts: independent runs (the thesis: 10); per example the first projected output
            that fools the model is kept.
        attack_kwargs: arguments for the foolbox attack class (names only).
        white_box: override the white-box flag (used by the evaluation's sanity check).
        minimize: whether it is a minimum-norm attack run with ``epsilons=None`` (default: from
            :data:`FOOLBOX_ATTACKS`; ``False`` for an instance).
        wrap: ``model -> foolbox model``; default ``foolbox.PyTorchModel(model, bounds=(0, 1))``.

    Minimisation attacks run with ``epsilons=None`` (unbounded) and are projected; fixed-eps
    attacks get the threat model's radius.
    """

    name = "foolbox"

    def __init__(self, threat: Any, attack: Any, *, restarts: int = 1, attack_kwargs: dict | None = None,
                 white_box: bool | None = None, minimize: bool | None = None, wrap: Any = None,
                 seed: int | None = None) -> None:
        super().__init__(threat, seed=seed)
        if isinstance(restarts, bool) or not isinstance(restarts, int) or restarts < 1:
            raise ValueError(f"restarts must be a positive int, got {restarts!r}")
        if isinstance(attack, str):
            if attack not in FOOLBOX_ATTACKS:
                raise KeyError(f"unknown foolbox attack {attack!r}; available: {sorted(FOOLBOX_ATTACKS)}")
            _, wb, self.minimize = FOOLBOX_ATTACKS[attack]
            self.attack_name = attack
        else:
            wb, self.minimize = True, False
            self.attack_name = type(attack).__name__
        if minimize is not None:
            self.minimize = bool(minimize)
        self.white_box = wb if white_box is None else bool(white_box)
        self.restarts = restarts
        self._fb_attack = None if isinstance(attack, str) else attack
        self._attack_kwargs = dict(attack_kwargs or {})
        self._wrap = wrap

    def _resolve(self) -> Any:
        if self._fb_attack is None:
            fb = _foolbox()
            names = FOOLBOX_ATTACKS[self.attack_name][0]
            for n in names:
                cls = getattr(fb.attacks, n, None)
                if cls is not None:
                    self._fb_attack = cls(**self._attack_kwargs)
                    break
            else:
                raise KeyError(f"foolbox {getattr(fb, '__version__', '?')} has none of {names} "
                               f"(for {self.attack_name!r})")
        return self._fb_attack

    def perturb(self, model, x, y, *, generator=None):
        fb_attack = self._resolve()
        fmodel = self._wrap(model) if self._wrap is not None else _foolbox().PyTorchModel(model, bounds=(0, 1))
        eps = None if self.minimize else float(self.threat.eps)
        best = x.clone()
        done = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        for _ in range(self.restarts):
            with torch.enable_grad():
                out = fb_attack(fmodel, x, y, epsilons=eps)
            adv = out[0] if eps is None else out[1]  # raw (minimisation) or clipped to eps
            adv = torch.as_tensor(adv, device=x.device, dtype=x.dtype).detach()
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
        out["foolbox"] = self.attack_name
        return out
