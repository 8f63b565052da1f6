"""TOML experiment configs: one file describes a whole run (model, data, defense + attack,
optimiser, schedules, callbacks, evaluation, and for reproduction configs the paper's figures).

Load with :func:`load` (a path) or :func:`from_dict`; both validate strictly and return an
:class:`ExperimentConfig` whose ``build_*`` methods create the components.  Example::

    name = "digits-pgd"                    # optional; names the run directory
    description = "PGD-AT on sklearn digits"

    [model]                                # any registered model; other keys -> create(name, **kw)
    name = "digits-cnn"
    # normalize = "mnist"                  # or { mean = [0.1307], std = [0.3081] }: wraps the model

    [data]                                 # any registered dataset
    name = "digits"
    # root = "/data/mnist"                 # passed to tb.data.load(root=)
    val = 100                              # held-out validation examples taken from train (0: none)
    # n_train = 1000                       # use a seeded random subset of the training examples
    # n_test = 500                         # limit the test split
    # transform = [{ name = "random-crop-flip", padding = 4 }]   # batch transforms on the device

    [defense]                              # any registered defense; other keys are its kwargs
    name = "adversarial"
    [defense.attack]                       # any registered attack (for defenses taking attack=)
    name = "pgd"
    threat = { name = "linf", eps = 0.3 }  # or threat = "linf" with eps = 0.3 beside it
    steps = 10

    [optimizer]
    name = "sgd"                           # sgd | adam | adamw
    lr = 0.1
    momentum = 0.9
    weight_decay = 5e-4

    [schedule]                             # specs of toolbox.train.schedules.make_schedule,
    lr = { kind = "cyclic", peak = 5e-3, peak_at = 0.4 }     # functions of progress in epochs
    eps = { kind = "linear", start = 0.0, end = 0.3, epochs = 2 }

    [train]
    epochs = 10
    batch_size = 100
    seed = 0
    device = "cpu"                         # "cpu", "cuda", "cuda:1" or "auto"
    amp = false
    # grad_clip = 10.0

    [[callbacks]]                          # any registered callback; other keys are its kwargs
    name = "robust-early-stopping"         # keeps the best robust-validation weights

    [eval]                                 # the report written at the end of `toolbox train`
    n = 1000
    batch_size = 500
    [eval.attacks.pgd20]                   # report name -> attack
    attack = "pgd"
    threat = "linf"
    eps = 0.3
    steps = 20

    [paper]                                # optional; used by `toolbox repro`
    title = "Fast is better than free"
    quick = true                           # a CPU scale-down: run by `toolbox repro --quick`
    tolerance = 2.0                        # default tolerance, percentage points
    [paper.expect]                         # eval-report row -> accuracy in percent
    clean = 98.5
    pgd20 = { value = 88.0, tolerance = 3.0, source = "Table 4", paper = 88.77 }
    # or an array: [[paper.expect]] with metric = "clean", value = 98.5, tolerance = 1.5

Every unknown key raises :class:`ConfigError` (a ``ValueError``) naming its path and listing
the allowed keys; unknown component names raise the registry's ``KeyError``; keys that are
component arguments are checked against the component's signature.  Overrides use dotted
paths: ``apply_overrides(raw, ["train.epochs=2", "eval.attacks.pgd20.steps=50"])``.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import inspect
import json
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

try:  # Python >= 3.11
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    try:
        import tomli as tomllib  # type: ignore[no-redef]
    except ModuleNotFoundError:
        tomllib = None  # type: ignore[assignment]

__all__ = [
    "ConfigError", "ExperimentConfig", "AttackSpec", "Expectation", "load", "from_dict",
    "loads", "parse_override", "apply_overrides", "config_fingerprint", "dumps_toml",
    "build_model", "build_data", "build_defense", "build_trainer", "build_eval_attacks",
    "example_configs",
]


class ConfigError(ValueError):
    """An invalid experiment config: unknown key, wrong type or bad value (the message names
    the key path)."""


# ------------------------------------------------------------------------------------ helpers
def _suggest(key: str, allowed: Iterable[str]) -> str:
    close = difflib.get_close_matches(key, list(allowed), n=1)
    return f" Did you mean {close[0]!r}?" if close else ""


def _join(path: str, key: str | int) -> str:
    return f"{path}.{key}" if path else str(key)


def _check_keys(path: str, table: Mapping[str, Any], allowed: Iterable[str]) -> None:
    allowed = list(allowed)
    for key in table:
        if key not in allowed:
            where = f"[{path}]" if path else "the top level"
            raise ConfigError(
                f"unknown key {_join(path, key)!r}.{_suggest(key, allowed)} "
                f"Allowed keys in {where}: {', '.join(allowed)}"
            )


_TYPE_NAMES = {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
               list: "an array", dict: "a table"}


def _get(table: Mapping[str, Any], path: str, key: str, types: type | tuple[type, ...],
         default: Any = None, *, required: bool = False) -> Any:
    """``table[key]`` checked against ``types`` (int accepted where float is; bool is not
    an int here)."""
    if key not in table:
        if required:
            raise ConfigError(f"missing key {_join(path, key)!r} (required)")
        return default
    value = table[key]
    types = types if isinstance(types, tuple) else (types,)
    ok = any(
        (isinstance(value, t) and not (isinstance(value, bool) and t in (int, float)))
        or (t is float and isinstance(value, int) and not isinstance(value, bool))
        for t in types
    )
    if not ok:
        want = " or ".join(_TYPE_NAMES.get(t, t.__name__) for t in types)
        raise ConfigError(f"{_join(path, key)} must be {want}, got {value!r}")
    if float in types and isinstance(value, int) and not isinstance(value, bool) and int not in types:
        value = float(value)
    return value


def _table(table: Mapping[str, Any], path: str, key: str, *, required: bool = False) -> dict:
    value = _get(table, path, key, dict, None, required=required)
    return dict(value) if value is not None else {}


def _nonneg_int(table, path, key, default=None, *, positive=False, required=False):
    v = _get(table, path, key, int, default, required=required)
    if v is not None and (v < 0 or (positive and v == 0)):
        raise ConfigError(f"{_join(path, key)} must be {'> 0' if positive else '>= 0'}, got {v}")
    return v


def _nonneg_float(table, path, key, default=None, *, positive=False, required=False):
    v = _get(table, path, key, float, default, required=required)
    if v is not None and (not math.isfinite(v) or v < 0 or (positive and v == 0)):
        raise ConfigError(f"{_join(path, key)} must be finite and {'> 0' if positive else '>= 0'}, got {v}")
    return v


def _registry():
    from .plugins import registry

    return registry()


def _registry_get(kind: str, name: str, path: str) -> Callable[..., Any]:
    """The factory of ``kind/name``; an unknown name raises the registry's ``KeyError``
    (listing the available names) prefixed with the key path."""
    from .registry import UnknownNameError

    try:
        return _registry().get(kind, name)
    except UnknownNameError as exc:
        raise UnknownNameError(f"{path}: {exc}") from None


def _params(factory: Callable[..., Any]) -> tuple[list[str], bool]:
    """Keyword-usable parameter names of ``factory`` and whether it takes ``**kwargs``."""
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError):  # builtins without a signature: accept anything
        return [], True
    names, var_kw = [], False
    for p in sig.parameters.values():
        if p.kind is p.VAR_KEYWORD:
            var_kw = True
        elif p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
            names.append(p.name)
    return names, var_kw


def _check_kwargs(path: str, kind: str, name: str, kwargs: Mapping[str, Any],
                  reserved: Iterable[str], skip: Iterable[str] = ()) -> None:
    """Check ``kwargs`` against the signature of the registered ``kind/name`` factory."""
    factory = _registry_get(kind, name, path)
    params, var_kw = _params(factory)
    if var_kw:
        return
    skip = set(skip)
    allowed = list(reserved) + [p for p in params if p not in skip]
    for key in kwargs:
        if key not in allowed:
            raise ConfigError(
                f"unknown key {_join(path, key)!r}: {kind} {name!r} takes no argument {key!r}."
                f"{_suggest(key, allowed)} Allowed keys in [{path}]: {', '.join(allowed)}"
            )


def _wrap_build(path: str, fn: Callable[[], Any]) -> Any:
    """Run ``fn``; a ValueError/TypeError from a component names the config section."""
    from .registry import UnknownNameError

    try:
        return fn()
    except (ConfigError, UnknownNameError):
        raise
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"[{path}]: {exc}") from exc


# ------------------------------------------------------------------------------ spec classes
@dataclass
class ThreatSpec:
    """A threat model by name: ``{"name": "linf", "eps": 0.3, ...}``."""

    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, **self.kwargs}

    def build(self, path: str = "threat"):
        from .threat import threat

        return _wrap_build(path, lambda: threat(self.name, **self.kwargs))


def _parse_threat(section: Mapping[str, Any], path: str, *, required: bool = True) -> ThreatSpec | None:
    """``threat = "linf"`` (+ ``eps`` beside it) or ``threat = {name = "linf", eps = 0.3}``."""
    raw = section.get("threat")
    eps = section.get("eps")
    if raw is None:
        if required:
            raise ConfigError(f"missing key {_join(path, 'threat')!r}: give e.g. threat = \"linf\" and eps = 0.3")
        if eps is not None:
            raise ConfigError(f"{_join(path, 'eps')} needs threat = \"linf\" (or l2, l1, ...) beside it")
        return None
    tpath = _join(path, "threat")
    if isinstance(raw, str):
        spec = {"name": raw}
    elif isinstance(raw, dict):
        spec = dict(raw)
        if "name" not in spec:
            raise ConfigError(f"missing key {_join(tpath, 'name')!r} (the threat model, e.g. \"linf\")")
    else:
        raise ConfigError(f"{tpath} must be a string or a table, got {raw!r}")
    if eps is not None:
        if "eps" in spec:
            raise ConfigError(f"eps given twice: {_join(path, 'eps')} and {_join(tpath, 'eps')}")
        spec["eps"] = eps
    name = _get(spec, tpath, "name", str)
    kwargs = {k: v for k, v in spec.items() if k != "name"}
    if "eps" in kwargs:
        _nonneg_float(kwargs, tpath, "eps")
    _check_kwargs(tpath, "threat", name, kwargs, reserved=["name"])
    return ThreatSpec(name.lower(), kwargs)


@dataclass
class AttackSpec:
    """A registered attack, its threat model and its keyword arguments."""

    name: str
    threat: ThreatSpec
    kwargs: dict[str, Any] = field(default_factory=dict)
    name_key: str = "name"  # "name" in [defense.attack], "attack" in [eval.attacks.X]

    def to_dict(self) -> dict[str, Any]:
        return {self.name_key: self.name, "threat": self.threat.to_dict(), **self.kwargs}

    def build(self, path: str = "attack"):
        from .attacks import attack

        threat = self.threat.build(_join(path, "threat"))
        return _wrap_build(path, lambda: attack(self.name, threat=threat, **self.kwargs))


@dataclass
class CertifierSpec(AttackSpec):
    """A registered certifier, its threat model and its keyword arguments
    (``[eval.certifiers.X]``: ``certifier = "dual-network"``, ``threat``, ``eps``, ...)."""

    name_key: str = "certifier"

    def build(self, path: str = "certifier"):
        from .certify import certifier

        threat = self.threat.build(_join(path, "threat"))
        return _wrap_build(path, lambda: certifier(self.name, threat=threat, **self.kwargs))


def _parse_certifier(section: Mapping[str, Any], path: str) -> CertifierSpec:
    return _parse_attack(section, path, "certifier", kind="certifier", spec=CertifierSpec)


def _parse_attack(section: Mapping[str, Any], path: str, name_key: str, *, kind: str = "attack",
                  spec: type[AttackSpec] = AttackSpec) -> AttackSpec:
    """An attack table (or, with ``kind="certifier"``, a certifier table): its registered
    name under ``name_key`` (``"name"`` accepted too), threat model and keyword arguments."""
    if not isinstance(section, dict):
        raise ConfigError(f"{path} must be a table, got {section!r}")
    other = "attack" if name_key == "name" else "name"
    if other in section and name_key not in section:
        name_key = other  # accept either spelling
    name = _get(section, path, name_key, str, required=True)
    threat = _parse_threat(section, path)
    kwargs = {k: v for k, v in section.items() if k not in (name_key, "threat", "eps")}
    _check_kwargs(path, kind, name, kwargs, reserved=[name_key, "threat", "eps"], skip=["threat"])
    return spec(name.lower(), threat, kwargs, name_key)


@dataclass
class ModelSpec:
    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    normalize: dict[str, Any] | str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, **self.kwargs}
        if self.normalize is not None:
            out["normalize"] = copy.deepcopy(self.normalize)
        return out


@dataclass
class DataSpec:
    name: str
    root: str | None = None
    val: int = 0
    n_train: int | None = None
    n_test: int | None = None
    transform: list[dict[str, Any]] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name}
        if self.root is not None:
            out["root"] = self.root
        out["val"] = self.val
        for k in ("n_train", "n_test"):
            if getattr(self, k) is not None:
                out[k] = getattr(self, k)
        if self.transform:
            out["transform"] = [dict(t) for t in self.transform]
        out.update(self.kwargs)
        return out


@dataclass
class DefenseSpec:
    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    attack: AttackSpec | None = None
    threat: ThreatSpec | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, **self.kwargs}
        if self.threat is not None:
            out["threat"] = self.threat.to_dict()
        if self.attack is not None:
            out["attack"] = self.attack.to_dict()
        return out


@dataclass
class OptimizerSpec:
    name: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.0
    weight_decay: float = 0.0
    nesterov: bool = False
    betas: list[float] | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "lr": self.lr}
        if self.name == "sgd":
            out.update(momentum=self.momentum, nesterov=self.nesterov)
        else:
            out["betas"] = list(self.betas) if self.betas is not None else [0.9, 0.999]
        out["weight_decay"] = self.weight_decay
        return out


@dataclass
class TrainSpec:
    epochs: int = 1
    batch_size: int = 100
    seed: int = 0
    device: str = "cpu"
    amp: bool | str = False
    grad_clip: float | None = None
    loader: str = "auto"

    def to_dict(self) -> dict[str, Any]:
        out = {"epochs": self.epochs, "batch_size": self.batch_size, "seed": self.seed,
               "device": self.device, "amp": self.amp, "loader": self.loader}
        if self.grad_clip is not None:
            out["grad_clip"] = self.grad_clip
        return out


@dataclass
class EvalSpec:
    n: int | None = 1000
    batch_size: int = 500
    split: str = "test"
    attacks: dict[str, AttackSpec] = field(default_factory=dict)
    groups: dict[str, list[str]] = field(default_factory=dict)  # row name -> attack names (worst of them)
    certifiers: dict[str, CertifierSpec] = field(default_factory=dict)  # row name -> certifier

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.n is not None:
            out["n"] = self.n
        out.update(batch_size=self.batch_size, split=self.split)
        out["attacks"] = {k: a.to_dict() for k, a in self.attacks.items()}
        if self.groups:
            out["groups"] = {k: list(v) for k, v in self.groups.items()}
        if self.certifiers:
            out["certifiers"] = {k: c.to_dict() for k, c in self.certifiers.items()}
        return out


@dataclass
class Expectation:
    """One figure a reproduction config must reach.

    ``metric``: a row of the eval report (``clean``, a name under ``[eval.attacks]``,
    ``worst-case``); ``value``: the accuracy in percent this config should measure;
    ``tolerance``: percentage points, the check passes when ``|measured - value| <= tolerance``;
    ``source``: where in the paper (``"Table 1"``); ``paper``: the paper's own figure when
    ``value`` is a scale-down's expectation (``None``: ``value`` is the paper's figure).
    ``min`` / ``max`` (percent): one-sided bounds ("clean >= 95"), alone or beside ``value``;
    a figure with bounds only needs no ``value`` or ``tolerance``.
    """

    metric: str
    value: float | None
    tolerance: float | None
    source: str = ""
    paper: float | None = None
    minimum: float | None = None
    maximum: float | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"metric": self.metric}
        if self.value is not None:
            out["value"], out["tolerance"] = self.value, self.tolerance
        if self.minimum is not None:
            out["min"] = self.minimum
        if self.maximum is not None:
            out["max"] = self.maximum
        if self.source:
            out["source"] = self.source
        if self.paper is not None:
            out["paper"] = self.paper
        return out

    def describe(self) -> str:
        """The expectation as text: ``"88±3"``, ``">=95"``, ``"[60, 90]"``, ``"88±3, >=85"``."""
        parts = []
        if self.value is not None:
            parts.append(f"{self.value:g}±{self.tolerance:g}")
        if self.minimum is not None and self.maximum is not None:
            parts.append(f"[{self.minimum:g}, {self.maximum:g}]")
        elif self.minimum is not None:
            parts.append(f">={self.minimum:g}")
        elif self.maximum is not None:
            parts.append(f"<={self.maximum:g}")
        return ", ".join(parts)

    def check(self, measured: float) -> bool:
        """Whether ``measured`` (accuracy in percent) is within the tolerance of ``value`` and
        inside the ``min``/``max`` bounds."""
        if not math.isfinite(measured):
            return False
        if self.value is not None and abs(measured - self.value) > self.tolerance + 1e-9:
            return False
        if self.minimum is not None and measured < self.minimum - 1e-9:
            return False
        return self.maximum is None or measured <= self.maximum + 1e-9


@dataclass
class PaperSpec:
    """The ``[paper]`` table of a reproduction config: ``title``, ``source`` (citation or
    URL), ``quick`` (a CPU scale-down run by ``toolbox repro --quick``) and the figures
    (:class:`Expectation`)."""

    title: str = ""
    source: str = ""
    quick: bool = False
    expect: list[Expectation] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.title:
            out["title"] = self.title
        if self.source:
            out["source"] = self.source
        out["quick"] = self.quick
        if self.expect:
            out["expect"] = [e.to_dict() for e in self.expect]
        return out


_TOP = ("name", "description", "model", "data", "defense", "optimizer", "schedule", "train",
        "callbacks", "eval", "paper")
_OPTIMIZERS = ("sgd", "adam", "adamw")


@dataclass
class ExperimentConfig:
    """A validated experiment config.  ``to_dict()`` is the resolved form (defaults filled
    in); loading it again gives an equal config.  ``source`` is the file it came from."""

    name: str
    description: str
    model: ModelSpec
    data: DataSpec
    defense: DefenseSpec
    optimizer: OptimizerSpec
    schedule: dict[str, Any]
    train: TrainSpec
    callbacks: list[dict[str, Any]]
    eval: EvalSpec
    paper: PaperSpec | None = None
    source: Path | None = None

    # -- serialisation ------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name}
        if self.description:
            out["description"] = self.description
        out["model"] = self.model.to_dict()
        out["data"] = self.data.to_dict()
        out["defense"] = self.defense.to_dict()
        out["optimizer"] = self.optimizer.to_dict()
        if self.schedule:
            out["schedule"] = copy.deepcopy(self.schedule)
        out["train"] = self.train.to_dict()
        if self.callbacks:
            out["callbacks"] = copy.deepcopy(self.callbacks)
        out["eval"] = self.eval.to_dict()
        if self.paper is not None:
            out["paper"] = self.paper.to_dict()
        return out

    def to_toml(self) -> str:
        return dumps_toml(self.to_dict())

    def fingerprint(self) -> str:
        return config_fingerprint(self)

    # -- builders -----------------------------------------------------------------------------
    def build_model(self):
        """The model (``nn.Module`` returning logits), wrapped in ``Normalize`` when
        ``[model] normalize`` is given; initialised from ``model.seed`` (default
        ``train.seed``) without touching the global RNG."""
        from . import models

        kw = dict(self.model.kwargs)
        kw.setdefault("seed", self.train.seed)
        norm = self.model.normalize
        if isinstance(norm, dict):
            norm = (norm["mean"], norm["std"])
        return _wrap_build("model", lambda: models.create(self.model.name, normalize=norm, **kw))

    def build_data(self):
        """``(train, val, test)`` datasets; ``val`` is ``None`` when ``[data] val = 0``.

        ``train`` is a seeded random subset when ``n_train`` is set (seed ``train.seed``); the
        validation examples are split off it with the same seed; ``test`` is the
        ``eval.split`` split, limited to ``n_test`` examples when set."""
        import torch

        from . import data as D

        d = self.data
        root = d.root
        train = _wrap_build("data", lambda: D.load(d.name, split="train", root=root, **d.kwargs))
        seed = self.train.seed
        if d.n_train is not None and d.n_train < len(train):
            g = torch.Generator().manual_seed(seed)
            idx = torch.randperm(len(train), generator=g)[: d.n_train].sort().values
            train = D.subset(train, idx)
        val = None
        if d.val:
            if d.val >= len(train):
                raise ConfigError(f"data.val = {d.val} leaves no training examples (train has {len(train)})")
            train, val = D.split(train, d.val, seed)
        return train, val, self.build_test_data()

    def build_test_data(self, split: str | None = None):
        """The evaluation split (``eval.split`` unless given), limited to ``data.n_test``."""
        import torch

        from . import data as D

        d = self.data
        split = split or self.eval.split
        test = _wrap_build("data", lambda: D.load(d.name, split=split, root=d.root, **d.kwargs))
        if d.n_test is not None and d.n_test < len(test):
            test = D.subset(test, torch.arange(d.n_test))
        return test

    def build_transform(self):
        """The batch transform of ``[data] transform`` (``None`` without one)."""
        if not self.data.transform:
            return None
        from .data import make_transform

        spec = self.data.transform
        return _wrap_build("data.transform", lambda: make_transform(spec[0] if len(spec) == 1 else spec))

    def build_attack(self):
        """The defense's attack (``None`` when the defense takes none)."""
        if self.defense.attack is None:
            return None
        return self.defense.attack.build("defense.attack")

    def build_defense(self):
        from .defense import defense

        kw = dict(self.defense.kwargs)
        if self.defense.threat is not None:
            kw["threat"] = self.defense.threat.build("defense.threat")
        if self.defense.attack is not None:
            kw["attack"] = self.build_attack()
        return _wrap_build("defense", lambda: defense(self.defense.name, **kw))

    def build_optimizer(self, model):
        import torch

        o = self.optimizer
        params = [p for p in model.parameters() if p.requires_grad]
        if o.name == "sgd":
            return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum,
                                   weight_decay=o.weight_decay, nesterov=o.nesterov)
        betas = tuple(o.betas) if o.betas is not None else (0.9, 0.999)
        cls = torch.optim.Adam if o.name == "adam" else torch.optim.AdamW
        return cls(params, lr=o.lr, betas=betas, weight_decay=o.weight_decay)

    def build_schedules(self):
        """``(lr_schedule, eps_schedule)`` callables of training progress in epochs, or None."""
        from .train.schedules import make_schedule

        out = []
        for key in ("lr", "eps"):
            spec = self.schedule.get(key)
            out.append(None if spec is None else
                       _wrap_build(f"schedule.{key}",
                                   lambda spec=spec: make_schedule(spec, epochs=self.train.epochs)))
        return tuple(out)

    def build_callbacks(self) -> list:
        reg = _registry()
        out = []
        for i, cb in enumerate(self.callbacks):
            kw = dict(cb)
            name = kw.pop("name")
            for k, v in kw.items():
                if _is_attack_table(v):
                    kw[k] = _parse_attack(v, f"callbacks.{i}.{k}", "attack").build(f"callbacks.{i}.{k}")
            out.append(_wrap_build(f"callbacks.{i}", lambda name=name, kw=kw: reg.create("callback", name, **kw)))
        return out

    def device(self) -> str:
        """``train.device`` with ``"auto"`` resolved (CUDA when available, else CPU)."""
        if self.train.device == "auto":
            import torch

            return "cuda" if torch.cuda.is_available() else "cpu"
        return self.train.device

    def build_trainer(self, model=None, defense=None, *, callbacks: Iterable[Any] = (),
                      run_dir: str | Path | None = None):
        """A :class:`toolbox.Trainer` for this config.  ``model``/``defense`` are built when not
        given; ``callbacks`` are added after the config's ``[[callbacks]]``."""
        from .train import Trainer

        model = self.build_model() if model is None else model
        defense = self.build_defense() if defense is None else defense
        lr_schedule, eps_schedule = self.schedule.get("lr"), self.schedule.get("eps")
        t = self.train
        return _wrap_build("train", lambda: Trainer(
            model, defense, optimizer=self.build_optimizer(model),
            callbacks=[*self.build_callbacks(), *callbacks], device=self.device(), amp=t.amp,
            batch_size=t.batch_size, lr_schedule=lr_schedule, eps_schedule=eps_schedule,
            grad_clip=t.grad_clip, seed=t.seed, run_dir=run_dir,
            transform=self.build_transform(), loader=t.loader))

    def build_eval_certifiers(self) -> dict[str, Any]:
        """Report name -> Certifier for :func:`toolbox.evaluate` (``[eval.certifiers]``)."""
        return {k: c.build(f"eval.certifiers.{k}") for k, c in self.eval.certifiers.items()}

    def build_eval_attacks(self) -> dict[str, Any]:
        """Report name -> Attack for :func:`toolbox.evaluate`; attacks without a ``seed`` get
        ``train.seed`` so a report is reproducible."""
        out = {}
        for k, a in self.eval.attacks.items():
            if "seed" not in a.kwargs and "seed" in _params(_registry().get("attack", a.name))[0]:
                a = AttackSpec(a.name, a.threat, {**a.kwargs, "seed": self.train.seed}, a.name_key)
            out[k] = a.build(f"eval.attacks.{k}")
        return out


