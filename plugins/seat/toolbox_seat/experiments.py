"""The MNIST comparison of FGSM-AT (zero init, step ε: the collapse-prone baseline) and SEAT.

Used by the slow CI test, the opt-in multi-seed repro (``python -m toolbox_seat.experiments``,
``tox -e repro-seat``) and the tutorial.  One run = one :class:`toolbox.Trainer` fit of the
``mnist-small`` CNN with Adam and a cyclic LR, a :class:`~toolbox_seat.LinearityMonitor` on a
held test batch, then an evaluation on the first ``n_eval`` test images.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

import toolbox as tb

from .callbacks import LinearityMonitor
from .defense import SEAT

__all__ = ["make_defense", "run", "collapsed", "compare", "main"]

METHODS = ("seat", "fgsm-at")


def make_defense(method: str, eps: float, *, lam: float = 0.5, flood: float = 0.0, **kw: Any) -> tb.Defense:
    """``"seat"`` (SEAT with λ = ``lam``, flood ``flood``) or ``"fgsm-at"`` (CE on FGSM from zero
    init with step ε: ``tb.defense("adversarial", attack=tb.attack("fgsm", step_size=eps))``)."""
    if method == "seat":
        return SEAT(tb.Linf(eps), lam=lam, flood=flood, log_lin_err=True, **kw)
    if method == "fgsm-at":
        return tb.defense("adversarial", attack=tb.attack("fgsm", threat=tb.Linf(eps), step_size=eps))
    raise ValueError(f"method must be one of {METHODS}, got {method!r}")


def eval_attacks(eps: float, *, full: bool = False) -> dict[str, tb.Attack]:
    """PGD-20 (α = 0.01); with ``full`` also PGD-50×5 and APGD-CE (100 steps)."""
    th = tb.Linf(eps)
    out = {"pgd20": tb.attack("pgd", threat=th, steps=20, step_size=0.01)}
    if full:
        out["pgd50x5"] = tb.attack("pgd", threat=th, steps=50, step_size=0.01, restarts=5)
        out["apgd-ce"] = tb.attack("apgd-ce", threat=th, steps=100)
    return out


def run(method: str, seed: int = 0, *, epochs: int = 2, eps: float = 0.3, lam: float = 0.5, flood: float = 0.0,
        n_train: int | None = None, n_eval: int = 1000, peak_lr: float = 5e-3, batch_size: int = 100,
        full_eval: bool = False, monitor_every: int | str = 100, monitor_n: int = 200,
        eps_ramp: float | None = None, defense_kw: dict | None = None, train_data: Any = None, test_data: Any = None) -> dict[str, Any]:
    """Train ``method`` on MNIST and evaluate it.

    Returns a dict: ``method``, ``seed``, ``history`` (DataFrame), ``records`` (the linearity
    monitor's measurements, a DataFrame), ``report`` (``tb.evaluate``'s DataFrame), accuracies
    in percent (``clean``, ``pgd20`` and with ``full_eval`` ``pgd50x5``, ``apgd-ce``),
    ``g_final`` / ``g_max`` / ``g_median`` (the monitor's ``lin_err``: g of the FGSM δ, at the end,
    its maximum and median over training; nats), ``gamma_final`` / ``gamma_max`` (the monitor's
    ``lin_err_max``: g maximised over the ball), ``train_s``, ``model``.
    """
    train = train_data if train_data is not None else tb.data.load("mnist", split="train")
    test = test_data if test_data is not None else tb.data.load("mnist", split="test")
    if n_train is not None:
        gen = torch.Generator()
        gen.manual_seed(1000 + seed)
        train = tb.data.subset(train, torch.randperm(len(train), generator=gen)[:n_train])
    torch.manual_seed(seed)
    model = tb.models.create("mnist-small")
    defense = make_defense(method, eps, lam=lam, flood=flood, **(defense_kw or {}))
    opt = torch.optim.Adam(model.parameters(), lr=peak_lr)
    mon = LinearityMonitor(n=monitor_n, every=monitor_every, seed=seed, threat=tb.Linf(eps))
    trainer = tb.Trainer(model, defense, optimizer=opt, batch_size=batch_size, seed=seed, callbacks=[mon],
                         lr_schedule={"kind": "cyclic", "peak": peak_lr, "peak_at": 0.4},
                         eps_schedule=None if not eps_ramp else
                         {"kind": "linear", "start": 0.0, "end": eps, "epochs": eps_ramp})
    t0 = time.perf_counter()
    history = trainer.fit(train, epochs=epochs, val_data=test)
    train_s = time.perf_counter() - t0
    report = tb.evaluate(model, test, eval_attacks(eps, full=full_eval), n=n_eval, seed=seed, progress=False)
    rec = mon.dataframe()
    out: dict[str, Any] = {"method": method, "seed": seed, "history": history, "records": rec, "report": report,
                           "train_s": train_s, "model": model,
                           "g_final": float(rec["lin_err"].iloc[-1]), "g_max": float(rec["lin_err"].max()),
                           "g_median": float(rec["lin_err"].median()),
                           "gamma_final": float(rec["lin_err_max"].iloc[-1]),
                           "gamma_max": float(rec["lin_err_max"].max())}
    for name in report.index:
        if name != "worst-case":
            out[name] = 100 * float(report.loc[name, "accuracy"])
    return out


def collapsed(result: dict[str, Any], *, threshold: float = 20.0) -> bool:
    """Catastrophic overfitting (or a failed run): PGD-20 accuracy below ``threshold`` percent."""
    return result["pgd20"] < threshold


def summary_row(r: dict[str, Any]) -> dict[str, Any]:
    keys = ("method", "seed", "clean", "pgd20", "pgd50x5", "apgd-ce", "g_final", "g_max", "g_median", "gamma_final",
            "gamma_max", "train_s")
    row = {k: r[k] for k in keys if k in r}
    row["collapsed"] = collapsed(r)
    return row


def compare(seeds=(0, 1, 2), *, out_dir: str | Path | None = None, **kw: Any) -> list[dict[str, Any]]:
    """Run both methods over ``seeds``; with ``out_dir`` write ``results.csv``, ``summary.json``
    and ``linearity.png`` (g and PGD accuracy of every run).  Returns the runs' results."""
    import pandas as pd

    from .plot import linearity_curves

    results = []
    for seed in seeds:
        for method in METHODS:
            r = run(method, seed, **kw)
            results.append(r)
            print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in summary_row(r).items()}),
                  flush=True)
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        pd.DataFrame([summary_row(r) for r in results]).to_csv(out / "results.csv", index=False)
        linearity_curves({f"{r['method']} s{r['seed']}": r["records"] for r in results}, out / "linearity.png")
        (out / "summary.json").write_text(json.dumps(check(results), indent=2))
    return results


