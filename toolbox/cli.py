"""The ``toolbox`` command line (also ``python -m toolbox``).

Sub-commands::

    toolbox plugins [--json]                   installed plugins and what each registers
    toolbox list [KIND] [--json]               registered names (attack, defense, ...) with docs
    toolbox train CONFIG [--set k=v ...] [--run-dir DIR] [--resume]
    toolbox eval CHECKPOINT [--attack pgd,apgd-ce --eps 0.3 --norm linf --steps 20] [--n 1000]
    toolbox repro PLUGIN [--quick]             run a plugin's reproduction configs

Plugins add sub-commands through the ``toolbox_add_commands(subparsers)`` hook.  Exit codes:
0 success, 1 a reproduction missed a paper figure, 2 a usage or config error (one line on
stderr, no traceback; ``--debug`` shows it).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .registry import KINDS, UnknownNameError

#: callbacks every ``toolbox train`` run gets unless its config lists them itself
DEFAULT_CALLBACKS: tuple[str, ...] = ("progress-bar", "history", "curve-plot")
CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT = "last.pt"


# ------------------------------------------------------------------------------------ tables
def _fmt(v: Any) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if math.isnan(v):
            return "-"
        return f"{v:.4g}" if abs(v) < 1e-3 or abs(v) >= 1e5 else f"{v:.4f}".rstrip("0").rstrip(".")
    return "" if v is None else str(v)


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    """Plain-text table with aligned columns (numbers right-aligned)."""
    if not rows:
        return "(empty)"
    columns = list(columns or rows[0].keys())
    cells = [[_fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    numeric = [all(isinstance(r.get(c), (int, float)) and not isinstance(r.get(c), bool)
                   for r in rows if r.get(c) is not None) for c in columns]

    def line(vals: Sequence[str]) -> str:
        return "  ".join(v.rjust(w) if num else v.ljust(w)
                         for v, w, num in zip(vals, widths, numeric)).rstrip()

    out = [line(columns), line(["-" * w for w in widths])]
    out += [line(row) for row in cells]
    return "\n".join(out)


def format_markdown(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    """A GitHub-flavoured markdown table."""
    if not rows:
        return ""
    columns = list(columns or rows[0].keys())
    out = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for r in rows:
        out.append("| " + " | ".join(_fmt(r.get(c)).replace("|", "\\|") for c in columns) + " |")
    return "\n".join(out) + "\n"


def report_rows(report: Any) -> list[dict[str, Any]]:
    """Rows of an evaluation report (``tb.evaluate``'s DataFrame) as dicts with an
    ``attack`` key first."""
    df = report.copy()
    if "attack" not in df.columns:
        df = df.reset_index()
        df = df.rename(columns={df.columns[0]: "attack"})
    first = [c for c in ("accuracy", "correct", "n") if c in df.columns]
    rest = [c for c in df.columns if c not in ("attack", *first)]
    rows = []
    for rec in df.to_dict(orient="records"):
        rows.append({"attack": rec["attack"], **{k: _plain(rec[k]) for k in (*first, *rest)}})
    return rows


def _json_safe(v: Any) -> Any:
    return None if isinstance(v, float) and not math.isfinite(v) else v


def _warnings(report: Any) -> list[str]:
    return [str(w) for w in getattr(report, "attrs", {}).get("warnings", []) or []]


def _plain(v: Any) -> Any:
    if hasattr(v, "item") and callable(v.item):
        try:
            return v.item()
        except (ValueError, TypeError):
            return v
    return v


def _report_columns(rows: list[dict[str, Any]]) -> list[str]:
    """Scalar columns of an eval report (lists and dicts left out of the printed table)."""
    cols: list[str] = []
    for r in rows:
        for k, v in r.items():
            if k not in cols and (v is None or isinstance(v, (int, float, str, bool))):
                cols.append(k)
    return cols


def _accuracy(rows: list[dict[str, Any]], metric: str) -> float:
    for r in rows:
        if r["attack"] == metric:
            return 100.0 * float(r["accuracy"])
    return float("nan")


# --------------------------------------------------------------------------------- commands
def cmd_plugins(args: argparse.Namespace) -> int:
    from .plugins import plugins

    df = plugins()
    records = [{k: _plain(v) for k, v in r.items()} for r in df.to_dict(orient="records")]
    if args.json:
        print(json.dumps(records, indent=2))
        return 0
    rows = []
    for r in records:
        groups: dict[str, list[str]] = {}
        for item in filter(None, (s.strip() for s in str(r["registers"]).split(","))):
            kind, _, name = item.partition(":")
            groups.setdefault(kind, []).append(name)
        registers = "; ".join(f"{k}: {', '.join(v)}" for k, v in groups.items())
        extra = [h for h in str(r["hooks"]).split(", ") if h and h != "toolbox_register"]
        if extra:
            registers = (registers + "; " if registers else "") + "hooks: " + ", ".join(extra)
        rows.append({"plugin": r["plugin"], "version": r["version"], "builtin": r["builtin"],
                     "status": r["status"], "registers": registers or "-"})
    print(format_table(rows))
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from .plugins import registry

    reg = registry()
    kinds = [args.kind] if args.kind else list(KINDS)
    if args.kind and args.kind not in KINDS:
        raise UnknownNameError(f"unknown kind {args.kind!r}. Available: {', '.join(KINDS)}")
    entries = [e for e in reg.entries() if e.kind in kinds]
    if args.json:
        print(json.dumps([{"kind": e.kind, "name": e.name, "plugin": e.plugin, "doc": e.doc}
                          for e in entries], indent=2))
        return 0
    for i, kind in enumerate(kinds):
        rows = [{"name": e.name, "plugin": e.plugin, "description": e.doc}
                for e in sorted(entries, key=lambda e: e.name) if e.kind == kind]
        if not args.kind:
            print(("\n" if i else "") + f"{kind}:")
        print(format_table(rows) if rows else "(none registered)")
    return 0


# ------------------------------------------------------------------------------------ train
@dataclass
class RunResult:
    """What :func:`run_experiment` produced: the run directory, the training history and the
    evaluation report (``pandas.DataFrame``s)."""

    run_dir: Path
    history: Any
    report: Any
    rows: list[dict[str, Any]] = field(default_factory=list)


def default_run_dir(name: str, root: str | os.PathLike = "runs") -> Path:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = Path(root) / f"{name}-{stamp}"
    k = 1
    while path.exists():
        k += 1
        path = Path(root) / f"{name}-{stamp}-{k}"
    return path


def _plugin_versions() -> dict[str, str]:
    from .plugins import system

    return {name: info.version for name, info in system().info.items()}


def _write_config(cfg: Any, run_dir: Path, argv: Sequence[str] | None) -> None:
    from . import __version__
    from .config import config_fingerprint

    (run_dir / "config.toml").write_text(
        "# resolved experiment config written by `toolbox train`\n" + cfg.to_toml())
    meta = {"fingerprint": config_fingerprint(cfg), "config": cfg.to_dict(),
            "source": str(cfg.source) if cfg.source else None, "toolbox": __version__,
            "plugins": _plugin_versions(), "argv": list(argv) if argv is not None else None,
            "started": _dt.datetime.now().isoformat(timespec="seconds")}
    (run_dir / "config.json").write_text(json.dumps(meta, indent=2, default=str) + "\n")


def _check_resume(cfg: Any, run_dir: Path) -> Path:
    """The checkpoint to resume from; raises when the run's config differs from ``cfg``."""
    from .config import config_diff, config_fingerprint

    meta_path = run_dir / "config.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"--resume: {run_dir} holds no run (no config.json); "
                                f"start it without --resume")
    meta = json.loads(meta_path.read_text())
    if meta.get("fingerprint") != config_fingerprint(cfg):
        diff = config_diff(meta.get("config", {}), cfg)
        raise ValueError(
            f"--resume: the config differs from the one {run_dir} was started with "
            f"({'; '.join(diff[:5]) or 'fingerprint mismatch'}{' ...' if len(diff) > 5 else ''}); "
            f"resume with the same config or start a new run directory")
    from .train.checkpoint import latest_checkpoint

    ckpt = latest_checkpoint(run_dir, CHECKPOINT_DIR)
    if ckpt is None:
        raise FileNotFoundError(f"--resume: no checkpoint to resume from in {run_dir / CHECKPOINT_DIR}")
    return ckpt


