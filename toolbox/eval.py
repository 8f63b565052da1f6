"""Worst-case evaluation and robustness curves.

:func:`evaluate` runs a set of attacks (and optionally certifiers) on the first ``n`` examples
of a dataset and reports, side by side:

=============  ===================================================================================
``clean``      clean accuracy
one per attack robust accuracy against that attack alone (an *upper* bound on true robustness)
``worst-case`` per-example AND over clean and every attack: an example counts only if it is
               classified correctly and survives *every* attack (never an average of the rows)
certifiers     certified accuracy (a *lower* bound on true robustness)
=============  ===================================================================================

together with AutoAttack-style sanity flags (NaN outputs, perturbations outside the ball, zero
gradients, randomised outputs, probability outputs, a black-box attack beating the white-box
ones) in ``report.attrs["warnings"]``, each also issued as a :class:`SanityWarning`.

:func:`robustness_curve` gives accuracy against eps for one attack; :mod:`toolbox.plot` draws it.
"""

from __future__ import annotations

import inspect
import math
import os
import sys
import time
import warnings
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from ._checks import check_eps, check_images, check_labels, check_positive
from .attacks.base import Attack, attack_mode
from .certify import Certifier

__all__ = ["evaluate", "robustness_curve", "SanityWarning", "ZERO_GRAD_FRACTION"]

#: fraction of the first batch with an exactly-zero input gradient above which the
#: zero-gradient (gradient masking) flag fires
ZERO_GRAD_FRACTION = 0.1

_RESERVED = ("clean", "worst-case", "index", "label", "pred", "clean_correct", "worst_case")


class SanityWarning(UserWarning):
    """A sign that the evaluation may overstate robustness (gradient masking, a broken attack,
    a model that is not what the attacks assume).  Also listed in ``report.attrs["warnings"]``."""


# ------------------------------------------------------------------------------------------------
# data
# ------------------------------------------------------------------------------------------------
Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def _as_batch(item: Any, start: int, what: str) -> Batch:
    """``(x, y)`` or ``(x, y, index)`` batch -> tensors; missing indices are running positions."""
    if not isinstance(item, (tuple, list)) or len(item) not in (2, 3):
        raise ValueError(f"{what} must yield (x, y) or (x, y, index) batches, got {type(item).__name__}"
                         + (f" of length {len(item)}" if isinstance(item, (tuple, list)) else ""))
    x, y = item[0], torch.as_tensor(item[1])
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{what}: x must be a torch.Tensor, got {type(x).__name__}")
    if y.dim() == 0:
        y = y.reshape(1)
    if len(item) == 3:
        index = torch.as_tensor(item[2]).reshape(-1).long()
    else:
        index = torch.arange(start, start + x.shape[0])
    if index.shape[0] != x.shape[0]:
        raise ValueError(f"{what}: index must have shape ({x.shape[0]},), got {tuple(index.shape)}")
    return x, y, index


def _item(item: Any, i: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    if not isinstance(item, (tuple, list)) or len(item) not in (2, 3):
        raise ValueError(f"data items must be (x, y) or (x, y, index) tuples, got {type(item).__name__}")
    x = item[0]
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"data items: x must be a torch.Tensor, got {type(x).__name__}")
    return x, torch.as_tensor(item[1]).reshape(()), int(item[2]) if len(item) == 3 else i