# ----------------------------------------------------------------------------------- parsing
def _model_params(name: str) -> tuple[list[str], bool]:
    """Parameters of a model factory; the builtin zoo's factories take ``**kw`` and forward
    them to a builder whose signature is the real one."""
    _registry_get("model", name, "model.name")
    entry = _registry().entry("model", name)
    params, var_kw = _params(entry.factory)
    if var_kw and entry.plugin == "builtin-models":
        from . import models

        builder = getattr(models, "_ZOO", {}).get(entry.name, (None,))[0]
        if builder is not None:
            inner, inner_kw = _params(builder)
            return params + inner, inner_kw
    return params, var_kw


def _parse_model(raw: Mapping[str, Any]) -> ModelSpec:
    path = "model"
    name = _get(raw, path, "name", str, required=True)
    normalize = None
    if "normalize" in raw:
        norm = raw["normalize"]
        if isinstance(norm, dict):
            _check_keys("model.normalize", norm, ["mean", "std"])
            for k in ("mean", "std"):
                v = _get(norm, "model.normalize", k, (float, list), required=True)
                vals = v if isinstance(v, list) else [v]
                if not vals or not all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in vals):
                    raise ConfigError(f"model.normalize.{k} must be a number or an array of numbers, got {v!r}")
                if k == "std" and any(a <= 0 for a in vals):
                    raise ConfigError(f"model.normalize.std must be > 0, got {v!r}")
            normalize = dict(norm)
        elif isinstance(norm, str):
            normalize = norm
        else:
            raise ConfigError(f"model.normalize must be a dataset name (\"mnist\", \"cifar10\") or a "
                              f"table {{ mean = [...], std = [...] }}, got {norm!r}")
    kwargs = {k: v for k, v in raw.items() if k not in ("name", "normalize")}
    if "seed" in kwargs:
        _nonneg_int(kwargs, path, "seed")
    params, var_kw = _model_params(name)
    if not var_kw:
        allowed = ["name", "normalize"] + [p for p in params if p != "normalize"]
        for key in kwargs:
            if key not in allowed:
                raise ConfigError(
                    f"unknown key {_join(path, key)!r}: model {name!r} takes no argument {key!r}."
                    f"{_suggest(key, allowed)} Allowed keys in [model]: {', '.join(allowed)}")
    return ModelSpec(name.lower(), kwargs, normalize)