def _missing_defaults(cfg: Any) -> list:
    from .plugins import registry

    have = {cb["name"] for cb in cfg.callbacks}
    return [registry().create("callback", n) for n in DEFAULT_CALLBACKS if n not in have]


def _checkpointer(cfg: Any) -> list:
    """The Trainer's ``Checkpoint`` callback (``run_dir/checkpoints/last.pt`` after every
    epoch, atomic) unless the config lists one itself."""
    from .plugins import registry

    if any(cb["name"] == "checkpoint" for cb in cfg.callbacks):
        return []
    if "checkpoint" in registry().names("callback"):
        return [registry().create("callback", "checkpoint")]
    from .train.checkpoint import Checkpoint

    return [Checkpoint()]


def evaluate_config(cfg: Any, model: Any, test: Any) -> tuple[Any, list[dict[str, Any]]]:
    """Run the config's ``[eval]`` on ``model``: ``(report DataFrame, rows)``."""
    from .eval import evaluate

    attacks = cfg.build_eval_attacks()
    report = evaluate(model, test, attacks=attacks, n=cfg.eval.n, batch_size=cfg.eval.batch_size,
                      device=cfg.device(), seed=cfg.train.seed)
    return report, report_rows(report)


def write_report(rows: list[dict[str, Any]], run_dir: Path, stem: str = "eval",
                 warns: Sequence[str] = ()) -> None:
    """``run_dir/<stem>.csv`` and ``run_dir/<stem>.md`` (markdown table + sanity warnings)."""
    import pandas as pd

    cols = _report_columns(rows)
    pd.DataFrame([{c: r.get(c) for c in cols} for r in rows]).to_csv(run_dir / f"{stem}.csv", index=False)
    text = format_markdown(rows, cols)
    if warns:
        text += "\nSanity warnings:\n\n" + "".join(f"- {w}\n" for w in warns)
    (run_dir / f"{stem}.md").write_text(text)


