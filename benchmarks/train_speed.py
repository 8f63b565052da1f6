"""One FGSM-RS epoch on MNIST: the Trainer vs a hand-written PyTorch loop (same run).

Paper-exact FGSM-RS (Wong et al. 2020): mnist-small, eps=0.3, alpha=0.375, batch 100, Adam
with the cyclic LR peaking at 5e-3 at 2/5 of training.  Epochs alternate between the two
implementations; the table shows medians and the median per-repetition ratio.  With
``--ddp`` it also times one epoch under ``torchrun --nproc_per_node=2`` (gloo) against one
process and prints the throughput ratio.

    python benchmarks/train_speed.py [--reps 3] [--threads 2] [--ddp]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

import torch
import torch.nn.functional as F
from _common import interleaved, ratio_table

import toolbox as tb

EPS, ALPHA, BATCH, PEAK = 0.3, 0.375, 100, 5e-3


def hand_epoch(model, opt, x, y, gen):
    """The whole method in one loop, as in fast_adversarial's train_mnist.py."""
    n = x.shape[0]
    steps = n // BATCH
    perm = torch.randperm(n, generator=gen)
    for i in range(steps):
        lr = PEAK * (i / (0.4 * steps) if i < 0.4 * steps else (steps - i) / (0.6 * steps))
        for g in opt.param_groups:
            g["lr"] = lr
        b = perm[i * BATCH:(i + 1) * BATCH]
        xb, yb = x[b].float().div_(255), y[b]
        delta = (torch.rand_like(xb) * 2 - 1) * EPS
        delta.requires_grad_(True)
        loss = F.cross_entropy(model(xb + delta), yb)
        g, = torch.autograd.grad(loss, delta)
        delta = (delta.detach() + ALPHA * g.sign()).clamp(-EPS, EPS)
        delta = (xb + delta).clamp(0, 1) - xb
        loss = F.cross_entropy(model(xb + delta), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def trainer_epoch(model, train):
    atk = tb.attack("fgsm", threat=tb.Linf(EPS), step_size=ALPHA, random_start=True, clamp_start=False)
    d = tb.defense("adversarial", attack=atk)
    opt = torch.optim.Adam(model.parameters(), lr=PEAK)
    sched = {"kind": "cyclic", "peak": PEAK, "peak_at": 0.4}
    tr = tb.Trainer(model, d, optimizer=opt, lr_schedule=sched, batch_size=BATCH, callbacks=[])
    tr.fit(train, epochs=1)


def ddp_ratio(threads: int) -> None:
    script = os.path.join(tempfile.mkdtemp(), "one_epoch.py")
    with open(script, "w") as f:
        f.write(
            "import sys, time, torch; sys.path.insert(0, %r)\n"
            "import toolbox as tb\n"
            "from train_speed import trainer_epoch\n"
            "torch.set_num_threads(%d)\n"
            "train = tb.data.load('mnist', split='train')\n"
            "t = time.perf_counter(); trainer_epoch(tb.models.create('mnist-small', seed=0), train)\n"
            "import torch.distributed as dist\n"
            "if not dist.is_initialized() or dist.get_rank() == 0: print('EPOCH_S', time.perf_counter() - t)\n"
            % (os.path.dirname(os.path.abspath(__file__)), threads)
        )

    def run(cmd):
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        return float(next(line.split()[1] for line in out.splitlines() if line.startswith("EPOCH_S")))

    one = run([sys.executable, script])
    two = run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", script])
    print(f"DDP (gloo, 2 processes x {threads} thread) epoch {two:.1f} s vs 1 process {one:.1f} s: "
          f"throughput ratio {one / two:.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ddp", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    train = tb.data.load("mnist", split="train")
    x, y = train.x, train.y
    gen = torch.Generator().manual_seed(0)

    def hand():
        model = tb.models.create("mnist-small", seed=0)
        hand_epoch(model, torch.optim.Adam(model.parameters(), lr=PEAK), x, y, gen)

    def trainer():
        trainer_epoch(tb.models.create("mnist-small", seed=0), train)

    t0 = time.perf_counter()
    times = interleaved({"hand loop": hand, "toolbox Trainer": trainer}, reps=args.reps, warmup=1)
    print(f"one FGSM-RS epoch on 60k MNIST, batch {BATCH}, {args.threads} threads, "
          f"{args.reps} interleaved reps ({time.perf_counter() - t0:.0f} s in all)")
    print(ratio_table(times, "hand loop"))
    if args.ddp:
        ddp_ratio(max(1, args.threads // 2))


if __name__ == "__main__":
    main()