def _parse_data(raw: Mapping[str, Any]) -> DataSpec:
    path = "data"
    name = _get(raw, path, "name", str, required=True)
    root = _get(raw, path, "root", str)
    val = _nonneg_int(raw, path, "val", 0)
    n_train = _nonneg_int(raw, path, "n_train", positive=True)
    n_test = _nonneg_int(raw, path, "n_test", positive=True)
    transform = raw.get("transform", [])
    if isinstance(transform, (dict, str)):
        transform = [transform]
    if not isinstance(transform, list):
        raise ConfigError(f"data.transform must be a name, a table or an array of tables, got {transform!r}")
    transform = [{"name": t} if isinstance(t, str) else t for t in transform]
    for i, t in enumerate(transform):
        tpath = f"data.transform.{i}"
        if not isinstance(t, dict):
            raise ConfigError(f"{tpath} must be a table like {{ name = \"cutout\", size = 8 }}, got {t!r}")
        _get(t, tpath, "name", str, required=True)
        from .data import make_transform

        _wrap_build(tpath, lambda t=t: make_transform(t))
    reserved = ["name", "root", "val", "n_train", "n_test", "transform"]
    kwargs = {k: v for k, v in raw.items() if k not in reserved}
    factory = _registry_get("dataset", name, "data.name")
    params, var_kw = _params(factory)
    if not var_kw:
        allowed = reserved + [p for p in params if p not in ("split", "root")]
        _check_keys(path, kwargs, allowed)
    return DataSpec(name.lower(), root, val, n_train, n_test, [dict(t) for t in transform], kwargs)


