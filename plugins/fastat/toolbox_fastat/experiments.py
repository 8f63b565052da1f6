"""Small, seeded experiments of the thesis' fast-AT chapter, on the public toolbox API.

* :func:`train_mnist` — any of this plugin's defenses on MNIST with the paper's recipe (the
  fast-AT CNN ``mnist-small``, Adam, cyclic LR peaking at 5e-3 at 2/5 of training, batch 100).
* :func:`evaluate_mnist` — clean accuracy plus PGD-20, PGD-50x5 (alpha 0.01) and APGD-CE at
  eps 0.3 on the first test images (PGD with alpha 0.01 overstates the robustness of short
  runs, hence APGD-CE beside it).
* :func:`scaledown` — the CPU scale-down of Table 4.4: FGSM-RS, 3 epochs, the figures above.
* :func:`ablation` — R+FGSM vs FGSM-RS (Table 4.3) over several seeds, mean ± std.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch

import toolbox as tb

from .overfit import mean_std

__all__ = ["PAPER_MNIST", "ABLATION", "train_mnist", "evaluate_mnist", "scaledown", "ablation"]

#: Table 4.4 (MNIST, conv16-conv32-FC100, eps 0.3, 10 epochs; PGD-50x10 alpha 0.01, full test set)
PAPER_MNIST = {"fgsm-rs": {"clean": 99.20, "pgd@0.1": 97.53, "pgd@0.3": 88.77},
               "pgd-at": {"clean": 99.20, "pgd@0.1": 97.66, "pgd@0.3": 89.90}}

#: Table 4.3 rows (MNIST, 10 seeds, robust accuracy %): defense kwargs at eps 0.3 and the
#: paper's mean ± std
ABLATION = {
    "R+FGSM": ({"name": "rfgsm", "step_size": 0.15, "init": "hypercube", "init_radius": 0.15}, (34.58, 36.06)),
    "R+FGSM full step": ({"name": "rfgsm", "step_size": 0.30, "init": "hypercube", "init_radius": 0.15},
                         (26.53, 32.48)),
    "R+FGSM uniform init": ({"name": "rfgsm", "step_size": 0.15, "init": "uniform", "init_radius": 0.30},
                            (72.92, 10.40)),
    "FGSM-RS (uniform + full step)": ({"name": "fgsm-rs", "step_size": 0.30}, (86.21, 0.75)),
}


def _mnist(train: Any = None, test: Any = None) -> tuple[Any, Any]:
    if train is None:
        train = tb.data.load("mnist", split="train")
    if test is None:
        test = tb.data.load("mnist", split="test")
    return train, test


def train_mnist(defense: Any = "fgsm-rs", *, epochs: int = 3, seed: int = 0, eps: float = 0.3,
                peak_lr: float = 5e-3, peak_at: float = 0.4, batch_size: int = 100, train: Any = None,
                callbacks: Sequence[Any] = (), device: str = "cpu", model: str = "mnist-small",
                eps_schedule: Any = None, **defense_kw: Any) -> tuple[Any, Any, Any]:
    """Train ``mnist-small`` with ``defense`` (a name, built with ``threat=tb.Linf(eps)`` and
    ``defense_kw``, e.g. ``step_size=0.375``; or a Defense) and the paper's optimiser.

    Returns ``(model, history DataFrame, trainer)``.  ``train`` defaults to the 60k MNIST
    training images; ``model`` is a registered model name; ``eps_schedule`` an optional eps
    ramp for the Trainer (e.g. ``{"kind": "linear", "start": 0.0, "end": 0.3, "epochs": 1}``).
    Model initialisation and data order come from ``seed``.
    """
    if isinstance(defense, str):
        kw = dict(defense_kw)
        if "attack" not in kw:
            kw.setdefault("threat", tb.Linf(eps))
        defense = tb.defense(defense, **kw)
    elif defense_kw:
        raise ValueError("defense_kw apply to a defense given by name only")
    if train is None:
        train = tb.data.load("mnist", split="train")
    net = tb.models.create(model, seed=seed)
    trainer = tb.Trainer(net, defense, optimizer={"name": "adam", "lr": peak_lr},
                         lr_schedule={"kind": "cyclic", "peak": peak_lr, "peak_at": peak_at},
                         batch_size=batch_size, seed=seed, callbacks=list(callbacks), device=device,
                         eps_schedule=eps_schedule)
    history = trainer.fit(train, epochs=epochs)
    return net, history, trainer


def evaluate_mnist(model: torch.nn.Module, test: Any = None, *, n: int = 1000, n_apgd: int = 200,
                   eps: float = 0.3, pgd50_restarts: int = 5, seed: int = 0) -> dict[str, float]:
    """Accuracies in percent on the first ``n`` test images: ``clean`` (on those ``n``),
    ``pgd20`` (alpha 0.01), ``pgd50x{restarts}`` (alpha 0.01) and, on the first ``n_apgd``,
    ``apgd-ce`` (100 steps) and ``clean@apgd`` (clean accuracy on those).  ``pgd50_restarts=0``
    or ``n_apgd=0`` skip those attacks.  Seeded."""
    if test is None:
        test = tb.data.load("mnist", split="test")
    thr = tb.Linf(eps)
    attacks = {"pgd20": tb.attack("pgd", threat=thr, steps=20, step_size=0.01)}
    if pgd50_restarts:
        attacks[f"pgd50x{pgd50_restarts}"] = tb.attack("pgd", threat=thr, steps=50, step_size=0.01,
                                                       restarts=pgd50_restarts)
    out: dict[str, float] = {}
    rep = tb.evaluate(model, test, attacks=attacks, n=n, seed=seed, progress=False)
    out["clean"] = 100 * float(rep.loc["clean", "accuracy"])
    for k in attacks:
        out[k] = 100 * float(rep.loc[k, "accuracy"])
    if n_apgd:
        rep2 = tb.evaluate(model, test, attacks={"apgd-ce": tb.attack("apgd-ce", threat=thr, steps=100)},
                           n=n_apgd, seed=seed, progress=False)
        out["apgd-ce"] = 100 * float(rep2.loc["apgd-ce", "accuracy"])
        out["clean@apgd"] = 100 * float(rep2.loc["clean", "accuracy"])
    return out


def scaledown(seed: int = 0, epochs: int = 3, *, n: int = 1000, n_apgd: int = 200, train: Any = None,
              test: Any = None, device: str = "cpu") -> dict[str, Any]:
    """The CPU scale-down of the MNIST FGSM-RS result: paper-exact FGSM-RS (eps 0.3, alpha
    0.375, start not clamped), Adam cyclic peak 5e-3 at 2/5, batch 100, ``epochs`` epochs, then
    :func:`evaluate_mnist`.  Returns the accuracies (percent) plus ``train_s`` and ``history``.
    """
    train, test = _mnist(train, test)
    t0 = time.perf_counter()
    model, history, _ = train_mnist("fgsm-rs", epochs=epochs, seed=seed, train=train, device=device,
                                    step_size=0.375)
    out: dict[str, Any] = {"train_s": time.perf_counter() - t0}
    out.update(evaluate_mnist(model, test, n=n, n_apgd=n_apgd, seed=seed))
    out["history"], out["model"] = history, model
    return out


def ablation(seeds: Sequence[int] = (0, 1, 2), rows: Sequence[str] | None = None, *, epochs: int = 3,
             n: int = 500, train: Any = None, test: Any = None, device: str = "cpu",
             model: str = "mnist-small", batch_size: int = 100) -> Any:
    """R+FGSM vs FGSM-RS (Table 4.3) at small scale: each row of :data:`ABLATION` trained for
    ``epochs`` epochs per seed, PGD-20 (alpha 0.01) accuracy on the first ``n`` test images.

    Returns a DataFrame, one row per method: ``mean``, ``std`` (sample std, percent over
    seeds), ``paper_mean``, ``paper_std`` and the per-seed values.  ``train``/``test``/``model``
    swap in another dataset (e.g. sklearn digits with ``digits-cnn`` for a fast check).
    """
    import pandas as pd

    train, test = _mnist(train, test)
    names = list(ABLATION) if rows is None else list(rows)
    out = []
    unknown = [r for r in names if r not in ABLATION]
    if unknown:
        raise KeyError(f"unknown ablation rows {unknown}; available: {list(ABLATION)}")
    for name in names:
        spec, paper = ABLATION[name]
        kw = dict(spec)
        dname = kw.pop("name")
        accs = []
        for s in seeds:
            net, _, _ = train_mnist(dname, epochs=epochs, seed=int(s), train=train, device=device, model=model,
                                    batch_size=batch_size, **kw)
            r = evaluate_mnist(net, test, n=n, n_apgd=0, pgd50_restarts=0, seed=int(s))
            accs.append(r["pgd20"])
        m, sd = mean_std(accs)
        out.append({"method": name, "mean": m, "std": sd, "paper_mean": paper[0], "paper_std": paper[1],
                    "per_seed": accs})
    return pd.DataFrame(out)