def check(results: list[dict[str, Any]], *, clean_min: float = 95.0, pgd20_min: float = 75.0,
          ratio: float = 10.0, measure: str = "gamma") -> dict[str, Any]:
    """The scale-down's pass criteria: every SEAT run has clean >= ``clean_min`` and PGD-20 >=
    ``pgd20_min``; in every seed where FGSM-AT collapsed, SEAT's linearity error at the end of
    training is at least ``ratio`` times below FGSM-AT's.  ``measure``: ``"gamma"`` (g maximised
    over the ε-ball, the monitor's ``lin_err_max``; default) or ``"g"`` (g of the FGSM δ,
    ``lin_err``), both on the same held batch.  Returns ``{"ok", "failures", "collapsed_seeds",
    "n_seeds", "ratios"}`` (``ratios``: seed -> FGSM-AT's final value / SEAT's, collapsed seeds)."""
    if measure not in ("gamma", "g"):
        raise ValueError(f"measure must be 'gamma' or 'g', got {measure!r}")
    key = f"{measure}_final"
    fails, coll, ratios = [], [], {}
    by = {(r["method"], r["seed"]): r for r in results}
    seeds = sorted({r["seed"] for r in results})
    for s in seeds:
        se, fg = by.get(("seat", s)), by.get(("fgsm-at", s))
        if se is not None:
            if se["clean"] < clean_min:
                fails.append(f"seed {s}: SEAT clean {se['clean']:.1f} < {clean_min}")
            if se["pgd20"] < pgd20_min:
                fails.append(f"seed {s}: SEAT PGD-20 {se['pgd20']:.1f} < {pgd20_min}")
        if fg is not None and collapsed(fg):
            coll.append(s)
            if se is not None:
                ratios[s] = fg[key] / se[key] if se[key] > 0 else float("inf")
                if not se[key] * ratio <= fg[key]:
                    fails.append(f"seed {s}: FGSM-AT collapsed but SEAT's final {measure} {se[key]:.4g} is not "
                                 f"{ratio}x below FGSM-AT's {fg[key]:.4g} ({ratios[s]:.1f}x)")
    return {"ok": not fails, "failures": fails, "collapsed_seeds": coll, "n_seeds": len(seeds), "ratios": ratios}


def main(argv: list[str] | None = None) -> int:
    """CLI of the opt-in repro: ``python -m toolbox_seat.experiments --seeds 0 1 2 --epochs 3`` (exit 1 if
    :func:`check` fails)."""
    p = argparse.ArgumentParser(description="SEAT vs FGSM-AT on MNIST (eps 0.3): clean, PGD-20, PGD-50x5, "
                                "APGD-CE and the linearity-error curve")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--lam", type=float, default=0.5)
    p.add_argument("--n-eval", type=int, default=1000)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="runs/repro-seat-mnist")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    results = compare(a.seeds, out_dir=a.out, epochs=a.epochs, lam=a.lam, n_eval=a.n_eval, full_eval=True)
    res = check(results)
    print(json.dumps(res, indent=2))
    return 0 if res["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
