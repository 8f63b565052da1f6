"""The speed benchmark (``benchmarks/bench_atas.py``) runs and reports what the issue asks:
the ATAS / FGSM-RS epoch ratio and the store's bytes per example.  A tiny run (200 images,
one repetition); the timing itself is not asserted (a 2-step epoch is all noise)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_atas.py"


def test_benchmark_runs_and_reports(capsys):
    spec = importlib.util.spec_from_file_location("bench_atas", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    threads = torch.get_num_threads()
    try:
        rc = mod.main(["--n", "200", "--reps", "1", "--warmup", "0", "--target", "1000"])
        out = capsys.readouterr().out
        rc_fail = mod.main(["--n", "200", "--reps", "1", "--warmup", "0", "--target", "0"])
    finally:
        torch.set_num_threads(threads)
    assert rc == 0, out
    for name in ("fgsm-rs", "atta", "atas"):
        assert f"\n{name} " in out
    assert "ATAS / FGSM-RS epoch: wall" in out and "PASS" in out
    # 1x28x28 float32 perturbation + int64 generation + 3 float32 scalars; 3x40x40 on CIFAR
    assert "MNIST 3156 bytes per example" in out and "CIFAR-10 with crop+flip 19220 bytes" in out
    assert rc_fail == 1                                               # over the target: exit 1
