"""The tutorial runs top to bottom in its reduced mode (``--quick``, tiny subsets)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
SCRIPT = ROOT / "tutorials" / "fast_adversarial_training.py"


@pytest.mark.slow  # ~15-35 s: a subprocess importing torch and training four tiny runs
def test_tutorial_quick_mode_runs(tmp_path):
    env = {**os.environ, "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=120, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for step in ("[1] FGSM-RS", "[2] the box-clamped", "[3] PGD-AT", "[4] evaluation"):
        assert step in proc.stdout
    table = (tmp_path / "results.md").read_text()
    assert "| FGSM-RS |" in table and "| PGD-AT |" in table and "Table 4.4" in table
    for png in ("robust_error.png", "delta_histogram.png", "co_checks.png"):
        assert (tmp_path / png).read_bytes()[:4] == b"\x89PNG"