def _source(data: Any, n: int | None, batch_size: int) -> tuple[Iterator[Batch], int | None]:
    """``(iterator of CPU-or-wherever batches of exactly batch_size (last may be smaller), total)``.

    Re-chunks every input type to the same batches, so results do not depend on how the data
    were handed over (the per-batch random generators follow the batch number).
    """
    limit = math.inf if n is None else n
    if isinstance(data, (tuple, list)) and len(data) in (2, 3) and isinstance(data[0], torch.Tensor) \
            and data[0].dim() >= 2 and isinstance(data[1], torch.Tensor) and data[1].dim() == 1:
        x, y, index = _as_batch(tuple(data), 0, "data")
        if y.shape[0] != x.shape[0]:
            raise ValueError(f"data: y must have shape ({x.shape[0]},) to match x, got {tuple(y.shape)}")
        m = int(min(limit, x.shape[0]))
        return ((x[i:min(i + batch_size, m)], y[i:min(i + batch_size, m)], index[i:min(i + batch_size, m)])
                for i in range(0, m, batch_size)), m
    from . import data as _data

    if isinstance(data, _data.Dataset):
        m = int(min(limit, len(data)))

        def gen_ds() -> Iterator[Batch]:
            for i in range(0, m, batch_size):
                j = min(i + batch_size, m)
                yield _data._to_float(data.x[i:j]), data.y[i:j], data.indices[i:j]
        return gen_ds(), m
    if isinstance(data, torch.utils.data.Dataset) and not isinstance(data, torch.utils.data.IterableDataset):
        m = int(min(limit, len(data)))  # type: ignore[arg-type]

        def gen_map() -> Iterator[Batch]:
            for i in range(0, m, batch_size):
                items = [_item(data[k], k) for k in range(i, min(i + batch_size, m))]
                yield (torch.stack([t[0] for t in items]), torch.stack([t[1] for t in items]),
                       torch.tensor([t[2] for t in items], dtype=torch.long))
        return gen_map(), m
    if isinstance(data, torch.utils.data.IterableDataset):
        def gen_items() -> Iterator[Batch]:
            buf: list[tuple[torch.Tensor, torch.Tensor, int]] = []
            for k, it in enumerate(data):
                if k >= limit:
                    break
                buf.append(_item(it, k))
                if len(buf) == batch_size:
                    yield (torch.stack([t[0] for t in buf]), torch.stack([t[1] for t in buf]),
                           torch.tensor([t[2] for t in buf], dtype=torch.long))
                    buf = []
            if buf:
                yield (torch.stack([t[0] for t in buf]), torch.stack([t[1] for t in buf]),
                       torch.tensor([t[2] for t in buf], dtype=torch.long))
        return gen_items(), None
    if isinstance(data, Iterable) and not isinstance(data, (str, bytes, Mapping)):
        total = None
        try:
            ds = getattr(data, "dataset", None)
            if ds is not None:
                total = int(min(limit, len(ds)))
        except TypeError:
            total = None
        return _rechunk(data, limit, batch_size), total
    raise ValueError(f"data must be a Dataset, an (x, y) tuple of tensors or an iterable of batches, "
                     f"got {type(data).__name__}")


def _rechunk(batches: Iterable[Any], limit: float, batch_size: int) -> Iterator[Batch]:
    xs: list[torch.Tensor] = []
    ys: list[torch.Tensor] = []
    ids: list[torch.Tensor] = []
    have = seen = 0
    for item in batches:
        if seen >= limit:
            break
        x, y, index = _as_batch(item, seen, "data")
        take = int(min(x.shape[0], limit - seen))
        x, y, index = x[:take], y[:take], index[:take]
        seen += take
        xs.append(x)
        ys.append(y)
        ids.append(index.to(y.device))
        have += take
        while have >= batch_size:
            X, Y, ID = torch.cat(xs), torch.cat(ys), torch.cat(ids)
            yield X[:batch_size], Y[:batch_size], ID[:batch_size]
            xs, ys, ids = [X[batch_size:]], [Y[batch_size:]], [ID[batch_size:]]
            have -= batch_size
    if have:
        yield torch.cat(xs), torch.cat(ys), torch.cat(ids)


def _materialize(data: Any, n: int | None, batch_size: int) -> Batch:
    parts = list(_source(data, n, batch_size)[0])
    if not parts:
        raise ValueError("data is empty: no examples to evaluate")
    return (torch.cat([p[0].cpu() for p in parts]), torch.cat([p[1].cpu() for p in parts]),
            torch.cat([p[2].cpu() for p in parts]))


# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------
def _named(items: Any, cls: type, arg: str) -> dict[str, Any]:
    """A dict name -> object from a dict, a list/tuple or a single object (names from ``.name``;
    repeated names in a list get ``-2``, ``-3`` ... suffixes)."""
    if items is None:
        return {}
    if isinstance(items, cls):
        items = [items]
    if isinstance(items, Mapping):
        out = {}
        for k, v in items.items():
            if not isinstance(k, str) or not k:
                raise ValueError(f"{arg} keys must be non-empty strings, got {k!r}")
            out[k] = v
    elif isinstance(items, (list, tuple)):
        out = {}
        for v in items:
            base = str(getattr(v, "name", type(v).__name__))
            name, k = base, 2
            while name in out:
                name, k = f"{base}-{k}", k + 1
            out[name] = v
    else:
        raise ValueError(f"{arg} must be a dict name -> {cls.__name__}, a list of them or None, "
                         f"got {type(items).__name__}")
    for k, v in out.items():
        if not isinstance(v, cls):
            raise ValueError(f"{arg}[{k!r}] must be a toolbox {cls.__name__}, got {type(v).__name__} "
                             f"(build one with tb.{cls.__name__.lower()}(name, threat=...))")
        if k in _RESERVED:
            raise ValueError(f"{arg}: the name {k!r} is reserved for the report, pick another")
    return out


