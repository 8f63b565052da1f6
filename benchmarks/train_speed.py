"""One FGSM-RS epoch on MNIST: the Trainer vs a hand-written PyTorch loop (same run).

Paper-exact FGSM-RS (Wong et al. 2020): mnist-small, eps=0.3, alpha=0.375, batch 100, Adam
with the cyclic LR peaking at 5e-3 at 2/5 of training.  Epochs alternate between the two
implementations; the table shows medians and the median per-repetition ratio (target: the
Trainer within 1.05x of the hand loop).  With ``--ddp`` it also times one epoch under
``torchrun --standalone --nproc_per_node=2`` (gloo, half the threads each) against one
process, alternating, and prints the throughput ratio.  On a shared machine only ratios from
one run mean anything.

    python benchmarks/train_speed.py [--reps 3] [--threads 2] [--ddp | --ddp-only]
"""

from __future__ import annotations

import argparse
import os
import statistics
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


def hand_attack_epoch(model, opt, x, y, gen):
    """The hand loop with the toolbox's FGSM in place of the inline one: the difference to the
    Trainer is the Trainer's own cost (data, schedules, defense, logs)."""
    atk = tb.attack("fgsm", threat=tb.Linf(EPS), step_size=ALPHA, random_start=True, clamp_start=False)
    n = x.shape[0]
    steps = n // BATCH
    perm = torch.randperm(n, generator=gen)
    for i in range(steps):
        lr = PEAK * (i / (0.4 * steps) if i < 0.4 * steps else (steps - i) / (0.6 * steps))
        for g in opt.param_groups:
            g["lr"] = lr
        b = perm[i * BATCH:(i + 1) * BATCH]
        xb, yb = x[b].float().div_(255), y[b]
        x_adv = atk(model, xb, yb, check=False)
        loss = F.cross_entropy(model(x_adv), yb)
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


def ddp_ratio(threads: int, reps: int) -> None:
    """One epoch alone (``threads`` threads) vs ``torchrun --standalone --nproc_per_node=2``
    (``threads // 2`` threads each: the same cores), alternating, ``reps`` times each."""
    script = os.path.join(tempfile.mkdtemp(), "one_epoch.py")
    with open(script, "w") as f:
        f.write(
            "import sys, time, torch; sys.path.insert(0, %r)\n"
            "import toolbox as tb\n"
            "from train_speed import trainer_epoch\n"
            "torch.set_num_threads(int(sys.argv[1]))\n"
            "train = tb.data.load('mnist', split='train')\n"
            "t = time.perf_counter(); trainer_epoch(tb.models.create('mnist-small', seed=0), train)\n"
            "import torch.distributed as dist\n"
            "if not dist.is_initialized() or dist.get_rank() == 0: print('EPOCH_S', time.perf_counter() - t)\n"
            % os.path.dirname(os.path.abspath(__file__))
        )

    def run(cmd):
        env = {**os.environ, "OMP_NUM_THREADS": cmd[-1]}
        out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env).stdout
        return float(next(line.split()[1] for line in out.splitlines() if line.startswith("EPOCH_S")))

    half = max(1, threads // 2)
    one_cmd = [sys.executable, script, str(threads)]
    two_cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", script, str(half)]
    ones, twos = [], []
    for _ in range(reps):
        ones.append(run(one_cmd))
        twos.append(run(two_cmd))
    one, two = statistics.median(ones), statistics.median(twos)
    print(f"DDP (gloo, 2 processes x {half} thread) epoch {two:.1f} s vs 1 process x {threads} threads "
          f"{one:.1f} s (medians of {reps}, alternating): throughput ratio {one / two:.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ddp", action="store_true", help="also time one epoch under torchrun (2 processes)")
    ap.add_argument("--ddp-only", action="store_true", help="only the DDP comparison")
    args = ap.parse_args()
    if args.ddp_only:
        ddp_ratio(args.threads, args.reps)
        return
    torch.set_num_threads(args.threads)
    train = tb.data.load("mnist", split="train")
    x, y = train.x, train.y
    gen = torch.Generator().manual_seed(0)

    def hand():
        model = tb.models.create("mnist-small", seed=0)
        hand_epoch(model, torch.optim.Adam(model.parameters(), lr=PEAK), x, y, gen)

    def hand_attack():
        model = tb.models.create("mnist-small", seed=0)
        hand_attack_epoch(model, torch.optim.Adam(model.parameters(), lr=PEAK), x, y, gen)

    def trainer():
        trainer_epoch(tb.models.create("mnist-small", seed=0), train)

    t0 = time.perf_counter()
    cpu: dict[str, list[float]] = {}
    times = interleaved({"hand loop": hand, "hand loop + tb.attack": hand_attack, "toolbox Trainer": trainer},
                        reps=args.reps, warmup=1, cpu=cpu)
    print(f"one FGSM-RS epoch on 60k MNIST, batch {BATCH}, {args.threads} threads, "
          f"{args.reps} interleaved reps ({time.perf_counter() - t0:.0f} s in all)")
    print(ratio_table(times, "hand loop", cpu))
    if args.ddp:
        ddp_ratio(args.threads, args.reps)


if __name__ == "__main__":
    main()
