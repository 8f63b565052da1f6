"""The tutorial's --quick mode runs end to end (digits, under a minute)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

TUTORIAL = Path(__file__).resolve().parents[3] / "tutorials" / "adaptive_step_atas.py"


@pytest.mark.slow
def test_tutorial_quick(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", MPLBACKEND="Agg")
    out = subprocess.run([sys.executable, str(TUTORIAL), "--quick", "--out", str(tmp_path)], env=env,
                         capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "ATAS store:" in out.stdout and "bytes per example: 276" in out.stdout
    assert (tmp_path / "atas_gradnorm.png").stat().st_size > 1000
