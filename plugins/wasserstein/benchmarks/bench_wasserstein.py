"""Speed of the Wasserstein plugin (``python plugins/wasserstein/benchmarks/bench_wasserstein.py``).

1. Projected-Sinkhorn projection throughput (images/s) with 5x5 local plans on MNIST
   (1x28x28) and CIFAR-10 (3x32x32) shapes, batch 100, a fixed number of sweeps: the
   exp-domain grouped-convolution kernels this plugin uses vs the log-domain
   unfold/logsumexp kernels it started with (kept as the fallback path).
2. Wasserstein PGD (``wasserstein-pgd``) vs ART 1.20's ``Wasserstein`` attack on the same
   standard MNIST model (``mnist-small``, one epoch of Adam) and the same settings: ℓ∞ sign
   steps of 0.1, eps0 0.3 grown x1.1 every 10 iterations, lambda 1000, 5x5 plans, the
   Euclidean cost (ART's ``p=2`` is our ``p=1``), ``--iters`` iterations on ``--n`` test
   images; ART with its default batch size 1 and with the whole batch.  Prints times, the
   ratio and both attacks' success rates.

Options: ``--threads`` (default 1), ``--n`` (default 20), ``--iters`` (default 60),
``--skip-art``.  Numbers from this machine are in the plugin README.
"""

from __future__ import annotations

import argparse
import time

import torch


def projection_throughput(shape, n=100, sweeps=50, fast=True) -> float:
    import toolbox_wasserstein.sinkhorn as S

    g = torch.Generator().manual_seed(0)
    x = torch.rand((n, *shape), generator=g, dtype=torch.float64)
    x[x < 0.5] = 0
    x = x / x.flatten(1).sum(1).view(-1, 1, 1, 1)
    w = x + 1e-3 * torch.randn(x.shape, generator=g, dtype=torch.float64)
    saved = S._lse_fast, S._plan_sums_fast
    if not fast:  # the log-domain kernels (unfold + logsumexp)
        S._lse_fast = lambda t, logk, k, mask=None: S._local_lse(t, logk, k)
        S._plan_sums_fast = S._plan_sums
    try:
        S.projected_sinkhorn(x[:2], w[:2], 0.1, p=1, iters=2, tol=0)
        t = time.perf_counter()
        S.projected_sinkhorn(x, w, 0.1, p=1, iters=sweeps, tol=0)
        dt = time.perf_counter() - t
    finally:
        S._lse_fast, S._plan_sums_fast = saved
    return n / dt


def mnist_model():
    import toolbox as tb

    net = tb.models.create("mnist-small", seed=0)
    tb.Trainer(net, tb.defense("standard"), optimizer={"name": "adam", "lr": 1e-3}, batch_size=100,
               seed=0).fit(tb.data.load("mnist"), epochs=1)
    return net.eval()


def attack_vs_art(n: int, iters: int, skip_art: bool) -> None:
    import numpy as np
    from toolbox_wasserstein import Wasserstein, WassersteinPGD

    import toolbox as tb

    test = tb.data.load("mnist", split="test")
    x, y = test.x[:n].float() / 255, test.y[:n].long()
    t = time.perf_counter()
    model = mnist_model()
    print(f"model: mnist-small, 1 epoch ({time.perf_counter() - t:.0f}s)")
    atk = WassersteinPGD(Wasserstein(10.0, p=1, kernel_size=5, reg=1e-3), steps=iters, eps0=0.3,
                         growth=1.1, every=10)
    t = time.perf_counter()
    res = atk.search(model, x, y)
    ours = time.perf_counter() - t
    print(f"toolbox wasserstein-pgd: {ours:.2f}s for {n} images ({n / ours:.2f} img/s), "
          f"success {100 * float(res.success.float().mean()):.0f}%")
    if skip_art:
        return
    from art.attacks.evasion import Wasserstein as ArtWasserstein
    from art.estimators.classification import PyTorchClassifier

    clf = PyTorchClassifier(model=model, loss=torch.nn.CrossEntropyLoss(), input_shape=(1, 28, 28),
                            nb_classes=10, clip_values=(0.0, 1.0))
    for bs in (1, n):
        art = ArtWasserstein(clf, regularization=1000.0, p=2, kernel_size=5, eps_step=0.1, norm="inf",
                             ball="wasserstein", eps=0.3, eps_iter=10, eps_factor=1.1, max_iter=iters,
                             projected_sinkhorn_max_iter=400, batch_size=bs, verbose=False)
        t = time.perf_counter()
        xa = art.generate(x.numpy(), y=np.eye(10)[y.numpy()])
        dt = time.perf_counter() - t
        with torch.no_grad():
            succ = float((model(torch.tensor(xa)).argmax(1) != y).float().mean())
        print(f"ART Wasserstein (batch {bs}): {dt:.2f}s ({n / dt:.2f} img/s), success {100 * succ:.0f}%; "
              f"toolbox is {dt / ours:.1f}x faster")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--n", type=int, default=20)
    p.add_argument("--iters", type=int, default=60)
    p.add_argument("--skip-art", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s)")
    for name, shape in (("MNIST 1x28x28", (1, 28, 28)), ("CIFAR 3x32x32", (3, 32, 32))):
        fast = projection_throughput(shape, fast=True)
        slow = projection_throughput(shape, fast=False)
        print(f"projection {name}, batch 100, 50 sweeps: {fast:.0f} img/s (log-domain kernels: "
              f"{slow:.0f} img/s, {fast / slow:.1f}x)")
    attack_vs_art(args.n, args.iters, args.skip_art)


if __name__ == "__main__":
    main()
