"""Schedules for the learning rate and eps: values at given progress, specs, bad input."""

from __future__ import annotations

import math

import pytest

from toolbox.train import make_schedule
from toolbox.train.schedules import schedule_spec


def test_none_number_and_constant():
    assert make_schedule(None) is None
    f = make_schedule(0.25)
    assert [f(p) for p in (0, 1.5, 100)] == [0.25, 0.25, 0.25]
    g = make_schedule({"kind": "constant", "value": 3})
    assert g(7.3) == 3.0 and schedule_spec(g) == {"kind": "constant", "value": 3.0}


def test_linear_ramp_with_delay_then_holds():
    f = make_schedule({"kind": "linear", "start": 0.0, "end": 0.3, "epochs": 2, "delay": 1})
    assert f(0) == 0.0 and f(1) == 0.0
    assert f(1.5) == pytest.approx(0.075) and f(2) == pytest.approx(0.15)
    assert f(3) == pytest.approx(0.3) and f(10) == pytest.approx(0.3)
    down = make_schedule({"kind": "linear", "start": 1.0, "end": 0.0, "epochs": 4})
    assert down(1) == pytest.approx(0.75)
    step = make_schedule({"kind": "linear", "start": 1.0, "end": 2.0, "epochs": 0})  # zero-length ramp
    assert step(0) == 1.0 and step(0.01) == 2.0


def test_cyclic_rises_to_peak_then_falls_and_takes_epochs_from_fit():
    f = make_schedule({"kind": "cyclic", "peak": 5e-3, "peak_at": 0.4}, epochs=10)
    assert f(0) == 0.0 and f(4) == pytest.approx(5e-3) and f(10) == 0.0
    assert f(2) == pytest.approx(2.5e-3) and f(7) == pytest.approx(2.5e-3)
    assert f(12) == 0.0
    one = make_schedule({"kind": "one-cycle", "peak": 1.0, "epochs": 5, "start": 0.1, "end": 0.2})
    assert one(0) == pytest.approx(0.1) and one(2) == pytest.approx(1.0) and one(5) == pytest.approx(0.2)
    assert schedule_spec(one)["kind"] == "cyclic" and schedule_spec(one)["epochs"] == 5.0
    with pytest.raises(ValueError, match="epochs"):
        make_schedule({"kind": "cyclic", "peak": 1.0})  # nobody filled epochs in


def test_piecewise_interpolates_steps_at_repeated_knots_and_holds_ends():
    f = make_schedule({"kind": "piecewise", "knots": [0, 100, 100, 150], "values": [0.1, 0.1, 0.01, 0.01]})
    assert f(-1) == 0.1 and f(50) == pytest.approx(0.1)
    assert f(99.999) == pytest.approx(0.1) and f(100) == pytest.approx(0.01) and f(200) == pytest.approx(0.01)
    g = make_schedule({"kind": "piecewise", "knots": [1, 3], "values": [0.0, 1.0]})
    assert g(0) == 0.0 and g(2) == pytest.approx(0.5) and g(2.5) == pytest.approx(0.75) and g(4) == 1.0


def test_callable_passes_through():
    def fn(p):
        return 2 * p

    assert make_schedule(fn) is fn and schedule_spec(fn) == "callable:test_callable_passes_through.<locals>.fn"


@pytest.mark.parametrize("spec, match", [
    ({"kind": "exp"}, "kind"),
    ("cosine", "kind"),
    (True, "schedule spec"),
    ([1, 2], "schedule spec"),
    (math.nan, "finite"),
    ({"kind": "constant"}, "value"),
    ({"kind": "constant", "value": 1, "extra": 2}, "unknown keys"),
    ({"kind": "linear", "start": 0, "end": 1}, "epochs"),
    ({"kind": "linear", "start": 0, "end": 1, "epochs": -1}, "epochs"),
    ({"kind": "linear", "start": 0, "end": "x", "epochs": 1}, "end"),
    ({"kind": "cyclic", "epochs": 3}, "peak"),
    ({"kind": "cyclic", "peak": 1, "peak_at": 1.5, "epochs": 3}, "peak_at"),
    ({"kind": "piecewise", "knots": [0, 1], "values": [1]}, "same length"),
    ({"kind": "piecewise", "knots": [2, 1], "values": [1, 2]}, "non-decreasing"),
    ({"kind": "piecewise", "knots": [], "values": []}, "knots"),
])
def test_bad_specs_raise_value_error_naming_the_problem(spec, match):
    with pytest.raises(ValueError, match=match):
        make_schedule(spec, epochs=3)
