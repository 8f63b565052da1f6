"""Per-step schedules for the learning rate and the attack radius.

A schedule is a function of training *progress measured in epochs* (a float: ``2.5`` is the
middle of the third epoch) returning a value.  The Trainer evaluates it before every
optimizer step at ``progress = (step + 1) / steps_per_epoch`` (the progress reached once this
step is done, as fast_adversarial's ``lr_schedule(epoch + (i + 1) / len(loader))``).

Specs accepted by :func:`make_schedule`:

- a number: a constant;
- a callable ``f(progress) -> float``: used as is;
- a dict with ``kind`` (or a bare kind name with no other arguments)::

    {"kind": "constant", "value": 0.1}
    {"kind": "linear", "start": 0.0, "end": 0.3, "epochs": 5}        # ramp, then stay at end
    {"kind": "cyclic", "peak": 5e-3, "peak_at": 0.4, "epochs": 15}  # 0 -> peak -> 0 (one-cycle)
    {"kind": "piecewise", "knots": [0, 100, 100, 150], "values": [0.1, 0.1, 0.01, 0.01]}

  ``linear`` also takes ``delay`` (epochs at ``start`` before the ramp begins).
  ``cyclic`` (alias ``one-cycle``) rises linearly from ``start`` (default 0) at progress 0 to
  ``peak`` at ``peak_at * epochs``, then falls linearly to ``end`` (default 0) at ``epochs``;
  ``epochs`` defaults to the length of the run (the Trainer fills it in).
  ``piecewise`` interpolates linearly between ``(knot, value)`` pairs (knots in epochs,
  non-decreasing; a repeated knot makes a step: the later value applies from that knot on)
  and holds the end values outside them.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable
from typing import Any

from .._checks import check_positive

Schedule = Callable[[float], float]

KINDS = ("constant", "linear", "cyclic", "one-cycle", "piecewise")


class _Spec:
    """A schedule built from a spec; callable, with a stable ``spec`` for fingerprints."""

    def __init__(self, fn: Schedule, spec: dict[str, Any]) -> None:
        self._fn = fn
        self.spec = spec

    def __call__(self, progress: float) -> float:
        return self._fn(float(progress))

    def __repr__(self) -> str:
        return f"Schedule({self.spec})"


def _num(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def _allowed(spec: dict, kind: str, keys: set[str]) -> None:
    extra = sorted(set(spec) - keys - {"kind"})
    if extra:
        raise ValueError(f"schedule kind {kind!r} got unknown keys {extra}; allowed: {sorted(keys)}")


def make_schedule(spec: Any, *, epochs: int | None = None) -> Schedule | None:
    """Build a schedule ``f(progress_in_epochs) -> float`` from ``spec`` (see module doc).

    ``epochs`` (the run's length) fills in a ``cyclic`` schedule's ``epochs`` when the spec
    leaves it out.  ``None`` gives ``None`` (no schedule).  An unknown kind or a bad value
    raises ``ValueError`` naming it.
    """
    if spec is None:
        return None
    if isinstance(spec, _Spec):
        return spec
    if isinstance(spec, bool):
        raise ValueError(f"schedule spec must be a number, a callable or a dict, got {spec!r}")
    if isinstance(spec, (int, float)):
        v = _num(spec, "schedule value")
        return _Spec(lambda p: v, {"kind": "constant", "value": v})
    if callable(spec):
        return spec
    if isinstance(spec, str):
        spec = {"kind": spec}
    if not isinstance(spec, dict):
        raise ValueError(f"schedule spec must be a number, a callable or a dict with 'kind', got {spec!r}")
    spec = dict(spec)
    kind = spec.get("kind")
    if kind not in KINDS:
        raise ValueError(f"schedule kind must be one of {', '.join(map(repr, KINDS))}, got {kind!r}")

    if kind == "constant":
        _allowed(spec, kind, {"value"})
        if "value" not in spec:
            raise ValueError("schedule kind 'constant' needs 'value'")
        v = _num(spec["value"], "value")
        return _Spec(lambda p: v, {"kind": kind, "value": v})

    if kind == "linear":
        _allowed(spec, kind, {"start", "end", "epochs", "delay"})
        for k in ("start", "end", "epochs"):
            if k not in spec:
                raise ValueError(f"schedule kind 'linear' needs 'start', 'end' and 'epochs'; missing {k!r}")
        a, b = _num(spec["start"], "start"), _num(spec["end"], "end")
        length = float(check_positive(_num(spec["epochs"], "epochs"), "epochs", allow_zero=True))
        delay = float(check_positive(_num(spec.get("delay", 0.0), "delay"), "delay", allow_zero=True))

        def linear(p: float) -> float:
            if p <= delay:
                return a
            if length == 0 or p >= delay + length:
                return b
            return a + (b - a) * (p - delay) / length

        return _Spec(linear, {"kind": kind, "start": a, "end": b, "epochs": length, "delay": delay})

    if kind in ("cyclic", "one-cycle"):
        _allowed(spec, kind, {"peak", "peak_at", "epochs", "start", "end"})
        if "peak" not in spec:
            raise ValueError(f"schedule kind {kind!r} needs 'peak'")
        peak = _num(spec["peak"], "peak")
        frac = _num(spec.get("peak_at", 0.4), "peak_at")
        if not 0.0 <= frac <= 1.0:
            raise ValueError(f"peak_at must be in [0, 1] (a fraction of training), got {frac}")
        total = spec.get("epochs", epochs)
        if total is None:
            raise ValueError(f"schedule kind {kind!r} needs 'epochs' (the Trainer fills it in from fit(epochs=))")
        total = float(check_positive(_num(total, "epochs"), "epochs"))
        a, b = _num(spec.get("start", 0.0), "start"), _num(spec.get("end", 0.0), "end")
        return _piecewise([0.0, frac * total, total], [a, peak, b],
                          {"kind": "cyclic", "peak": peak, "peak_at": frac, "epochs": total, "start": a, "end": b})

    # piecewise
    _allowed(spec, kind, {"knots", "values"})
    knots, values = spec.get("knots"), spec.get("values")
    if not isinstance(knots, (list, tuple)) or not isinstance(values, (list, tuple)) or not knots:
        raise ValueError(f"schedule kind 'piecewise' needs non-empty lists 'knots' and 'values', got {knots!r}, {values!r}")
    if len(knots) != len(values):
        raise ValueError(f"piecewise knots and values must have the same length, got {len(knots)} and {len(values)}")
    ks = [_num(k, "knots") for k in knots]
    vs = [_num(v, "values") for v in values]
    if any(k2 < k1 for k1, k2 in zip(ks, ks[1:], strict=False)):
        raise ValueError(f"piecewise knots must be non-decreasing, got {ks}")
    return _piecewise(ks, vs, {"kind": "piecewise", "knots": ks, "values": vs})


def _piecewise(ks: list[float], vs: list[float], spec: dict) -> _Spec:
    def f(p: float) -> float:
        if p <= ks[0]:
            return vs[0] if p < ks[0] else vs[bisect.bisect_right(ks, p) - 1]
        i = bisect.bisect_right(ks, p) - 1          # last knot <= p
        if i >= len(ks) - 1:
            return vs[-1]
        k0, k1 = ks[i], ks[i + 1]
        return vs[i] + (vs[i + 1] - vs[i]) * (p - k0) / (k1 - k0)   # k1 > k0 since i is the last knot <= p

    return _Spec(f, spec)


def schedule_spec(schedule: Any) -> Any:
    """A plain description of a schedule for checkpoint fingerprints."""
    if schedule is None:
        return None
    if isinstance(schedule, _Spec):
        return schedule.spec
    return f"callable:{getattr(schedule, '__qualname__', type(schedule).__name__)}"