def _model_device(model: nn.Module) -> torch.device | None:
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return None


def _derive_seed(seed: int, name: str, batch: int) -> int:
    """A 63-bit seed from ``(seed, attack name, batch number)`` (splitmix64 finaliser)."""
    z = (seed * 0x9E3779B97F4A7C15 + zlib.crc32(name.encode()) * 0xBF58476D1CE4E5B9
         + batch * 0x94D049BB133111EB + 1) & (2**64 - 1)
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & (2**64 - 1)
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & (2**64 - 1)
    return (z ^ (z >> 31)) & (2**63 - 1)


def _eps_value(threat: Any) -> float:
    eps = getattr(threat, "eps", float("nan"))
    if isinstance(eps, torch.Tensor):
        return float(eps.max()) if eps.numel() else float("nan")
    return float(eps)


def _describe(threat: Any) -> str:
    return f"{getattr(threat, 'name', type(threat).__name__)} eps={_eps_value(threat):.4g}"


def _progress_mode(progress: bool | None) -> str | None:
    """How long work reports itself on stderr: ``"bar"`` (a tqdm bar: ``progress=True``, or
    ``None`` on a TTY outside CI), ``"lines"`` (``None`` elsewhere: logs, batch jobs, tox --
    a plain status line now and then, see :class:`StatusLines`) or ``None`` (``False``)."""
    if progress is not None:
        return "bar" if progress else None
    if os.environ.get("CI"):
        return "lines"
    try:
        return "bar" if sys.stderr.isatty() else "lines"
    except (AttributeError, ValueError):
        return "lines"


def _show_progress(progress: bool | None) -> bool:
    return _progress_mode(progress) == "bar"