def run_experiment(cfg: Any, run_dir: str | os.PathLike, *, resume: bool = False,
                   argv: Sequence[str] | None = None, log: Callable[[str], None] = print) -> RunResult:
    """Train and evaluate one config into ``run_dir``.

    Writes ``config.toml`` (the resolved config), ``config.json`` (fingerprint, versions),
    ``history.csv``, ``curves.png``, ``checkpoints/last.pt`` (after every epoch; ``--resume``
    continues from it), and at the end ``eval.csv`` and ``eval.md`` (the worst-case table).
    """
    run_dir = Path(run_dir)
    resume_from = None
    if resume:
        resume_from = _check_resume(cfg, run_dir)
    elif (run_dir / "config.json").exists():
        raise ValueError(f"{run_dir} already holds a run; pass --resume to continue it or choose "
                         f"another --run-dir")
    train, val, test = cfg.build_data()
    run_dir.mkdir(parents=True, exist_ok=True)
    if not resume:
        _write_config(cfg, run_dir, argv)
    trainer = cfg.build_trainer(callbacks=[*_missing_defaults(cfg), *_checkpointer(cfg)], run_dir=run_dir)
    log(f"{'resuming' if resume else 'training'} {cfg.name!r} in {run_dir} "
        f"({len(train)} train, {len(val) if val is not None else 0} val, {len(test)} test; "
        f"{cfg.train.epochs} epochs on {cfg.device()})")
    history = trainer.fit(train, cfg.train.epochs, val_data=val, resume=resume_from)
    if not (run_dir / "history.csv").exists():
        history.to_csv(run_dir / "history.csv", index=False)
    model = trainer.model
    model = getattr(model, "module", model)  # DDP
    report, rows = evaluate_config(cfg, model, test)
    write_report(rows, run_dir, warns=_warnings(report))
    return RunResult(run_dir, history, report, rows)


