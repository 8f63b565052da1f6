"""Speed of ATAS against FGSM-RS on the kernel Trainer (issue 6, "Speed").

The claim (Huang et al.: negligible overhead): one ATAS epoch costs at most 1.10x one FGSM-RS
epoch.  Both do two forwards and two backwards per batch; ATAS adds the per-example
input-gradient norm, the EMA update and the per-example store traffic (gather the stored
perturbation and ``v``, scatter them back).  ATTA (stored perturbation, fixed step) is timed
too, so the table separates the store's cost (ATTA / FGSM-RS) from the adaptive step's
(ATAS / ATTA).

Setting: the fast-AT MNIST net (``mnist-small``), eps 0.3, largest step 0.6 (2 eps, the
scale-down of ``toolbox_atas.compare``), batch 100, Adam with the cyclic LR, one epoch over
the first ``--n`` training images per repetition, each on a fresh model and Trainer (so every
ATAS/ATTA epoch allocates its store and draws every perturbation, the costliest epoch).
FGSM-RS is the kernel's ``adversarial`` defense with the ``fgsm`` attack from an unclamped
uniform start (Wong et al.'s MNIST code).  Repetitions are interleaved in a freshly shuffled
order (``benchmarks/_common.py``) and the table reports medians and the median of the
per-repetition ratios, wall clock and process CPU time (on a shared machine CPU time moves
less when other processes compete for the cores).

It also reports the store's memory, bytes per example: measured from the MNIST run's store
and from one CIFAR-10-shaped batch with crop+flip (``RandomCropFlip(4)``, the stored
perturbation then lives on the 40 x 40 padded frame).

Usage (from the repository root)::

    python plugins/atas/benchmarks/bench_atas.py [--n 60000] [--reps 5] [--warmup 1] [--threads 1]

Exit status 1 when the median ATAS / FGSM-RS wall-clock ratio exceeds ``--target`` (1.10).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "benchmarks"))
from _common import interleaved, median_ratio, ratio_table  # noqa: E402
from toolbox_atas.compare import make_defense  # noqa: E402
from toolbox_atas.defenses import store_bytes_per_example  # noqa: E402

import toolbox as tb  # noqa: E402
from toolbox.train.store import Store  # noqa: E402

EPS, STEP, BATCH = 0.3, 0.6, 100


def one_epoch(method: str, train, seed: int, keep: dict) -> None:
    """Train a fresh ``mnist-small`` for one epoch with ``method`` (see ``make_defense``)."""
    model = tb.models.create("mnist-small", seed=seed)
    trainer = tb.Trainer(model, make_defense(method, EPS, STEP), optimizer={"name": "adam", "lr": 5e-3},
                         lr_schedule={"kind": "cyclic", "peak": 5e-3, "peak_at": 0.4}, batch_size=BATCH,
                         seed=seed)
    trainer.fit(train, epochs=1)
    keep[method] = trainer


def cifar_store_bytes() -> int:
    """Bytes per example of the ATAS store for CIFAR-10-shaped data (3 x 32 x 32) with
    crop+flip (padding 4): one defense call on a random batch and a tiny conv net."""
    g = torch.Generator().manual_seed(0)
    n = 8
    x, y = torch.rand(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g)
    x, y, extra = tb.data.RandomCropFlip(4)(x, y, g)
    extra["generator"] = g
    model = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2), nn.ReLU(), nn.Flatten(), nn.LazyLinear(10))
    model(x)
    store = Store(n)
    d = tb.defense("atas", threat=tb.Linf(8 / 255))
    d.loss(model, tb.Batch(x, y, torch.arange(n), 0, 0, None, store, None, extra))
    return store_bytes_per_example(store, d.prefix)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=60000, help="training images per epoch (default: full MNIST)")
    p.add_argument("--reps", type=int, default=5, help="timed repetitions (epochs per method)")
    p.add_argument("--warmup", type=int, default=1, help="untimed repetitions first")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--methods", nargs="+", default=["fgsm-rs", "atta", "atas"])
    p.add_argument("--target", type=float, default=1.10, help="largest allowed ATAS / FGSM-RS ratio")
    a = p.parse_args(argv)
    if a.n < BATCH or a.reps < 1 or a.warmup < 0 or a.threads < 1:
        p.error("need --n >= 100, --reps >= 1, --warmup >= 0, --threads >= 1")
    if "fgsm-rs" not in a.methods:
        p.error("--methods must include fgsm-rs (the base of the ratios)")
    torch.set_num_threads(a.threads)
    full = tb.data.load("mnist")
    train = tb.data.subset(full, torch.arange(min(a.n, len(full))))
    keep: dict = {}
    seeds = iter(range(10**6))
    fns = {m: (lambda m=m: one_epoch(m, train, next(seeds), keep)) for m in a.methods}
    cpu: dict[str, list[float]] = {}
    times = interleaved(fns, a.reps, warmup=a.warmup, seed=0, cpu=cpu)

    print(f"one epoch over {len(train)} MNIST images, mnist-small, batch {BATCH}, eps {EPS}, step (max) {STEP}, "
          f"{a.threads} thread(s); {a.warmup} warm-up + {a.reps} interleaved repetitions; ratio = median of "
          "per-repetition ratios to fgsm-rs")
    print(ratio_table(times, "fgsm-rs", cpu))
    for m in a.methods:
        print(f"  {m:8s} wall s per epoch: " + " ".join(f"{t:.2f}" for t in times[m]))
    rows = {}
    for m in a.methods:
        if m != "fgsm-rs":
            rows[m] = (median_ratio(times, m, "fgsm-rs"), median_ratio(cpu, m, "fgsm-rs"))
    if "atas" in rows and "atta" in rows:
        print(f"adaptive step alone (atas / atta): wall {median_ratio(times, 'atas', 'atta'):.3f}, "
              f"cpu {median_ratio(cpu, 'atas', 'atta'):.3f}")
    if "atas" in keep:
        st = keep["atas"].store
        b = store_bytes_per_example(st, "atas_")
        print(f"store: MNIST {b} bytes per example ({b * st.size / 2**20:.1f} MiB for {st.size} examples); "
              f"CIFAR-10 with crop+flip {cifar_store_bytes()} bytes per example "
              f"({cifar_store_bytes() * 50000 / 1e9:.2f} GB for 50k)")
    if "atas" in rows:
        wall, cpu_r = rows["atas"]
        ok = wall <= a.target
        print(f"ATAS / FGSM-RS epoch: wall {wall:.3f}, cpu {cpu_r:.3f} (target <= {a.target:.2f}): "
              f"{'PASS' if ok else 'FAIL'}")
        print(f"medians: fgsm-rs {statistics.median(times['fgsm-rs']):.2f} s, "
              f"atas {statistics.median(times['atas']):.2f} s")
        return 0 if ok else 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
