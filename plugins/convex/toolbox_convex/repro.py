"""Run the plugin's reproduction configs with the certified row: ``python -m toolbox_convex.repro``.

``toolbox repro convex`` trains each config and checks its ``[paper.expect]`` figures (clean,
attacks); the kernel's config format has no certifier rows yet, so this runner does the same
and adds the dual network's certified accuracy on the first ``CERTIFIED[stem]["n"]`` test
images, checked against :data:`CERTIFIED` (the paper's figure beside it).

    python -m toolbox_convex.repro --quick --check          # the CPU scale-down(s)
    python -m toolbox_convex.repro --config mnist_convex_table35.toml --device cuda --check

Exit code 1 when ``--check`` is given and a figure misses its tolerance.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

import toolbox as tb
from toolbox.plugins import repro_dir as plugin_repro_dir

#: certified accuracy (percent) per config stem: the expected value and tolerance of the run
#: this plugin ships (for a scale-down, what it should reach), the paper's own figure, and the
#: number of test images certified (exact dual bound, no projections: a true certificate).
CERTIFIED: dict[str, dict[str, Any]] = {
    "mnist_convex_cpu": {"value": 85.0, "tolerance": 7.0, "paper": 94.18, "n": 300,
                         "source": "scale-down, seeds 0/1/2: 80.0/89.3/87.7; paper Table 3.1: "
                                   "5.82 % certified error"},
    "mnist_convex_table31": {"value": 94.18, "tolerance": 1.0, "paper": 94.18, "n": 10000,
                             "source": "Table 3.1 (exact training): 5.82 % certified error"},
    "mnist_convex_table35": {"value": 95.01, "tolerance": 1.0, "paper": 95.01, "n": 10000,
                             "source": "Table 3.5 (r = 50): 4.99 % certified error"},
    "cifar10_convex_small_2": {"value": 47.25, "tolerance": 1.5, "paper": 47.25, "n": 10000,
                               "source": "Table 3.5 (Small, 2/255): 52.75 % certified error"},
}


def repro_dir() -> Path:
    """The folder holding this plugin's reproduction configs (``plugins/convex/repro``)."""
    return plugin_repro_dir(__file__)


def run(cfg: Any, *, cert_n: int | None = None, log=print) -> dict[str, Any]:
    """Train ``cfg`` (a loaded :class:`toolbox.config.ExperimentConfig`), evaluate its attacks
    and the ``dual-network`` certifier; returns ``{"model", "history", "table", "rows",
    "seconds"}`` with ``rows`` one dict per figure (metric, expected, tolerance, paper,
    measured in percent, result ``pass``/``FAIL``/``n/a``)."""
    t0 = time.perf_counter()
    train, _, test = cfg.build_data()
    trainer = cfg.build_trainer()
    log(f"training {cfg.name!r}: {len(train)} images, {cfg.train.epochs} epochs")
    history = trainer.fit(train, cfg.train.epochs)
    model = getattr(trainer.model, "module", trainer.model).eval()
    t_train = time.perf_counter() - t0
    spec = CERTIFIED.get(Path(str(cfg.source)).stem, {}) if cfg.source else {}
    n_cert = int(cert_n or spec.get("n", 300))
    x, y, _ = test.tensors(trainer.device)
    eps = cfg.defense.threat.kwargs["eps"] if cfg.defense.threat else 0.1
    cert = tb.certifier("dual-network", threat=tb.Linf(eps), batch_size=25)
    table = tb.evaluate(model, (x[:cfg.eval.n], y[:cfg.eval.n]), cfg.build_eval_attacks(),
                        batch_size=cfg.eval.batch_size, progress=False)
    t1 = time.perf_counter()
    certified = cert(model, x[:n_cert], y[:n_cert]).accuracy
    t_cert = time.perf_counter() - t1
    rows = []
    for e in (cfg.paper.expect if cfg.paper else []):
        got = 100.0 * float(table["accuracy"][e.metric])
        rows.append({"metric": e.metric, "expected": e.value, "tolerance": e.tolerance,
                     "paper": e.paper, "measured": round(got, 2),
                     "result": "pass" if e.check(got) else "FAIL"})
    got = 100.0 * certified
    if spec:
        ok = abs(got - spec["value"]) <= spec["tolerance"]
        rows.append({"metric": f"certified (dual, n={n_cert})", "expected": spec["value"],
                     "tolerance": spec["tolerance"], "paper": spec["paper"],
                     "measured": round(got, 2), "result": "pass" if ok else "FAIL"})
    else:
        rows.append({"metric": f"certified (dual, n={n_cert})", "expected": None, "tolerance": None,
                     "paper": None, "measured": round(got, 2), "result": "n/a"})
    log(f"{cfg.name}: trained in {t_train:.0f} s, certified {n_cert} images in {t_cert:.0f} s")
    return {"model": model, "history": history, "table": table, "rows": rows,
            "seconds": {"train": t_train, "certify": t_cert}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", nargs="*", help="config files (names resolve in repro/); default all")
    p.add_argument("--quick", action="store_true", help="only the CPU scale-downs (paper.quick)")
    p.add_argument("--check", action="store_true", help="exit 1 when a figure misses")
    p.add_argument("--set", nargs="*", default=[], help="config overrides key.path=value")
    p.add_argument("--device", help="override train.device")
    p.add_argument("--cert-n", type=int, help="test images to certify (default per config)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--out", help="write the rows as JSON here")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from toolbox.config import load

    paths = [repro_dir() / c if not Path(c).exists() else Path(c) for c in args.config] \
        if args.config else sorted(repro_dir().glob("*.toml"))
    configs = [load(path, args.set) for path in paths]
    if args.quick:
        configs = [c for c in configs if c.paper is not None and c.paper.quick]
    if not configs:
        p.error("no configs to run")
    all_rows = []
    for cfg in configs:
        if args.device:
            cfg.train.device = args.device
        res = run(cfg, cert_n=args.cert_n)
        for r in res["rows"]:
            all_rows.append({"config": cfg.name, **r})
            print(f"{cfg.name:24s} {r['metric']:28s} measured {r['measured']:6.2f}  expected "
                  f"{r['expected']}±{r['tolerance']}  paper {r['paper']}  {r['result']}")
    if args.out:
        Path(args.out).write_text(json.dumps(all_rows, indent=1))
    failed = [r for r in all_rows if r["result"] == "FAIL"]
    print(f"{len(all_rows) - len(failed)}/{len(all_rows)} figures pass")
    return 1 if (args.check and failed) else 0


if __name__ == "__main__":
    raise SystemExit(main())
