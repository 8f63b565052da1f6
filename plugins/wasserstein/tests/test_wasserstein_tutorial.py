"""The tutorial's --quick mode runs end to end (digits, about a minute on one thread)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from toolbox.testing import run_script

TUTORIAL = Path(__file__).resolve().parents[3] / "tutorials" / "wasserstein_attacks.py"


@pytest.mark.slow
def test_tutorial_quick(tmp_path):
    stdout = run_script(TUTORIAL, "--quick", "--out", tmp_path, timeout=400)
    text = stdout
    # the projection is certified: the exact LP cost is within the radius, mass is kept
    m = re.search(r"certified plan cost ([\d.]+), exact LP cost ([\d.]+), mass kept ([\d.]+)", text)
    assert m and float(m.group(2)) <= 0.2 + 1e-6 and float(m.group(3)) == 1.0
    broken = re.search(r"broken (\d+)/(\d+)", text)
    assert broken and int(broken.group(1)) > int(broken.group(2)) // 2
    assert "wasserstein-at" in text and "certified accuracy" in text
    # adaptive-radius adversarial training makes the largest radius's accuracy go up
    curves = re.findall(r"adversarial accuracy ((?:\d+% at eps [\d.]+(?:, )?)+)", text)
    assert len(curves) == 2, curves
    before, after = ([int(v) for v in re.findall(r"(\d+)% at eps", c)] for c in curves)
    assert after[-1] > before[-1], (before, after)
    for name in ("wasserstein_heatmaps.png", "wasserstein_curve.png"):
        assert (tmp_path / name).stat().st_size > 1000
