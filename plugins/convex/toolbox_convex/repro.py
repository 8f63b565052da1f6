"""Run some of the plugin's reproduction configs: ``python -m toolbox_convex.repro``.

Every figure, the certified accuracy included, lives in the configs themselves
(``[eval.certifiers.certified]`` and ``[paper.expect]``), so ``toolbox repro convex [--quick]``
runs and checks them all.  This module is a thin wrapper over the same kernel functions
(:func:`toolbox.cli.run_experiment`, :func:`toolbox.cli.repro_rows`) that also picks single
configs, for the paper settings that need a GPU, and sets the number of torch threads:

    python -m toolbox_convex.repro --quick                         # = toolbox repro convex --quick
    python -m toolbox_convex.repro mnist_convex_table35 --device cuda

Exit code 1 when a figure misses its tolerance (as ``toolbox repro``).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from toolbox.plugins import repro_dir as plugin_repro_dir


def repro_dir() -> Path:
    """The folder holding this plugin's reproduction configs (``plugins/convex/repro``)."""
    return plugin_repro_dir(__file__)


def config_path(name: str | Path) -> Path:
    """Resolve a config given as a file path, a file name in :func:`repro_dir` or a stem there
    (``"mnist_convex_cpu"``); an unknown name raises a ``FileNotFoundError`` listing the known ones."""
    path = Path(name)
    if path.is_file():
        return path
    for cand in (repro_dir() / path.name, repro_dir() / f"{path.name}.toml"):
        if cand.is_file():
            return cand
    known = ", ".join(p.stem for p in sorted(repro_dir().glob("*.toml")))
    raise FileNotFoundError(f"config {str(name)!r}: no such file, nor a config of the convex plugin "
                            f"(known: {known})")


def run(cfg: Any, run_dir: str | Path, *, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train and evaluate ``cfg`` (a loaded :class:`toolbox.config.ExperimentConfig`) into
    ``run_dir`` with the kernel's :func:`toolbox.cli.run_experiment` (its ``[eval.attacks]``
    and ``[eval.certifiers]`` on the first ``[eval] n`` test images).

    Returns ``{"result": RunResult (run_dir, history, report, rows), "rows": [...]}`` where
    ``rows`` holds one dict per ``[paper.expect]`` figure as :func:`toolbox.cli.repro_rows`
    makes them (``metric``, ``paper``, ``expected``, ``tolerance``, ``measured`` in percent,
    ``result`` ``pass``/``FAIL``; ``n/a`` rows when the config expects nothing).
    """
    from toolbox.cli import repro_rows, run_experiment

    res = run_experiment(cfg, Path(run_dir), log=log)
    return {"result": res, "rows": repro_rows(cfg, res.rows)}


def main(argv: list[str] | None = None) -> int:
    """Command line (see the module docstring); returns the exit code."""
    p = argparse.ArgumentParser(prog="python -m toolbox_convex.repro",
                                description=__doc__.split("\n")[0])
    p.add_argument("configs", nargs="*", metavar="CONFIG",
                   help="config files or names in repro/ (default: all of them)")
    p.add_argument("--config", nargs="*", default=[], help="same as the positional CONFIGs")
    p.add_argument("--quick", action="store_true", help="only the CPU scale-downs (paper.quick)")
    p.add_argument("--check", action="store_true",
                   help="accepted for compatibility: a missed figure always exits 1")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides")
    p.add_argument("--device", help="override train.device")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--run-dir", help="root of the runs (default runs/repro-convex-<timestamp>)")
    args = p.parse_args(argv)

    import pandas as pd
    import torch

    from toolbox.cli import default_run_dir, format_markdown, format_table
    from toolbox.config import load

    if args.threads:
        torch.set_num_threads(args.threads)
    names = [*args.configs, *args.config]
    try:
        paths = list(dict.fromkeys(config_path(c) for c in names)) if names \
            else sorted(repro_dir().glob("*.toml"))
    except FileNotFoundError as exc:
        p.error(str(exc))
    configs = [load(path, args.set) for path in paths]  # validate all before running any
    if args.quick:
        configs = [c for c in configs if c.paper is not None and c.paper.quick]
    if not configs:
        p.error("no configs to run")
    root = Path(args.run_dir) if args.run_dir else default_run_dir("repro-convex")
    table: list[dict[str, Any]] = []
    for cfg in configs:
        if args.device:
            cfg.train.device = args.device
        table += run(cfg, root / cfg.name)["rows"]
    print(format_table(table))
    root.mkdir(parents=True, exist_ok=True)
    (root / "repro.md").write_text(format_markdown(table))
    pd.DataFrame(table).to_csv(root / "repro.csv", index=False)
    failed = [r for r in table if r["result"] == "FAIL"]
    checked = [r for r in table if r["result"] != "n/a"]
    print(f"{len(checked) - len(failed)}/{len(checked)} figures within tolerance; results in {root}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