def _parse_defense(raw: Mapping[str, Any]) -> DefenseSpec:
    path = "defense"
    name = _get(raw, path, "name", str, required=True)
    attack = None
    if "attack" in raw:
        if isinstance(raw["attack"], str):
            raise ConfigError(
                f"defense.attack must be a table: [defense.attack] with name = {raw['attack']!r} "
                f"and threat = {{ name = \"linf\", eps = ... }}")
        attack = _parse_attack(raw["attack"], "defense.attack", "name")
    threat = _parse_threat(raw, path, required=False)
    kwargs = {k: v for k, v in raw.items() if k not in ("name", "attack", "threat", "eps")}
    present = [k for k in ("attack", "threat", "eps") if k in raw]
    _check_kwargs(path, "defense", name, {**kwargs, **{k: None for k in present if k != "eps"}},
                  reserved=["name"])
    return DefenseSpec(name.lower(), kwargs, attack, threat)


def _parse_optimizer(raw: Mapping[str, Any]) -> OptimizerSpec:
    path = "optimizer"
    _check_keys(path, raw, ["name", "lr", "momentum", "weight_decay", "nesterov", "betas"])
    name = _get(raw, path, "name", str, "sgd").lower()
    if name not in _OPTIMIZERS:
        raise ConfigError(f"optimizer.name must be one of {', '.join(_OPTIMIZERS)}, got {name!r}."
                          f"{_suggest(name, _OPTIMIZERS)}")
    lr = _nonneg_float(raw, path, "lr", 0.1 if name == "sgd" else 1e-3, positive=True)
    momentum = _nonneg_float(raw, path, "momentum", 0.0)
    wd = _nonneg_float(raw, path, "weight_decay", 0.0)
    nesterov = _get(raw, path, "nesterov", bool, False)
    betas = _get(raw, path, "betas", list)
    if name == "sgd" and betas is not None:
        raise ConfigError("optimizer.betas applies to adam/adamw, not sgd")
    if name != "sgd" and ("momentum" in raw or nesterov):
        raise ConfigError(f"optimizer.momentum/nesterov apply to sgd, not {name}")
    if betas is not None and (len(betas) != 2 or not all(
            isinstance(b, (int, float)) and not isinstance(b, bool) and 0 <= b < 1 for b in betas)):
        raise ConfigError(f"optimizer.betas must be two numbers in [0, 1), got {betas!r}")
    if nesterov and momentum == 0:
        raise ConfigError("optimizer.nesterov needs optimizer.momentum > 0")
    return OptimizerSpec(name, lr, momentum, wd, nesterov, [float(b) for b in betas] if betas else None)