class StatusLines:
    """Plain progress lines on stderr for runs without a terminal (log files, batch jobs): at
    most one line per ``every`` seconds (default 30), so short work prints nothing, and a
    closing line when anything was printed.  ``update(done, **stats)`` after each unit of
    work (``done`` out of ``total`` units).  ``clock``: seconds, ``time.perf_counter`` by
    default."""

    def __init__(self, desc: str, total: int | None, unit: str = "examples", every: float = 30.0,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.desc, self.total, self.unit, self.every, self.clock = desc, total, unit, float(every), clock
        self.start = self.last = clock()
        self.printed = False
        self.done = 0
        self.stats: dict[str, Any] = {}

    def _line(self, done: int, stats: dict[str, Any], now: float) -> str:
        of = f"/{self.total}" if self.total else ""
        pct = f" ({100 * done / self.total:.0f} %)" if self.total else ""
        extra = "".join(f", {k} {v:.3f}" if isinstance(v, float) else f", {k} {v}" for k, v in stats.items())
        return f"{self.desc}: {done}{of} {self.unit}{pct}{extra}, {(now - self.start) / 60:.1f} min"

    def update(self, done: int, **stats: Any) -> None:
        self.done, self.stats = done, stats
        now = self.clock()
        if now - self.last >= self.every:
            print(self._line(done, stats, now), file=sys.stderr, flush=True)
            self.last, self.printed = now, True

    def close(self, **stats: Any) -> None:
        """The closing line (with ``stats``, else the last update's), if any line was printed."""
        if self.printed:
            line = self._line(self.done, stats or self.stats, self.clock())
            print(line + " (done)", file=sys.stderr, flush=True)
            self.printed = False


class _Flags:
    """Collects sanity messages once each, in order."""

    def __init__(self) -> None:
        self.messages: list[str] = []

    def add(self, msg: str) -> None:
        if msg not in self.messages:
            self.messages.append(msg)


def _first_batch_checks(model: nn.Module, x: torch.Tensor, y: torch.Tensor, flags: _Flags) -> None:
    """Zero input gradients, randomised outputs and probability outputs, on one batch."""
    with torch.no_grad():
        a, b = model(x), model(x)
    fa, fb = torch.nan_to_num(a.float()), torch.nan_to_num(b.float())
    diff = (fa - fb).abs().max().item()
    if diff > 1e-4 * (1.0 + fa.abs().max().item()):
        flags.add(f"randomised model: two forward passes on the same batch differ (max |difference| "
                  f"{diff:.3g}); single-sample attacks overstate robustness, use EOT-style attacks "
                  f"and report the expected accuracy")
    fin = torch.isfinite(a).all(1)
    if fin.any() and a.shape[1] > 1:
        p = a[fin].double()
        in_range = bool(((p >= -1e-6) & (p <= 1 + 1e-6)).all())
        sums_to_one = bool(((p.sum(1) - 1).abs() <= 1e-3).all())
        if in_range and sums_to_one:
            flags.add("model outputs look like probabilities (every row in [0, 1] and summing to 1); "
                      "attacks expect logits (a softmax layer saturates the cross-entropy gradient)")
    xg = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        logits = model(xg)
        if logits.requires_grad:
            loss = F.cross_entropy(logits.double(), y, reduction="sum")
            (g,) = torch.autograd.grad(loss, xg, allow_unused=True)
        else:
            g = None
    if g is None:
        zero = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
    else:
        zero = g.flatten(1).abs().sum(1) == 0
    # rows with NaN/inf logits have their own flag (and torch.where-style masks give them a zero
    # gradient): judge gradient masking on the finite rows only
    fin_rows = torch.isfinite(a).all(1) if a.dim() == 2 else torch.ones_like(zero)
    frac = zero[fin_rows].float().mean().item() if bool(fin_rows.any()) else 0.0
    if frac > ZERO_GRAD_FRACTION:
        flags.add(f"zero input gradients: the cross-entropy gradient w.r.t. x is exactly zero for "
                  f"{zero.sum().item()} of {x.shape[0]} examples ({100 * frac:.0f}%) of the first "
                  f"batch: gradient masking (non-differentiable or detached layers) makes gradient "
                  f"attacks fail; use BPDA or black-box attacks")


def _takes_norms(threat: Any) -> bool:
    """Whether ``threat.contains`` accepts the precomputed ``norms=`` (third-party overrides
    written before it existed do not); :func:`evaluate` asks once per attack."""
    return "norms" in inspect.signature(threat.contains).parameters


def _groups(groups: Any, atks: Mapping[str, Any], certs: Mapping[str, Any],
            cascade: bool) -> dict[str, tuple[str, ...]]:
    """Validate :func:`evaluate`'s ``groups``: row name -> a non-empty list of attack names."""
    if groups is None:
        return {}
    if not isinstance(groups, Mapping):
        raise ValueError(f"groups must be a dict row name -> list of attack names, got {type(groups).__name__}")
    if groups and cascade:
        raise ValueError("groups= cannot be used with cascade=True: cascaded attack rows are cumulative, "
                         "so a group's row would include attacks outside the group")
    out: dict[str, tuple[str, ...]] = {}
    for g, members in groups.items():
        if not isinstance(g, str) or g in ("clean", "worst-case") or g in atks or g in certs:
            raise ValueError(f"groups: row name {g!r} clashes with the report's own rows, an attack or a "
                             f"certifier; pick another name")
        if isinstance(members, str) or not isinstance(members, Sequence) or not members:
            raise ValueError(f"groups[{g!r}] must be a non-empty list of attack names, got {members!r}")
        unknown = [m for m in members if m not in atks]
        if unknown:
            raise ValueError(f"groups[{g!r}]: {unknown} are not attacks of this evaluation "
                             f"(attacks: {', '.join(atks) or 'none'})")
        out[g] = tuple(dict.fromkeys(members))
    return out


# ------------------------------------------------------------------------------------------------
# evaluate
# ------------------------------------------------------------------------------------------------
def evaluate(model: nn.Module, data: Any, attacks: Any = None, *, n: int | None = None,
             batch_size: int = 250, device: str | torch.device | None = None,
             per_example: bool = False, certifiers: Any = None, cascade: bool = False,
             seed: int = 0, progress: bool | None = None,
             groups: Mapping[str, Sequence[str]] | None = None) -> pd.DataFrame:
    """Clean, per-attack, worst-case (and certified) accuracy on the first ``n`` examples.

    Args:
        model: maps images ``(N, C, H, W)`` in [0, 1] to logits ``(N, num_classes)``.  Moved to
            ``device`` and put in eval mode with frozen parameters for the evaluation; its
            device, train/eval flags, ``requires_grad`` and ``.grad`` are restored afterwards.
        data: a Dataset yielding ``(x, y)`` or ``(x, y, index)`` items (e.g.
            ``tb.data.load("mnist", split="test")``), an ``(x, y)`` or ``(x, y, index)`` tuple
            of tensors, or an iterable of such batches (a DataLoader).  Images in [0, 1].
        attacks: dict name -> :class:`~toolbox.Attack` (or a list, named by ``attack.name``;
            repeats get ``-2``, ``-3`` suffixes).  ``None``: clean accuracy only.
        n: evaluate the first ``n`` examples (all when None or when the data are shorter).
        batch_size: examples per forward/attack call.
        device: where to evaluate; default the model's device.
        per_example: attach a per-example DataFrame as ``report.attrs["per_example"]`` with
            columns ``index`` (dataset index), ``label``, ``pred`` (clean prediction),
            ``clean_correct``, one bool column per attack (robust against it), ``worst_case``
            and one bool column per certifier (certified).
        certifiers: dict name -> :class:`~toolbox.Certifier` (or a list); adds one row per
            certifier with certified accuracy, a lower bound next to the attacks' upper bounds.
            An example counts as certified only if it is also classified correctly.
        cascade: run each attack only on the examples still robust after the previous ones
            (AutoAttack-style; faster, same worst case for deterministic attacks).  The
            per-attack rows are then *cumulative*: robust against this attack and all earlier
            ones.  Without cascade each attack runs on every clean-correct example.
        seed: each attack gets, per batch, a fresh ``torch.Generator`` seeded from
            ``(seed, attack name, batch number)``: a seeded evaluation is reproducible and does
            not depend on the input type or the other attacks (without cascade).
        progress: ``True``: a tqdm bar on stderr; ``False``: silent; ``None``: the bar on a
            TTY outside CI, elsewhere (logs, batch jobs) a plain status line at most every 30 s
            (nothing for short runs).
        groups: row name -> attack names: one more ``worst-case`` row per group, robust when
            robust against every attack of the group (e.g. ``{"pgd@0.3": ["pgd-ce@0.3",
            "pgd-cw@0.3"]}``: a paper's "worst of CE and CW restarts" at one radius, beside
            runs at other radii).  Not with ``cascade`` (cascaded rows are cumulative).

    Returns:
        A ``pandas.DataFrame`` indexed by row name (``"clean"``, the attack names,
        ``"worst-case"``, the certifier names) with columns ``kind`` (``clean`` / ``attack`` /
        ``worst-case`` / ``certified``), ``accuracy`` (fraction in [0, 1]), ``n`` (examples
        evaluated), ``correct`` (count), ``time_s`` (seconds; the worst-case row holds the total),
        ``threat``, ``eps`` and ``max_norm`` (largest perturbation norm an attack produced, in
        the threat model's norm).  Attacks run on the clean-correct examples only; an example is
        robust when it is classified correctly and the attack's output is still classified
        correctly.  ``report.attrs``: ``warnings`` (list of sanity messages, also issued as
        :class:`SanityWarning`), ``specs`` (each attack's and certifier's hyper-parameters),
        ``seed``, ``cascade`` and, with ``per_example``, ``per_example``.

    Counting rules: examples whose logits contain NaN/inf count as misclassified (clean) or as
    broken (adversarial).  An attack output outside the threat model's ball ∩ [0, 1] box is not
    a valid adversarial example: it does not break the example, and a warning names the attack.

    Sanity flags: NaN/inf in the model's outputs; attack outputs outside ball ∩ box; exactly
    zero input gradients on more than ``ZERO_GRAD_FRACTION`` of the first batch; two forward
    passes disagreeing (a randomised model); outputs that look like probabilities; a black-box
    attack (``white_box = False``) beating every white-box attack (only without ``cascade``,
    where the per-attack numbers are comparable).
    """
    if n is not None:
        check_positive(n, "n", integer=True)
    check_positive(batch_size, "batch_size", integer=True)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an int, got {seed!r}")
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    atks: dict[str, Attack] = _named(attacks, Attack, "attacks")
    certs: dict[str, Certifier] = _named(certifiers, Certifier, "certifiers")
    clash = set(atks) & set(certs)
    if clash:
        raise ValueError(f"certifiers: names {sorted(clash)} are also attack names; rename one")
    grp = _groups(groups, atks, certs, cascade)

    home = _model_device(model)
    dev = torch.device(device) if device is not None else (home or torch.device("cpu"))
    batches, total = _source(data, n, batch_size)
    flags = _Flags()
    t_start = time.perf_counter()

    times = {k: 0.0 for k in ("clean", *atks, *certs)}
    max_norm = {k: 0.0 for k in atks}
    outside = {k: 0 for k in atks}
    nonfinite_adv = {k: 0 for k in atks}
    nonfinite_clean = 0
    cols: dict[str, list[torch.Tensor]] = {k: [] for k in ("index", "label", "pred", "clean_correct",
                                                            *atks, "worst_case", *certs)}
    seen = 0
    bar = status = None
    mode = _progress_mode(progress)
    if mode == "bar":
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc="evaluate", unit="ex", file=sys.stderr, leave=False)
    elif mode == "lines":
        status = StatusLines("evaluate", total)
    takes_norms = {name: _takes_norms(atk.threat) for name, atk in atks.items()}
    moved = home is not None and home != dev
    try:
        if moved:
            model.to(dev)
        with attack_mode(model):
            for b, (x, y, index) in enumerate(batches):
                x, y = x.to(dev), y.to(dev).long()
                check_images(x, "x")
                check_labels(y, x.shape[0], "y")
                if b == 0:
                    _first_batch_checks(model, x, y, flags)
                t0 = time.perf_counter()
                with torch.no_grad():
                    logits = model(x)
                if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or logits.shape[0] != x.shape[0]:
                    shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
                    raise ValueError(f"model output must be logits of shape ({x.shape[0]}, num_classes), got {shape}")
                finite = torch.isfinite(logits).all(1)
                nonfinite_clean += int((~finite).sum())
                pred = logits.argmax(1)
                ok = finite & (pred == y)
                times["clean"] += time.perf_counter() - t0
                robust = ok.clone()
                idx_dev = index.to(dev)
                for name, atk in atks.items():
                    t0 = time.perf_counter()
                    base = robust if cascade else ok
                    res = base.clone()
                    sel = base.nonzero().squeeze(1)
                    if sel.numel():
                        g = torch.Generator(device=dev)
                        g.manual_seed(_derive_seed(seed, name, b))
                        xs, ys = x[sel], y[sel]
                        xa = atk(model, xs, ys, index=idx_dev[sel], generator=g)
                        with torch.no_grad():
                            la = model(xa)
                        fin = torch.isfinite(la).all(1)
                        with torch.no_grad():
                            norms = atk.threat.norm((xa - xs).double(), xs.double())
                        inside = (atk.threat.contains(xa, xs, norms=norms) if takes_norms[name]
                                  else atk.threat.contains(xa, xs))
                        max_norm[name] = max(max_norm[name], float(norms.max()))
                        nonfinite_adv[name] += int((~fin).sum())
                        outside[name] += int((~inside).sum())
                        broken = inside & (~fin | (la.argmax(1) != ys))
                        res[sel[broken]] = False
                    cols[name].append(res.cpu())
                    robust = res if cascade else (robust & res)
                    times[name] += time.perf_counter() - t0
                for name, cert in certs.items():
                    t0 = time.perf_counter()
                    c = cert(model, x, y)
                    flags_c = torch.as_tensor(c.certified, device=dev).reshape(-1).bool()
                    if flags_c.shape[0] != x.shape[0]:
                        raise ValueError(f"certifier {name!r} returned {flags_c.shape[0]} flags for "
                                         f"{x.shape[0]} examples")
                    cols[name].append((flags_c & ok).cpu())
                    times[name] += time.perf_counter() - t0
                cols["index"].append(index.cpu())
                cols["label"].append(y.cpu())
                cols["pred"].append(pred.cpu())
                cols["clean_correct"].append(ok.cpu())
                cols["worst_case"].append(robust.cpu())
                seen += x.shape[0]
                if bar is not None or status is not None:
                    running = {"clean": float(torch.cat(cols["clean_correct"]).float().mean()),
                               "worst": float(torch.cat(cols["worst_case"]).float().mean())}
                    if bar is not None:
                        bar.update(x.shape[0])
                        bar.set_postfix({k: f"{v:.3f}" for k, v in running.items()})
                    else:
                        status.update(seen, **running)
    finally:
        if bar is not None:
            bar.close()
        if status is not None:
            status.close()
        if moved:
            model.to(home)
    if seen == 0:
        raise ValueError("data is empty: no examples to evaluate")

    out = {k: torch.cat(v) for k, v in cols.items()}

    # -- sanity flags ------------------------------------------------------------------------
    if nonfinite_clean:
        flags.add(f"clean: model outputs contain NaN/inf for {nonfinite_clean} of {seen} examples "
                  f"(counted as misclassified)")
    for name, atk in atks.items():
        if nonfinite_adv[name]:
            flags.add(f"attack {name!r} ({_describe(atk.threat)}): model outputs contain NaN/inf on "
                      f"{nonfinite_adv[name]} adversarial examples (counted as broken)")
        if outside[name]:
            flags.add(f"attack {name!r} ({_describe(atk.threat)}): {outside[name]} adversarial examples "
                      f"lie outside the threat model's ball ∩ [0, 1] box (max norm {max_norm[name]:.4g}); "
                      f"they were not counted as successes")
    acc = {k: int(out[k].sum()) / max(len(out[k]), 1) for k in ("clean_correct", *atks, "worst_case", *certs)}
    white = [k for k, a in atks.items() if getattr(a, "white_box", True)]
    if not cascade and white:
        best_white = min(acc[k] for k in white)
        for k, a in atks.items():
            if not getattr(a, "white_box", True) and acc[k] < best_white:
                flags.add(f"black-box attack {k!r} ({100 * acc[k]:.2f}%) beats the best white-box attack "
                          f"({100 * best_white:.2f}%): a sign of gradient masking; white-box numbers "
                          f"alone would overstate robustness")

    # -- the report ---------------------------------------------------------------------------
    def row(name: str, kind: str, correct: torch.Tensor, t: float, threat: Any, eps: float,
            mnorm: float) -> dict[str, Any]:
        c = int(correct.sum())
        return {"name": name, "kind": kind, "accuracy": c / seen, "n": seen, "correct": c,
                "time_s": t, "threat": threat, "eps": eps, "max_norm": mnorm}

    rows = [row("clean", "clean", out["clean_correct"], times["clean"], None, 0.0, 0.0)]
    for k, a in atks.items():
        rows.append(row(k, "attack", out[k], times[k], a.threat.name, _eps_value(a.threat), max_norm[k]))
    names = sorted({a.threat.name for a in atks.values()})
    epss = {_eps_value(a.threat) for a in atks.values()}
    rows.append(row("worst-case", "worst-case", out["worst_case"], time.perf_counter() - t_start,
                    "+".join(names) if names else None,
                    epss.pop() if len(epss) == 1 else (0.0 if not atks else float("nan")),
                    max(max_norm.values()) if len(names) == 1 else (0.0 if not atks else float("nan"))))
    for g, members in grp.items():
        out[g] = torch.stack([out[k] for k in members]).all(0)
        g_names = sorted({atks[k].threat.name for k in members})
        g_eps = {_eps_value(atks[k].threat) for k in members}
        rows.append(row(g, "worst-case", out[g], sum(times[k] for k in members), "+".join(g_names),
                        g_eps.pop() if len(g_eps) == 1 else float("nan"),
                        max(max_norm[k] for k in members) if len(g_names) == 1 else float("nan")))
    for k, c in certs.items():
        rows.append(row(k, "certified", out[k], times[k], c.threat.name, _eps_value(c.threat), float("nan")))
    report = pd.DataFrame(rows).set_index("name")

    report.attrs["warnings"] = list(flags.messages)
    report.attrs["specs"] = {**{k: a.spec() for k, a in atks.items()}, **{k: c.spec() for k, c in certs.items()}}
    report.attrs["seed"] = seed
    report.attrs["cascade"] = bool(cascade)
    report.attrs["groups"] = {g: list(m) for g, m in grp.items()}
    if per_example:
        pe = pd.DataFrame({k: v.numpy() for k, v in out.items()})
        report.attrs["per_example"] = pe
    for msg in flags.messages:
        warnings.warn(msg, SanityWarning, stacklevel=2)
    return report


