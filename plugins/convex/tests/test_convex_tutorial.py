"""The tutorial's --quick mode runs end to end (digits, under a minute) and its printed
numbers keep their order: certified <= PGD <= clean, the convex model certifies more than
the standard one, and the cascade score does not drop with the second stage."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from toolbox.testing import run_script

TUTORIAL = Path(__file__).resolve().parents[3] / "tutorials" / "certified_training.py"


@pytest.mark.slow
def test_tutorial_quick(tmp_path):
    stdout = run_script(TUTORIAL, "--quick", "--out", tmp_path, timeout=240)
    text = stdout
    m = re.search(r"certified error: standard ([\d.]+)%, certified model ([\d.]+)%", text)
    assert m, text[-2000:]
    assert float(m.group(2)) < float(m.group(1)) - 10          # measured 58.3 % -> 35.7 %
    casc = [float(v) for v in re.findall(r"cascade with \d stage\(s\): certified ([\d.]+)%", text)]
    assert len(casc) == 2 and casc[1] >= casc[0], casc
    assert "certified radius (certified)" in text
    assert (tmp_path / "convex_certified_vs_pgd.png").stat().st_size > 1000