def _parse_schedule(raw: Mapping[str, Any], epochs: int) -> dict[str, Any]:
    from .train.schedules import make_schedule

    _check_keys("schedule", raw, ["lr", "eps"])
    out = {}
    for key, spec in raw.items():
        if not isinstance(spec, (int, float, str, dict)) or isinstance(spec, bool):
            raise ConfigError(f"schedule.{key} must be a number, a kind name or a table "
                              f"{{ kind = \"cyclic\", peak = ... }}, got {spec!r}")
        _wrap_build(f"schedule.{key}", lambda spec=spec: make_schedule(spec, epochs=epochs))
        out[key] = copy.deepcopy(spec)
    return out


_DEVICE_RE = re.compile(r"^(cpu|auto|cuda(:\d+)?|mps)$")


def _parse_train(raw: Mapping[str, Any]) -> TrainSpec:
    path = "train"
    _check_keys(path, raw, ["epochs", "batch_size", "seed", "device", "amp", "grad_clip", "loader"])
    epochs = _nonneg_int(raw, path, "epochs", 1, positive=True)
    bs = _nonneg_int(raw, path, "batch_size", 100, positive=True)
    seed = _nonneg_int(raw, path, "seed", 0)
    device = _get(raw, path, "device", str, "cpu")
    if not _DEVICE_RE.match(device):
        raise ConfigError(f"train.device must be \"cpu\", \"cuda\", \"cuda:N\" or \"auto\", got {device!r}")
    amp = _get(raw, path, "amp", (bool, str), False)
    if isinstance(amp, str) and amp not in ("bf16", "fp16"):
        raise ConfigError(f"train.amp must be true, false, \"bf16\" or \"fp16\", got {amp!r}")
    clip = _nonneg_float(raw, path, "grad_clip", positive=True)
    loader = _get(raw, path, "loader", str, "auto")
    return TrainSpec(epochs, bs, seed, device, amp, clip, loader)


