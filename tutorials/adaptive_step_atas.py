"""Tutorial: ATAS, adversarial training with an adaptive per-example step size.

ATAS (Huang et al., IEEE TNNLS 2023) is single-step (FGSM) adversarial training with two
pieces of per-example state, kept in the Trainer's store keyed by dataset index:

* the perturbation the example's last visit produced (ATTA's "previous-epoch" start), and
* an EMA ``v_i`` of its squared input-gradient norm, which sets its step
  ``alpha_i = gamma / (c + sqrt(v_i))``: examples with large gradients (sharp loss
  landscapes, the ones that trigger catastrophic overfitting) take small steps.

This script

1. trains ATAS and FGSM-RS with the same aggressive largest step (2 eps) on MNIST at eps 0.3,
2. watches both for catastrophic overfitting and evaluates them with FGSM, PGD-20 and APGD-CE,
3. looks inside the store (perturbations, EMA, step sizes, bytes per example), and
4. plots the per-example gradient-norm histograms and the long-tail statistic
   mean(G^2)/mean(G)^2 per epoch.

Run ``python tutorials/adaptive_step_atas.py`` (about 2 minutes on one thread) or
``--quick`` (scikit-learn digits at eps 0.1, under a minute; the numbers then only show that
everything runs).  ``--out DIR`` chooses where the plot goes.  Needs ``toolbox-atas``
(``pip install --no-deps -e plugins/atas``).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from toolbox_atas import GradNormStats, plot_gradnorm, store_bytes_per_example
from toolbox_atas.compare import COMonitor

import toolbox as tb


def data(quick: bool):
    """(train, test, model name, eps, epochs) for the chosen mode."""
    if quick:
        train, test = tb.data.load("digits"), tb.data.load("digits", split="test")
        return train, test, "digits-cnn", 0.1, 4
    return tb.data.load("mnist"), tb.data.load("mnist", split="test"), "mnist-small", 0.3, 3


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="digits at eps 0.1 (under a minute)")
    p.add_argument("--out", default="runs/tutorial-atas", help="folder for the plot")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    train, test, model_name, eps, epochs = data(args.quick)
    step = 2 * eps                                          # the aggressive largest step

    # --- 1. the two defenses -------------------------------------------------------------------
    # ATAS: the largest step (at v = 0) is step_max = gamma / c; c is in the units of the
    # gradient norm.  grad_scale="per-example" uses ||grad of example i's own loss||, so c
    # does not depend on the batch size (the official CIFAR code uses the batch-mean loss,
    # grad_scale="batch-mean", with c = 0.01 at batch 128).
    atas = tb.defense("atas", threat=tb.Linf(eps), c=0.2 if not args.quick else 0.5, step_max=step,
                      clamp=(step / 8, step), warmup_epochs=0, reset_every=0, grad_scale="per-example")
    fgsm_rs = tb.defense("adversarial", attack=tb.attack("fgsm", threat=tb.Linf(eps), step_size=step,
                                                         random_start=True, clamp_start=False))
    results, trainers = {}, {}
    for name, defense in (("ATAS", atas), ("FGSM-RS", fgsm_rs)):
        torch.manual_seed(0)
        model = tb.models.create(model_name)
        # watch for catastrophic overfitting (FGSM accuracy >> PGD accuracy on 200 held
        # training images) without rolling back, so the final models show what each method does
        callbacks = [COMonitor(batch=200, action="continue", every="epoch" if args.quick else 100)]
        if name == "ATAS":
            stats = GradNormStats()
            callbacks.append(stats)
        trainer = tb.Trainer(model, defense, optimizer={"name": "adam", "lr": 5e-3},
                             lr_schedule={"kind": "cyclic", "peak": 5e-3, "peak_at": 0.4},
                             batch_size=100, seed=0, callbacks=callbacks)
        t0 = time.perf_counter()
        hist = trainer.fit(train, epochs)
        co = callbacks[0]
        gap = max(f - p for _, p, f in co.checks)
        print(f"{name}: trained {epochs} epochs in {time.perf_counter() - t0:.0f} s, "
              f"{len(co.events)} of {len(co.checks)} held-batch checks flag catastrophic overfitting "
              f"(largest FGSM - PGD accuracy gap {gap:.2f})")
        trainers[name] = (trainer, hist)

        # --- 2. evaluation -------------------------------------------------------------------
        attacks = {"fgsm": tb.attack("fgsm", threat=tb.Linf(eps)),
                   "pgd20": tb.attack("pgd", threat=tb.Linf(eps), steps=20, step_size=eps / 30 if args.quick else 0.01),
                   "apgd-ce": tb.attack("apgd-ce", threat=tb.Linf(eps), steps=50)}
        rep = tb.evaluate(trainer.model, test, attacks=attacks, n=500, progress=False)
        results[name] = rep["accuracy"]
    print("\naccuracy on the first 500 test images (eps = %.2f):" % eps)
    import pandas as pd

    print(pd.DataFrame(results).round(3).to_string())

    # --- 3. inside the store -----------------------------------------------------------------------
    trainer, hist = trainers["ATAS"]
    store = trainer.store
    print("\nATAS store:", store)
    print(f"bytes per example: {store_bytes_per_example(store, 'atas_')}")
    delta = store.tensor("atas_delta")
    print(f"stored perturbations: max |delta| = {float(delta.abs().max()):.3f} (eps {eps}), "
          f"mean |delta| = {float(delta.abs().mean()):.3f}")
    steps = store.tensor("atas_step")
    order = store.tensor("atas_v").argsort()
    print(f"step sizes: smallest-v example {float(steps[order[0]]):.3f}, median {float(steps.median()):.3f}, "
          f"largest-v example {float(steps[order[-1]]):.3f}")
    cols = [c for c in ("epoch", "train_adv_acc", "train_step", "train_clamped", "gnorm_longtail",
                        "gnorm_p50", "gnorm_p99", "co_event") if c in hist]
    print(hist[cols].round(4).to_string(index=False))

    # --- 4. the long tail ---------------------------------------------------------------------------
    out = Path(args.out)
    path = out / "atas_gradnorm.png"
    plot_gradnorm(stats, hist, path=path)
    print(f"\nmean(G^2)/mean(G)^2 by epoch: {[round(v, 2) for v in hist['gnorm_longtail']]} "
          "(1 = all gradient norms equal; the paper reports about 1.4 on CIFAR-10)")
    print(f"plot: {path}")


if __name__ == "__main__":
    main()