def cmd_train(args: argparse.Namespace) -> int:
    from .config import load

    cfg = load(args.config, args.set or [])
    if args.device:
        cfg.train.device = args.device
    if args.resume and not args.run_dir:
        raise ValueError("--resume needs --run-dir DIR (the run directory to continue)")
    run_dir = Path(args.run_dir) if args.run_dir else default_run_dir(cfg.name)
    res = run_experiment(cfg, run_dir, resume=args.resume, argv=args._argv)
    if len(res.history):
        last = {k: _plain(v) for k, v in res.history.iloc[-1].to_dict().items()}
        print("last epoch: " + ", ".join(f"{k}={_fmt(v)}" for k, v in last.items()))
    print(format_table(res.rows, _report_columns(res.rows)))
    for w in _warnings(res.report):
        print(f"sanity warning: {w}")
    print(f"run directory: {res.run_dir}")
    return 0


# ------------------------------------------------------------------------------------- eval
def find_run_config(checkpoint: Path) -> Path:
    """``config.toml`` of the run a checkpoint belongs to (its directory or a parent)."""
    for d in [checkpoint.parent, *list(checkpoint.parents)[1:3]]:
        if (d / "config.toml").is_file():
            return d / "config.toml"
    raise FileNotFoundError(f"no config.toml next to {checkpoint} or in its parent directories; "
                            f"pass --config CONFIG")


def load_model(cfg: Any, checkpoint: Path):
    """The config's model with weights from ``checkpoint``: a Trainer checkpoint (read with
    ``torch.load(weights_only=True)``; a corrupt or foreign file raises the Trainer's
    ``ValueError``), or a bare ``model.state_dict()`` such as robust early stopping's ``best.pt``."""
    import torch

    from .train.checkpoint import read_checkpoint

    if not checkpoint.is_file():
        raise FileNotFoundError(f"checkpoint not found: {checkpoint}")
    model = cfg.build_model()
    own = model.state_dict()
    try:
        obj = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - read_checkpoint below gives the clear error
        obj = None
    if isinstance(obj, dict) and obj and set(obj) == set(own) and all(
            isinstance(v, torch.Tensor) for v in obj.values()):
        weights = obj
    else:
        weights = read_checkpoint(checkpoint, map_location="cpu")["model"]
    try:
        model.load_state_dict(weights)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ValueError(f"checkpoint {str(checkpoint)!r} does not fit the config's model "
                         f"{cfg.model.name!r}: {first}") from None
    return model


def _eval_attacks(args: argparse.Namespace, cfg: Any) -> dict[str, Any]:
    from .attacks import attack
    from .config import _params
    from .plugins import registry
    from .threat import threat

    if not args.attack:
        if args.eps is not None or args.norm is not None:
            raise ValueError("--eps/--norm need --attack NAME (e.g. --attack pgd --eps 0.3)")
        return cfg.build_eval_attacks()
    if args.eps is None:
        raise ValueError("--attack needs --eps (the radius in [0, 1] pixel units, e.g. --eps 0.3)")
    names = [n.strip() for a in args.attack for n in a.split(",") if n.strip()]
    tm = threat(args.norm or "linf", eps=args.eps)
    opts = {"steps": args.steps, "step_size": args.step_size, "restarts": args.restarts, "seed": args.seed}
    out = {}
    for name in names:
        params, var_kw = _params(registry().get("attack", name))
        kw = {k: v for k, v in opts.items() if v is not None and (var_kw or k in params)}
        label = name + (f"-{args.steps}" if "steps" in kw else "")
        out[label] = attack(name, threat=tm, **kw)
    return out


def cmd_eval(args: argparse.Namespace) -> int:
    import pandas as pd

    from .config import load
    from .eval import evaluate

    ckpt = Path(args.checkpoint)
    if not ckpt.is_file():
        raise FileNotFoundError(f"checkpoint not found: {ckpt}")
    cfg = load(Path(args.config) if args.config else find_run_config(ckpt), args.set or [])
    if args.device:
        cfg.train.device = args.device
    attacks = _eval_attacks(args, cfg)
    model = load_model(cfg, ckpt)
    test = cfg.build_test_data(args.split)
    n = args.n if args.n is not None else cfg.eval.n
    bs = args.batch_size or cfg.eval.batch_size
    report = evaluate(model, test, attacks=attacks, n=n, batch_size=bs, device=cfg.device(),
                      seed=args.seed)
    rows = report_rows(report)
    cols = _report_columns(rows)
    if args.json:
        print(json.dumps([{c: _json_safe(r.get(c)) for c in cols} for r in rows], indent=2, default=str))
    else:
        print(f"{ckpt}: {min(n or len(test), len(test))} {cfg.data.name} {args.split} examples")
        print(format_table(rows, cols))
        for w in _warnings(report):
            print(f"sanity warning: {w}")
    if args.csv:
        pd.DataFrame([{c: r.get(c) for c in cols} for r in rows]).to_csv(args.csv, index=False)
    return 0