# ------------------------------------------------------------------------------------------------
# robustness curve
# ------------------------------------------------------------------------------------------------
def robustness_curve(model: nn.Module, data: Any, attack: Attack, eps_list: Sequence[float], *,
                     n: int | None = None, batch_size: int = 250,
                     device: str | torch.device | None = None, seed: int = 0,
                     progress: bool | None = None,
                     certifier: Certifier | Callable[[float], Certifier] | None = None) -> pd.DataFrame:
    """Accuracy against radius: ``attack.with_eps(e)`` for every ``e`` in ``eps_list``.

    ``eps = 0`` is clean accuracy.  ``data``, ``n``, ``batch_size``, ``device``, ``seed`` and
    ``progress`` are as in :func:`evaluate` (one bar over the radii).  ``certifier``: a
    :class:`~toolbox.Certifier` (evaluated at each radius through a copy whose ``threat`` is
    ``certifier.threat.with_eps(e)``) or a callable ``eps -> Certifier``.

    Returns a DataFrame sorted by eps with columns ``eps``, ``accuracy`` (robust accuracy
    against the attack at that radius, a fraction), ``n``, ``accuracy_nested`` (an example
    broken at a smaller radius counts as broken at every larger one, since the smaller ball
    lies inside the larger: a tighter valid upper bound, non-increasing by construction),
    ``time_s`` and, with a certifier, ``certified_accuracy`` (a lower bound).  ``df.attrs``:
    ``attack`` (the attack's name), ``threat``, ``warnings`` (sanity messages of all radii).
    """
    if not isinstance(attack, Attack):
        raise ValueError(f"attack must be a toolbox Attack, got {type(attack).__name__}")
    if isinstance(eps_list, (str, bytes)) or not isinstance(eps_list, Iterable):
        raise ValueError(f"eps_list must be a sequence of radii, got {eps_list!r}")
    eps_values = []
    for e in eps_list:
        if isinstance(e, torch.Tensor) and e.dim() == 0:
            e = float(e)
        eps_values.append(float(check_eps(e, "eps_list")))
    if not eps_values:
        raise ValueError("eps_list must hold at least one radius, got an empty sequence")
    if certifier is not None and not isinstance(certifier, Certifier) and not callable(certifier):
        raise ValueError(f"certifier must be a Certifier or a callable eps -> Certifier, got "
                         f"{type(certifier).__name__}")
    if n is not None:
        check_positive(n, "n", integer=True)
    check_positive(batch_size, "batch_size", integer=True)
    data_t = _materialize(data, n, batch_size)
    grid = sorted(set(eps_values))
    name = attack.name
    rows: list[dict[str, Any]] = []
    messages: list[str] = []
    nested: torch.Tensor | None = None
    bar = status = None
    mode = _progress_mode(progress)
    if mode == "bar":
        from tqdm.auto import tqdm

        bar = tqdm(total=len(grid), desc="robustness curve", unit="eps", file=sys.stderr, leave=False)
    elif mode == "lines":
        status = StatusLines("robustness curve", len(grid), unit="radii")
    try:
        for e in grid:
            atks = {} if e == 0 else {name: attack.with_eps(e)}
            certs = None
            if certifier is not None:
                if isinstance(certifier, Certifier):
                    import copy

                    c = copy.copy(certifier)
                    c.threat = certifier.threat.with_eps(e)
                else:
                    c = certifier(e)
                certs = {"certified": c}
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", SanityWarning)
                rep = evaluate(model, data_t, atks, batch_size=batch_size, device=device,
                               per_example=True, certifiers=certs, seed=seed, progress=False)
            key = name if atks else "clean"
            robust = torch.tensor(rep.attrs["per_example"]["worst_case"].to_numpy(dtype=bool))
            nested = robust if nested is None else (nested & robust)
            r = {"eps": e, "accuracy": float(rep.loc[key, "accuracy"]), "n": int(rep.loc[key, "n"]),
                 "accuracy_nested": int(nested.sum()) / max(len(nested), 1),
                 "time_s": float(rep.loc["worst-case", "time_s"])}
            if certs is not None:
                r["certified_accuracy"] = float(rep.loc["certified", "accuracy"])
            rows.append(r)
            messages += [m for m in rep.attrs["warnings"] if m not in messages]
            if bar is not None:
                bar.update(1)
            if status is not None:
                status.update(len(rows), eps=e, accuracy=r["accuracy"])
    finally:
        if bar is not None:
            bar.close()
        if status is not None:
            status.close()
    df = pd.DataFrame(rows)
    df.attrs["attack"] = name
    df.attrs["threat"] = attack.threat.name
    df.attrs["warnings"] = messages
    for msg in messages:
        warnings.warn(msg, SanityWarning, stacklevel=2)
    return df