def _is_attack_table(v: Any) -> bool:
    return isinstance(v, dict) and "threat" in v and ("attack" in v or "name" in v)


def _parse_callbacks(raw: Any) -> list[dict[str, Any]]:
    if isinstance(raw, dict):
        raise ConfigError("callbacks must be an array of tables: write [[callbacks]] (double brackets)")
    if not isinstance(raw, list):
        raise ConfigError(f"callbacks must be an array of tables ([[callbacks]]), got {raw!r}")
    out = []
    for i, cb in enumerate(raw):
        path = f"callbacks.{i}"
        if not isinstance(cb, dict):
            raise ConfigError(f"{path} must be a table with name = ..., got {cb!r}")
        name = _get(cb, path, "name", str, required=True)
        kwargs = {k: v for k, v in cb.items() if k != "name"}
        _check_kwargs(path, "callback", name, kwargs, reserved=["name"])
        for k, v in kwargs.items():
            if _is_attack_table(v):  # e.g. attack = { attack = "pgd", threat = "linf", eps = 0.3 }
                kwargs[k] = _parse_attack(v, _join(path, k), "attack").to_dict()
        out.append({"name": name.lower(), **kwargs})
    return out


def _parse_eval(raw: Mapping[str, Any]) -> EvalSpec:
    path = "eval"
    _check_keys(path, raw, ["n", "batch_size", "split", "attacks", "groups", "certifiers"])
    n = _nonneg_int(raw, path, "n", 1000, positive=True)
    bs = _nonneg_int(raw, path, "batch_size", 500, positive=True)
    split = _get(raw, path, "split", str, "test")
    attacks = {}
    for name, spec in _table(raw, path, "attacks").items():
        if name in ("clean", "worst-case"):
            raise ConfigError(f"eval.attacks.{name}: {name!r} is reserved for the report's own rows")
        attacks[name] = _parse_attack(spec, f"eval.attacks.{name}", "attack")
    groups: dict[str, list[str]] = {}
    for name, members in _table(raw, path, "groups").items():
        where = f"eval.groups.{name}"
        if name in ("clean", "worst-case") or name in attacks:
            raise ConfigError(f"{where}: {name!r} is already a row of the report (an attack or a reserved "
                              f"name); pick another name")
        if not isinstance(members, list) or not members or not all(isinstance(m, str) for m in members):
            raise ConfigError(f"{where} must be a non-empty list of [eval.attacks] names, got {members!r}")
        for m in members:
            if m not in attacks:
                raise ConfigError(f"{where}: {m!r} is not under [eval.attacks].{_suggest(m, list(attacks))} "
                                  f"Available: {', '.join(attacks) or 'none'}")
        groups[name] = list(members)
    certifiers = {}
    for name, spec in _table(raw, path, "certifiers").items():
        if name in ("clean", "worst-case") or name in attacks or name in groups:
            raise ConfigError(f"eval.certifiers.{name}: {name!r} is already a row of the report (an attack, "
                              f"a group or a reserved name); pick another name")
        certifiers[name] = _parse_certifier(spec, f"eval.certifiers.{name}")
    return EvalSpec(n, bs, split, attacks, groups, certifiers)


def _percent(table: Mapping[str, Any], path: str, key: str, *, required: bool = False) -> float | None:
    v = _get(table, path, key, float, required=required)
    if v is not None and not 0 <= v <= 100:
        raise ConfigError(f"{_join(path, key)} is an accuracy in percent, must be in [0, 100], got {v}")
    return v