# ------------------------------------------------------------------------------------ repro
def repro_configs(plugin: str) -> list[Path]:
    """Paths returned by plugin ``plugin``'s ``toolbox_repro_configs`` hook (matched by plugin
    name or distribution name)."""
    from .plugins import system

    sysm = system()
    impls = sysm.pm.hook.toolbox_repro_configs.get_hookimpls()
    by_name = {impl.plugin_name: impl for impl in impls}
    key = plugin.strip().lower()
    aliases: dict[str, str] = {}
    for name in by_name:
        info = sysm.info.get(name)
        for a in (name, info.distribution if info else "", info.module if info else ""):
            if a:
                aliases[a.lower()] = name
                aliases[a.lower().replace("_", "-").removeprefix("toolbox-")] = name
    if key not in aliases and key.replace("_", "-").removeprefix("toolbox-") not in aliases:
        if key in {n.lower() for n in sysm.info}:
            raise UnknownNameError(f"plugin {plugin!r} ships no reproduction configs (it does not "
                                   f"implement toolbox_repro_configs)")
        raise UnknownNameError(f"unknown plugin {plugin!r}. Plugins with reproduction configs: "
                               f"{', '.join(sorted(by_name)) or '(none)'}")
    name = aliases.get(key) or aliases[key.replace("_", "-").removeprefix("toolbox-")]
    paths = by_name[name].function() or []
    return [Path(p) for p in paths]


def cmd_repro(args: argparse.Namespace) -> int:
    from .config import load

    paths = repro_configs(args.plugin)
    configs = [load(p, args.set or []) for p in paths]
    if args.quick:
        configs = [c for c in configs if c.paper is not None and c.paper.quick]
    if not configs:
        what = "quick (paper.quick = true) " if args.quick else ""
        raise ValueError(f"plugin {args.plugin!r} has no {what}reproduction configs to run")
    if args.list:
        print(format_table([{"config": c.name, "quick": bool(c.paper and c.paper.quick),
                             "expected figures": len(c.paper.expect) if c.paper else 0,
                             "file": str(c.source)} for c in configs]))
        return 0
    root = Path(args.run_dir) if args.run_dir else default_run_dir(f"repro-{args.plugin}")
    table: list[dict[str, Any]] = []
    for cfg in configs:
        if args.device:
            cfg.train.device = args.device
        res = run_experiment(cfg, root / cfg.name, argv=args._argv)
        expect = cfg.paper.expect if cfg.paper else []
        if not expect:
            for r in res.rows:
                table.append({"config": cfg.name, "metric": r["attack"], "source": "", "paper": None,
                              "tolerance": None, "measured": 100.0 * float(r["accuracy"]),
                              "diff": None, "result": "n/a"})
        for e in expect:
            got = _accuracy(res.rows, e.metric)
            table.append({"config": cfg.name, "metric": e.metric, "source": e.source, "paper": e.value,
                          "tolerance": e.tolerance, "measured": round(got, 2),
                          "diff": round(got - e.value, 2), "result": "pass" if e.check(got) else "FAIL"})
    print(format_table(table))
    (root / "repro.md").write_text(format_markdown(table))
    import pandas as pd

    pd.DataFrame(table).to_csv(root / "repro.csv", index=False)
    failed = [r for r in table if r["result"] == "FAIL"]
    checked = [r for r in table if r["result"] != "n/a"]
    print(f"{len(checked) - len(failed)}/{len(checked)} figures within tolerance; results in {root}")
    return 1 if failed else 0


