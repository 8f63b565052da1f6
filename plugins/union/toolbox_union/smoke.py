"""End-to-end smoke runs of the reproduction configs on a tiny budget.

The full Table 5.2 / 5.3 runs take GPU hours and stay opt-in; this module checks that every
config still builds, trains and evaluates through the same path as ``toolbox repro`` /
``toolbox train`` (:func:`toolbox.cli.run_experiment`), with overrides that shrink only the
budget: a small training subset, one epoch, one step per training attack, evaluation attacks
with one iteration and one restart on a few test images.  The figures of such a run mean
nothing; the structure of its report does.

CIFAR-10 configs run on the real files when ``cifar_root`` (or ``$TOOLBOX_DATA``) holds them,
else on a synthetic stand-in of the same format (random images, written to a temporary
folder).

``python -m toolbox_union.smoke [CONFIG ...]`` runs every config this plugin ships (or the given
ones) and prints one JSON line per config.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import sys
import tempfile
import time
import tomllib
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["smoke_overrides", "fake_cifar10", "smoke_run", "main"]

#: defenses whose per-norm ``steps`` is a list (one value per norm)
_PER_NORM = ("worst-pgd", "pgd-aug")


def smoke_overrides(path: str | os.PathLike, *, n_train: int = 200, n_eval: int = 20,
                    batch_size: int = 100) -> list[str]:
    """``--set`` overrides (``"key.path=value"`` strings) that shrink config ``path`` to a tiny
    budget: ``n_train`` training images, one epoch of batches of ``batch_size``, one iteration
    per training attack, one iteration and restart per evaluation attack, ``n_eval`` test
    images, no mixed precision.  Everything else (model, data, defense, schedules, radii,
    step sizes) is left as the config has it."""
    raw = tomllib.loads(Path(path).read_text())
    ov = [f"data.n_train={int(n_train)}", "train.epochs=1", f"train.batch_size={int(batch_size)}",
          f"eval.n={int(n_eval)}"]
    if "amp" in raw.get("train", {}):
        ov.append("train.amp=false")
    d = raw.get("defense", {})
    if isinstance(d.get("attack"), dict) and "steps" in d["attack"]:
        ov.append("defense.attack.steps=1")
    elif d.get("name") in _PER_NORM and isinstance(d.get("steps"), list):
        ov.append(f"defense.steps=[{', '.join('1' for _ in d['steps'])}]")
    elif "steps" in d:
        ov.append("defense.steps=1")
    for name, a in raw.get("eval", {}).get("attacks", {}).items():
        for key in ("steps", "restarts"):
            if key in a:
                ov.append(f"eval.attacks.{name}.{key}=1")
    return ov


def fake_cifar10(root: str | os.PathLike, n_per_batch: int = 8, seed: int = 0) -> Path:
    """Write a synthetic CIFAR-10 in the python-pickle batch format to ``root`` (five training
    batches and a test batch of ``n_per_batch`` random uint8 images each); returns ``root``."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8),
                 b"labels": [int(v) for v in rng.integers(0, 10, n_per_batch)]}
        (root / name).write_bytes(pickle.dumps(batch))
    return root


def _cifar_available(root: str | os.PathLike | None) -> bool:
    import toolbox as tb

    try:
        tb.data.load("cifar10", split="test", **({"root": str(root)} if root else {}))
    except Exception:  # noqa: BLE001 - any failure to find/read the files: use the stand-in
        return False
    return True


def smoke_run(path: str | os.PathLike, run_dir: str | os.PathLike, *, cifar_root: str | None = None,
              n_train: int = 200, n_eval: int = 20, batch_size: int = 100,
              log: Any = None) -> dict[str, Any]:
    """Run config ``path`` end to end on the tiny budget of :func:`smoke_overrides` into
    ``run_dir`` (must not hold a run).

    Returns a dict: ``config`` (file name), ``overrides``, ``seconds``, ``synthetic`` (whether a
    stand-in CIFAR-10 was used), ``rows`` (the evaluation rows, accuracies as fractions) and
    ``files`` (what the run folder holds).
    """
    from toolbox.cli import run_experiment
    from toolbox.config import load

    path, run_dir = Path(path), Path(run_dir)
    raw = tomllib.loads(path.read_text())
    ov = smoke_overrides(path, n_train=n_train, n_eval=n_eval, batch_size=batch_size)
    synthetic = False
    if raw.get("data", {}).get("name") == "cifar10":
        if not _cifar_available(cifar_root):
            cifar_root = str(fake_cifar10(run_dir.parent / f"{run_dir.name}-cifar10"))
            synthetic = True
        if cifar_root:
            ov.append(f"data.root={json.dumps(str(cifar_root))}")
    cfg = load(path, ov)
    t0 = time.perf_counter()
    res = run_experiment(cfg, run_dir, log=log or (lambda s: None))
    return {"config": path.name, "overrides": ov, "seconds": time.perf_counter() - t0,
            "synthetic": synthetic, "rows": res.rows, "files": sorted(p.name for p in run_dir.iterdir())}


def main(argv: list[str] | None = None) -> int:
    """CLI: smoke-run the given configs (default: all of this plugin's); exit 1 on a failure."""
    from .plugin import repro_dir

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("configs", nargs="*", help="config files (default: plugins/union/repro/*.toml)")
    ap.add_argument("--cifar-root", default=None, help="real CIFAR-10 batches (default: synthetic)")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)
    import torch

    torch.set_num_threads(a.threads)
    paths = [Path(p) for p in a.configs] or sorted(repro_dir().glob("*.toml"))
    failed = 0
    with tempfile.TemporaryDirectory() as tmp:
        for i, p in enumerate(paths):
            try:
                r = smoke_run(p, Path(tmp) / f"run{i}", cifar_root=a.cifar_root)
                acc = {row["attack"]: round(100 * row["accuracy"], 1) for row in r["rows"]}
                print(json.dumps({"config": r["config"], "ok": True, "seconds": round(r["seconds"], 1),
                                  "synthetic": r["synthetic"], "accuracy": acc}), flush=True)
            except Exception as e:  # noqa: BLE001 - report every config, then fail
                failed += 1
                print(json.dumps({"config": p.name, "ok": False, "error": f"{type(e).__name__}: {e}"}), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
