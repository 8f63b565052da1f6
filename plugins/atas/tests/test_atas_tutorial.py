"""The tutorial's --quick mode runs end to end (digits, under a minute)."""

from __future__ import annotations

from pathlib import Path

import pytest

from toolbox.testing import run_script

TUTORIAL = Path(__file__).resolve().parents[3] / "tutorials" / "adaptive_step_atas.py"


@pytest.mark.slow
def test_tutorial_quick(tmp_path):
    stdout = run_script(TUTORIAL, "--quick", "--out", tmp_path, timeout=180)
    assert "ATAS store:" in stdout and "bytes per example: 276" in stdout
    assert (tmp_path / "atas_gradnorm.png").stat().st_size > 1000