# ----------------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    p = argparse.ArgumentParser(prog="toolbox", description="Adversarial-robustness toolbox: "
                                "train, evaluate and reproduce, extended by plugins.")
    p.add_argument("--version", action="version", version=f"toolbox {__version__}")
    p.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    s = sub.add_parser("plugins", help="list installed plugins and what each registers")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.set_defaults(func=cmd_plugins)

    s = sub.add_parser("list", help="list registered components of one kind (or all)")
    s.add_argument("kind", nargs="?", help=f"one of {', '.join(KINDS)}")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_list)

    sets = dict(action="append", metavar="KEY=VALUE", default=[],
                help="override a config value, e.g. --set train.epochs=3 (value parsed as TOML)")

    s = sub.add_parser("train", help="train and evaluate one TOML experiment config")
    s.add_argument("config", help="experiment config (.toml)")
    s.add_argument("--set", **sets)
    s.add_argument("--run-dir", help="run directory (default runs/<name>-<timestamp>)")
    s.add_argument("--resume", action="store_true", help="continue the run in --run-dir")
    s.add_argument("--device", help="override train.device (cpu, cuda, auto)")
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("eval", help="evaluate a checkpoint; prints the worst-case table")
    s.add_argument("checkpoint")
    s.add_argument("--config", help="experiment config (default: config.toml of the checkpoint's run)")
    s.add_argument("--set", **sets)
    s.add_argument("--attack", action="append", metavar="NAME[,NAME]",
                   help="attack(s) to run (default: the config's [eval.attacks])")
    s.add_argument("--eps", type=float, help="radius in [0, 1] pixel units")
    s.add_argument("--norm", help="threat model: linf (default), l2, l1, ...")
    s.add_argument("--steps", type=int)
    s.add_argument("--step-size", type=float)
    s.add_argument("--restarts", type=int)
    s.add_argument("--seed", type=int, default=0, help="attack seed (default 0)")
    s.add_argument("--n", type=int, help="number of test examples (default: the config's eval.n)")
    s.add_argument("--batch-size", type=int)
    s.add_argument("--split", default="test")
    s.add_argument("--device", help="override train.device")
    s.add_argument("--csv", help="also write the table to this CSV file")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_eval)

    s = sub.add_parser("repro", help="run a plugin's reproduction configs; paper vs measured")
    s.add_argument("plugin", help="plugin name (see `toolbox plugins`)")
    s.add_argument("--quick", action="store_true", help="only the CPU scale-downs (paper.quick = true)")
    s.add_argument("--list", action="store_true", help="list the configs and exit")
    s.add_argument("--set", **sets)
    s.add_argument("--run-dir", help="root directory for the runs (default runs/repro-<plugin>-<timestamp>)")
    s.add_argument("--device", help="override train.device")
    s.set_defaults(func=cmd_repro)

    _plugin_commands(sub)
    return p


def _plugin_commands(sub: Any) -> None:
    """Let plugins add sub-commands (``toolbox_add_commands``); a failing plugin is skipped
    with a warning naming it."""
    from .plugins import PluginLoadWarning, system

    hook = system().pm.hook.toolbox_add_commands
    for impl in hook.get_hookimpls():
        try:
            impl.function(subparsers=sub)
        except Exception as exc:  # noqa: BLE001 - one plugin must not break the CLI
            warnings.warn(f"toolbox plugin {impl.plugin_name!r} failed to add its commands: "
                          f"{type(exc).__name__}: {exc}", PluginLoadWarning, stacklevel=2)


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, KeyError) and not isinstance(exc, UnknownNameError) and exc.args:
        msg = str(exc.args[0])
    else:
        msg = str(exc) or type(exc).__name__
    out = ""
    for line in (ln.strip() for ln in msg.splitlines()):
        if line:
            out += line if not out else (" " if out.endswith(":") else "; ") + line
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0 ok, 1 failed reproduction, 2 usage/config error)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, argparse usage errors
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    except (ValueError, KeyError) as exc:  # e.g. duplicate names while loading plugins
        print(f"toolbox: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    if getattr(args, "func", None) is None:
        parser.print_help(sys.stderr)
        return 2
    args._argv = argv
    try:
        return int(args.func(args) or 0)
    except (ValueError, KeyError, FileNotFoundError) as exc:
        if args.debug:
            raise
        print(f"toolbox: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("toolbox: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
