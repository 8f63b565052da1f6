"""The tutorial runs top to bottom in its reduced mode (``--quick``, tiny subsets)."""

from __future__ import annotations

from pathlib import Path

import pytest

from toolbox.testing import run_script

ROOT = Path(__file__).resolve().parents[3]
SCRIPT = ROOT / "tutorials" / "fast_adversarial_training.py"


@pytest.mark.slow  # ~15-35 s: a subprocess importing torch and training four tiny runs
def test_tutorial_quick_mode_runs(tmp_path):
    out = run_script(SCRIPT, "--quick", "--out", tmp_path, timeout=300)
    for step in ("[1] FGSM-RS", "[2] the box-clamped", "[3] PGD-AT", "[4] evaluation"):
        assert step in out
    table = (tmp_path / "results.md").read_text()
    assert "| FGSM-RS |" in table and "| PGD-AT |" in table and "Table 4.4" in table
    for png in ("robust_error.png", "delta_histogram.png", "co_checks.png"):
        assert (tmp_path / png).read_bytes()[:4] == b"\x89PNG"