def _parse_paper(raw: Mapping[str, Any], eval_spec: EvalSpec) -> PaperSpec:
    """``[paper]``: ``expect`` is either a table ``metric -> value`` (a number, or a table with
    ``value``, ``tolerance``, ``source``, ``paper``) or an array of tables ``[[paper.expect]]``
    with ``metric`` and the same keys; ``paper.tolerance`` is the default tolerance."""
    path = "paper"
    _check_keys(path, raw, ["title", "source", "quick", "tolerance", "expect"])
    title = _get(raw, path, "title", str, "")
    source = _get(raw, path, "source", str, "")
    quick = _get(raw, path, "quick", bool, False)
    default_tol = _nonneg_float(raw, path, "tolerance")
    expect_raw = _get(raw, path, "expect", (dict, list), [])
    metrics = ["clean", *eval_spec.attacks, "worst-case", *eval_spec.groups, *eval_spec.certifiers]
    items: list[tuple[str, str | None, Any]] = []  # (key path, metric or None, entry)
    if isinstance(expect_raw, dict):  # [paper.expect] metric = value
        for metric, entry in expect_raw.items():
            epath = f"paper.expect.{metric}"
            if isinstance(entry, bool) or not isinstance(entry, (int, float, dict)):
                raise ConfigError(f"{epath} must be an accuracy in percent or a table "
                                  f"{{ value = ..., tolerance = ... }}, got {entry!r}")
            items.append((epath, metric, entry if isinstance(entry, dict) else {"value": entry}))
    else:  # [[paper.expect]] with metric = ...
        for i, entry in enumerate(expect_raw):
            epath = f"paper.expect.{i}"
            if not isinstance(entry, dict):
                raise ConfigError(f"{epath} must be a table ([[paper.expect]]), got {entry!r}")
            items.append((epath, None, entry))
    expect = []
    for epath, metric, e in items:
        keys = ["value", "tolerance", "min", "max", "source", "paper"]
        _check_keys(epath, e, keys if metric is not None else ["metric", *keys])
        if metric is None:
            metric = _get(e, epath, "metric", str, required=True)
            where = f"{epath}.metric = {metric!r}"
        else:
            where = epath
        if metric not in metrics:
            raise ConfigError(f"{where} is not a row of the eval report.{_suggest(metric, metrics)} "
                              f"Available: {', '.join(metrics)} (add the attack under [eval.attacks])")
        lo, hi = _percent(e, epath, "min"), _percent(e, epath, "max")
        if lo is not None and hi is not None and lo > hi:
            raise ConfigError(f"{epath}: min {lo:g} is above max {hi:g}")
        value = _percent(e, epath, "value", required=lo is None and hi is None)
        tol = _nonneg_float(e, epath, "tolerance", default_tol) if value is not None else None
        if value is not None and tol is None:
            raise ConfigError(f"missing key {_join(epath, 'tolerance')!r}: give it per figure or "
                              f"paper.tolerance for all (percentage points)")
        expect.append(Expectation(metric, value, tol, _get(e, epath, "source", str, ""),
                                  _percent(e, epath, "paper"), lo, hi))
    return PaperSpec(title, source, quick, expect)


def from_dict(raw: Mapping[str, Any], *, source: str | Path | None = None,
              name: str | None = None) -> ExperimentConfig:
    """Validate a config given as a (TOML-shaped) dict.  ``name`` is the default run name
    (the file's stem) when the config has none."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"a config must be a table, got {type(raw).__name__}")
    _check_keys("", raw, _TOP)
    for sec in ("model", "data"):
        if sec not in raw:
            raise ConfigError(f"missing section [{sec}] (required)")
    for sec in ("model", "data", "defense", "optimizer", "schedule", "train", "eval", "paper"):
        if sec in raw and not isinstance(raw[sec], dict):
            raise ConfigError(f"{sec} must be a table ([{sec}]), got {raw[sec]!r}")
    run_name = _get(raw, "", "name", str, name or (Path(source).stem if source else "experiment"))
    if not re.match(r"^[A-Za-z0-9_.+-]+$", run_name):
        raise ConfigError(f"name must use only letters, digits and _ . + - (it names the run directory), got {run_name!r}")
    ev = _parse_eval(raw.get("eval", {}))
    train = _parse_train(raw.get("train", {}))
    return ExperimentConfig(
        name=run_name,
        description=_get(raw, "", "description", str, ""),
        model=_parse_model(raw["model"]),
        data=_parse_data(raw["data"]),
        defense=_parse_defense(raw.get("defense", {"name": "standard"})),
        optimizer=_parse_optimizer(raw.get("optimizer", {})),
        schedule=_parse_schedule(raw.get("schedule", {}), train.epochs),
        train=train,
        callbacks=_parse_callbacks(raw.get("callbacks", [])),
        eval=ev,
        paper=_parse_paper(raw["paper"], ev) if "paper" in raw else None,
        source=Path(source) if source is not None else None,
    )


def _require_tomllib():
    if tomllib is None:  # pragma: no cover
        raise ConfigError("reading TOML needs Python >= 3.11 (tomllib) or the 'tomli' package")
    return tomllib


def read_toml(path: str | Path) -> dict[str, Any]:
    """Parse a TOML file; a missing file raises FileNotFoundError, bad TOML a ConfigError."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    try:
        with path.open("rb") as f:
            return _require_tomllib().load(f)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from exc


def loads(text: str, *, overrides: Iterable[str] = (), name: str | None = None) -> ExperimentConfig:
    """Validate a config given as TOML text."""
    try:
        raw = _require_tomllib().loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"invalid TOML: {exc}") from exc
    return from_dict(apply_overrides(raw, overrides), name=name)


def load(path: str | Path, overrides: Iterable[str] = ()) -> ExperimentConfig:
    """Read, override (``"key.path=value"`` strings) and validate a TOML experiment config.

    Errors name the file: ``ConfigError("configs/x.toml: unknown key 'train.epoch' ...")``.
    """
    from .registry import UnknownNameError

    path = Path(path)
    raw = read_toml(path)
    try:
        return from_dict(apply_overrides(raw, overrides), source=path)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    except UnknownNameError as exc:
        raise UnknownNameError(f"{path}: {exc}") from exc


# --------------------------------------------------------------------------------- overrides
def parse_override(text: str) -> tuple[list[str], Any]:
    """``"train.epochs=3"`` -> ``(["train", "epochs"], 3)``.  The value is parsed as a TOML
    literal (numbers, booleans, "quoted strings", arrays, inline tables); anything else is
    taken as a plain string (``--set data.root=/data/mnist``)."""
    if "=" not in text:
        raise ConfigError(f"--set expects key.path=value, got {text!r}")
    key, value = text.split("=", 1)
    key = key.strip()
    parts = key.split(".")
    if not key or any(not p.strip() for p in parts):
        raise ConfigError(f"--set: bad key path {key!r} in {text!r}")
    value = value.strip()
    try:
        parsed = _require_tomllib().loads(f"v = {value}")["v"]
    except Exception:  # noqa: BLE001 - not a TOML literal: a bare string
        parsed = value
    return [p.strip() for p in parts], parsed


def apply_overrides(raw: Mapping[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """A deep copy of ``raw`` with each ``key.path=value`` override set.  Missing tables are
    created (validation then rejects unknown keys); ``callbacks.0.patience=3`` indexes arrays."""
    out = copy.deepcopy(dict(raw))
    for text in overrides:
        parts, value = parse_override(text)
        node: Any = out
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            where = ".".join(parts[: i + 1])
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise ConfigError(f"--set {text!r}: {where!r} is not an index of the array "
                                      f"(it has {len(node)} entries)")
                if last:
                    node[int(part)] = value
                else:
                    node = node[int(part)]
            elif isinstance(node, dict):
                if last:
                    node[part] = value
                else:
                    if part not in node:
                        node[part] = {}
                    node = node[part]
            else:
                raise ConfigError(f"--set {text!r}: {'.'.join(parts[:i])!r} is a value, not a table")
    return out


# ------------------------------------------------------------------------------ fingerprints
#: sections and keys that do not change what training computes, left out of the fingerprint
FINGERPRINT_IGNORES: tuple[str, ...] = ("name", "description", "eval", "paper", "train.device")


def _canonical(cfg: ExperimentConfig | Mapping[str, Any]) -> dict[str, Any]:
    d = cfg.to_dict() if isinstance(cfg, ExperimentConfig) else copy.deepcopy(dict(cfg))
    for key in FINGERPRINT_IGNORES:
        head, _, tail = key.partition(".")
        if tail:
            if isinstance(d.get(head), dict):
                d[head].pop(tail, None)
        else:
            d.pop(head, None)
    return d


def config_fingerprint(cfg: ExperimentConfig | Mapping[str, Any]) -> str:
    """A short hash of everything in the config that affects training (not ``eval``, ``paper``,
    ``name``, ``description`` nor ``train.device``).  A resume checks it against the run."""
    text = json.dumps(_canonical(cfg), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def config_diff(a: ExperimentConfig | Mapping[str, Any], b: ExperimentConfig | Mapping[str, Any]) -> list[str]:
    """Key paths whose values differ between two configs (fingerprinted part only), each as
    ``"path: old -> new"``."""
    out: list[str] = []

    def walk(x: Any, y: Any, path: str) -> None:
        if isinstance(x, dict) and isinstance(y, dict):
            for k in sorted(set(x) | set(y)):
                walk(x.get(k, "<unset>"), y.get(k, "<unset>"), _join(path, k))
        elif isinstance(x, list) and isinstance(y, list) and len(x) == len(y):
            for i, (u, v) in enumerate(zip(x, y, strict=True)):
                walk(u, v, _join(path, i))
        elif x != y:
            out.append(f"{path}: {x!r} -> {y!r}")

    walk(_canonical(a), _canonical(b), "")
    return out


# -------------------------------------------------------------------------------- TOML writer
_BARE = re.compile(r"^[A-Za-z0-9_-]+$")


def _key(k: str) -> str:
    return k if _BARE.match(k) else json.dumps(k)


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_value(a) for a in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{_key(k)} = {_value(a)}" for k, a in v.items()) + " }"
    if isinstance(v, Path):
        return json.dumps(str(v))
    raise ConfigError(f"cannot write {v!r} ({type(v).__name__}) to TOML")


def dumps_toml(data: Mapping[str, Any]) -> str:
    """Write a dict of TOML-representable values (str, int, float, bool, lists, dicts) as
    TOML text that :mod:`tomllib` reads back to an equal dict."""
    lines: list[str] = []

    def is_table_array(v: Any) -> bool:
        return isinstance(v, list) and bool(v) and all(isinstance(a, dict) for a in v)

    def inline(v: Any, depth: int) -> bool:  # small flat tables below a section: { a = 1 }
        return (isinstance(v, dict) and depth >= 1 and bool(v)
                and not any(isinstance(a, dict) or is_table_array(a) for a in v.values())
                and len(_value(v)) <= 60)

    def emit(table: Mapping[str, Any], prefix: str, depth: int = 0) -> None:
        scalars = [(k, v) for k, v in table.items()
                   if (not isinstance(v, dict) or inline(v, depth)) and not is_table_array(v)]
        for k, v in scalars:
            lines.append(f"{_key(k)} = {_value(v)}")
        for k, v in table.items():
            full = f"{prefix}.{_key(k)}" if prefix else _key(k)
            if isinstance(v, dict) and not inline(v, depth):
                has_scalars = any((not isinstance(a, dict) or inline(a, depth + 1)) and not is_table_array(a)
                                  for a in v.values())
                if has_scalars or not v:
                    lines.append("")
                    lines.append(f"[{full}]")
                emit(v, full, depth + 1)
            elif is_table_array(v):
                for item in v:
                    lines.append("")
                    lines.append(f"[[{full}]]")
                    emit(item, full, depth + 1)

    emit(data, "")
    return "\n".join(lines).lstrip("\n") + "\n"


# ------------------------------------------------------------------ module-level conveniences
def build_model(cfg: ExperimentConfig):
    return cfg.build_model()


def build_data(cfg: ExperimentConfig):
    return cfg.build_data()


def build_defense(cfg: ExperimentConfig):
    return cfg.build_defense()


def build_trainer(cfg: ExperimentConfig, model=None, defense=None, **kw: Any):
    return cfg.build_trainer(model, defense, **kw)


def build_eval_attacks(cfg: ExperimentConfig) -> dict[str, Any]:
    return cfg.build_eval_attacks()


def example_configs() -> list[Path]:
    """The example configs shipped in ``toolbox/configs/``."""
    return sorted((Path(__file__).parent / "configs").glob("*.toml"))
