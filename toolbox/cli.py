"""The ``toolbox`` command line (also ``python -m toolbox``); documented in ``docs/cli.md``.

Sub-commands::

    toolbox plugins [--json]                   installed plugins and what each registers
    toolbox list [KIND [NAME]] [--json]        registered names; one component's docs + arguments
    toolbox train CONFIG [--set k=v ...] [--run-dir DIR] [--resume]
    toolbox eval CHECKPOINT [--attack pgd,apgd-ce --eps 0.3 --norm linf --steps 20] [--n 1000]
    toolbox repro PLUGIN [--quick] [--list]    run a plugin's reproduction configs

Plugins add sub-commands through the ``toolbox_add_commands(subparsers)`` hook.  Exit codes:
0 success, 1 a reproduction missed a paper figure, 2 a usage, config, data or checkpoint error
(one line ``toolbox: error: ...`` on stderr, no traceback; ``--debug`` shows it).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import difflib
import inspect
import json
import math
import os
import re
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
                         for v, w, num in zip(vals, widths, numeric, strict=True)).rstrip()

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


_ROLE = re.compile(r":[a-z]+:`~?([^`]+)`")


def _clean_rst(text: str) -> str:
    """Docstring markup made plain: ``:class:`x``` and ````x```` become ```x```."""
    return _ROLE.sub(r"`\1`", text).replace("``", "`")


def _summary(entry: Any, width: int = 100) -> str:
    """The first sentence of a registered component's documentation (plain text)."""
    doc = inspect.getdoc(entry.factory) or ""
    first = doc.split("\n\n")[0] if entry.doc and doc.startswith(entry.doc) else (entry.doc or "")
    text = _clean_rst(" ".join(first.split()))
    m = re.search(r"(?<!e\.g)(?<!i\.e)(?<!\bvs)(?<!\bal)(?<!\bcf)\.(\s|$)", text)
    if m:
        text = text[: m.start() + 1]
    return text if len(text) <= width else text[: width - 3].rstrip() + "..."


def _signature_rows(entry: Any) -> list[dict[str, Any]]:
    """The keyword arguments of a registered factory: name, default (or "required")."""
    from .config import _model_params, _params

    try:
        sig = inspect.signature(entry.factory)
    except (TypeError, ValueError):
        return []
    rows = [{"argument": prm.name,
             "default": "(required)" if prm.default is prm.empty else repr(prm.default)}
            for prm in sig.parameters.values() if prm.kind in (prm.POSITIONAL_OR_KEYWORD, prm.KEYWORD_ONLY)]
    if entry.kind == "model":  # the zoo's factories forward **kw to the real builder
        names, _ = _model_params(entry.name)
        have = {r["argument"] for r in rows}
        rows += [{"argument": n, "default": ""} for n in names if n not in have]
    elif not rows and _params(entry.factory)[1]:
        rows = [{"argument": "**kwargs", "default": ""}]
    return rows


def cmd_list(args: argparse.Namespace) -> int:
    from .plugins import registry

    reg = registry()
    if args.kind and args.kind not in KINDS:
        raise UnknownNameError(f"unknown kind {args.kind!r}.{_close(args.kind, KINDS)} "
                               f"Available: {', '.join(KINDS)}")
    if args.name:
        if not args.kind:
            raise ValueError("NAME needs a KIND first, e.g. toolbox list attack pgd")
        entry = reg.entry(args.kind, args.name)  # UnknownNameError listing the names
        rows = _signature_rows(entry)
        if args.json:
            print(json.dumps({"kind": entry.kind, "name": entry.name, "plugin": entry.plugin,
                              "doc": inspect.getdoc(entry.factory) or entry.doc,
                              "arguments": rows}, indent=2))
            return 0
        print(f"{entry.kind} {entry.name!r} (plugin {entry.plugin})\n")
        print(_clean_rst(inspect.getdoc(entry.factory) or entry.doc or "(no documentation)"))
        if rows:
            print("\narguments (keys of its config table):")
            print(format_table(rows))
        return 0
    kinds = [args.kind] if args.kind else list(KINDS)
    entries = [e for e in reg.entries() if e.kind in kinds]
    if args.json:
        print(json.dumps([{"kind": e.kind, "name": e.name, "plugin": e.plugin, "doc": _summary(e)}
                          for e in entries], indent=2))
        return 0
    for i, kind in enumerate(kinds):
        rows = [{"name": e.name, "plugin": e.plugin, "description": _summary(e)}
                for e in sorted(entries, key=lambda e: e.name) if e.kind == kind]
        if not args.kind:
            print(("\n" if i else "") + f"{kind}:")
        print(format_table(rows) if rows else "(none registered)")
    return 0


def _close(word: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" Did you mean {close[0]!r}?" if close else ""


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


def _check_resume(cfg: Any, run_dir: Path) -> Path | None:
    """The checkpoint to resume from (``None`` when the run has not finished an epoch yet);
    raises ``ValueError`` naming the differences when the run's config differs from ``cfg``."""
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

    return latest_checkpoint(run_dir, CHECKPOINT_DIR)  # None: no epoch finished, start over


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


def evaluate_config(cfg: Any, model: Any, test: Any,
                    attacks: dict[str, Any] | None = None) -> tuple[Any, list[dict[str, Any]]]:
    """Run the config's ``[eval]`` on ``model`` (``attacks`` default to the config's
    ``[eval.attacks]``; ``[eval.groups]`` rows are added when their attacks are evaluated, and
    the ``[eval.certifiers]`` rows always):
    ``(report DataFrame, rows)``; accuracies are fractions in [0, 1]."""
    from .eval import evaluate

    attacks = cfg.build_eval_attacks() if attacks is None else attacks
    # the config's [eval.groups] apply when their attacks are among those evaluated
    groups = {g: m for g, m in cfg.eval.groups.items() if all(k in attacks for k in m)}
    report = evaluate(model, test, attacks=attacks, n=cfg.eval.n, batch_size=cfg.eval.batch_size,
                      device=cfg.device(), seed=cfg.train.seed, groups=groups,
                      certifiers=cfg.build_eval_certifiers() or None)
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
    Every component is built before anything is written, so a config that fails to build
    leaves no half-made run directory.  Under ``torchrun`` only rank 0 writes.
    """
    run_dir = Path(run_dir)
    resume_from = None
    if resume:
        resume_from = _check_resume(cfg, run_dir)
    elif (run_dir / "config.json").exists():
        raise ValueError(f"{run_dir} already holds a run; pass --resume to continue it or choose "
                         f"another --run-dir")
    train, val, test = cfg.build_data()
    attacks = cfg.build_eval_attacks()
    trainer = cfg.build_trainer(callbacks=[*_missing_defaults(cfg), *_checkpointer(cfg)], run_dir=run_dir)
    main_process = getattr(trainer, "is_main_process", True)
    if main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        if not resume:
            _write_config(cfg, run_dir, argv)
    if resume and resume_from is None:
        log(f"--resume: no checkpoint in {run_dir / CHECKPOINT_DIR} yet; starting from epoch 0")
    log(f"{'resuming' if resume_from is not None else 'training'} {cfg.name!r} in {run_dir} "
        f"({len(train)} train, {len(val) if val is not None else 0} val, {len(test)} test; "
        f"{cfg.train.epochs} epochs on {cfg.device()})")
    history = trainer.fit(train, cfg.train.epochs, val_data=val, resume=resume_from)
    if main_process and not (run_dir / "history.csv").exists():
        history.to_csv(run_dir / "history.csv", index=False)
    model = trainer.model
    model = getattr(model, "module", model)  # DDP
    report, rows = evaluate_config(cfg, model, test, attacks)
    if main_process:
        write_report(rows, run_dir, warns=_warnings(report))
    return RunResult(run_dir, history, report, rows)


def cmd_train(args: argparse.Namespace) -> int:
    from .config import load

    cfg = load(args.config, args.set or [])
    if args.device:
        cfg.train.device = args.device
    if args.resume and not args.run_dir:
        raise ValueError("--resume needs --run-dir DIR (the run directory to continue)")
    if not args.run_dir and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ValueError("under torchrun pass --run-dir DIR (every process must write to the same run)")
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
                      seed=args.seed, groups=None if args.attack else cfg.eval.groups,
                      certifiers=None if args.attack else (cfg.build_eval_certifiers() or None))
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
def _norm_plugin(name: str) -> str:
    return name.strip().lower().replace("_", "-").removeprefix("toolbox-")


def repro_configs(plugin: str) -> list[Path]:
    """The reproduction configs of ``plugin`` (matched by plugin, module or distribution
    name): the paths its ``toolbox_repro_configs`` hook returns, a directory standing for the
    ``*.toml`` files in it.  An unknown, disabled or failed plugin, or a listed path that does
    not exist, raises a ``KeyError``/``FileNotFoundError`` naming it."""
    from .plugins import PluginSystem, system

    sysm = system()
    impls = sysm.pm.hook.toolbox_repro_configs.get_hookimpls()
    by_name = {impl.plugin_name: impl for impl in impls}
    key = _norm_plugin(plugin)
    aliases: dict[str, str] = {}
    for name in by_name:
        info = sysm.info.get(name)
        for a in (name, info.distribution if info else "", info.module if info else ""):
            if a:
                aliases[_norm_plugin(a)] = name
    if key not in aliases:
        known = {_norm_plugin(n): n for n in sysm.info}
        if key in {_norm_plugin(n) for n in PluginSystem.disabled()}:
            raise UnknownNameError(f"plugin {plugin!r} is disabled (TOOLBOX_DISABLE_PLUGINS)")
        failed = {_norm_plugin(n): err for n, err in sysm.failed.items()}
        if key in failed:
            raise UnknownNameError(f"plugin {plugin!r} failed to load: {failed[key]}")
        if key in known:
            raise UnknownNameError(f"plugin {known[key]!r} ships no reproduction configs (it does not "
                                   f"implement toolbox_repro_configs)")
        raise UnknownNameError(f"unknown plugin {plugin!r}.{_close(key, list(aliases))} Plugins with "
                               f"reproduction configs: {', '.join(sorted(by_name)) or '(none)'}")
    name = aliases[key]
    paths: list[Path] = []
    for raw in by_name[name].function() or []:
        path = Path(raw)
        if path.is_dir():
            paths += sorted(path.glob("*.toml"))
        elif path.is_file():
            paths.append(path)
        else:
            raise FileNotFoundError(f"plugin {name!r} lists the reproduction config {str(path)!r}, "
                                    f"which does not exist (is the plugin installed with its repro/ files?)")
    return paths


def _paper_figure(cfg: Any, e: Any) -> float | None:
    """The paper's own number for a figure: ``paper`` when given, else ``value`` unless the
    config is a scale-down (``paper.quick``), whose values are its own expectations."""
    if e.paper is not None:
        return e.paper
    return None if cfg.paper.quick else e.value


def repro_rows(cfg: Any, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One table row per expected figure of ``cfg``: the paper's figure, the expected value
    and tolerance, the measured accuracy (percent, from the eval rows), the difference and
    ``pass``/``FAIL``; without expected figures, one ``n/a`` row per eval row."""
    from .config import Expectation

    expect = cfg.paper.expect if cfg.paper else []
    out = []
    if not expect:
        for r in rows:
            out.append({"config": cfg.name, "metric": r["attack"], "source": "", "paper": None,
                        "expected": None, "tolerance": None, "bounds": "",
                        "measured": round(100.0 * float(r["accuracy"]), 2), "diff": None, "result": "n/a"})
    for e in expect:
        got = _accuracy(rows, e.metric)
        out.append({"config": cfg.name, "metric": e.metric, "source": e.source,
                    "paper": _paper_figure(cfg, e), "expected": e.value, "tolerance": e.tolerance,
                    "bounds": Expectation(e.metric, None, None, minimum=e.minimum, maximum=e.maximum).describe(),
                    "measured": round(got, 2),
                    "diff": round(got - (e.value if e.value is not None else
                                         e.minimum if e.minimum is not None else e.maximum), 2),
                    "result": "pass" if e.check(got) else "FAIL"})
    return out


def cmd_repro(args: argparse.Namespace) -> int:
    from .config import load

    paths = repro_configs(args.plugin)
    configs = [load(p, args.set or []) for p in paths]  # validate every config before running any
    if args.config:
        known = {c.name for c in configs} | {Path(c.source).stem for c in configs if c.source}
        unknown = [n for n in args.config if n not in known]
        if unknown:
            raise ValueError(f"--config: plugin {args.plugin!r} has no reproduction config {unknown[0]!r}.  "
                             f"Its configs: {', '.join(sorted(known))}")
        configs = [c for c in configs if c.name in args.config
                   or (c.source and Path(c.source).stem in args.config)]
    if args.quick:
        configs = [c for c in configs if c.paper is not None and c.paper.quick]
    if not configs:
        what = "quick (paper.quick = true) " if args.quick else ""
        raise ValueError(f"plugin {args.plugin!r} has no {what}reproduction configs to run")
    if args.list:
        rows = []
        for c in configs:
            figures = ", ".join(f"{e.metric} {e.describe()}" for e in c.paper.expect) \
                if c.paper else ""
            rows.append({"config": c.name, "quick": bool(c.paper and c.paper.quick),
                         "epochs": c.train.epochs, "figures": figures or "-", "file": str(c.source)})
        print(format_table(rows))
        return 0
    root = Path(args.run_dir) if args.run_dir else default_run_dir(f"repro-{_norm_plugin(args.plugin)}")
    table: list[dict[str, Any]] = []
    used: set[str] = set()
    for cfg in configs:
        if args.device:
            cfg.train.device = args.device
        sub, k = cfg.name, 1
        while sub in used:  # two configs with one name: distinct run directories
            k += 1
            sub = f"{cfg.name}-{k}"
        used.add(sub)
        res = run_experiment(cfg, root / sub, argv=args._argv)
        table += repro_rows(cfg, res.rows)
    print(format_table(table))
    import pandas as pd

    (root / "repro.md").write_text(format_markdown(table))
    pd.DataFrame(table).to_csv(root / "repro.csv", index=False)
    failed = [r for r in table if r["result"] == "FAIL"]
    checked = [r for r in table if r["result"] != "n/a"]
    print(f"{len(checked) - len(failed)}/{len(checked)} figures within tolerance; results in {root}")
    return 1 if failed else 0


# ----------------------------------------------------------------------------------- parser
class UsageError(ValueError):
    """A command-line usage error (unknown option, missing argument ...)."""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``toolbox: error: ...`` (exit code 2 from :func:`main`)."""

    def error(self, message: str):  # type: ignore[override]
        m = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
        if m:
            choices = [c.strip(" '") for c in m.group(2).split(",")]
            message = message[: m.start()] + f"invalid choice {m.group(1)!r}.{_close(m.group(1), choices)} " \
                f"Choose from: {', '.join(choices)}"
        raise UsageError(f"{message} (see {self.prog} --help)")


def build_parser() -> argparse.ArgumentParser:
    """The ``toolbox`` argument parser, with the sub-commands plugins add."""
    from . import __version__

    p = _Parser(prog="toolbox", description="Adversarial-robustness toolbox: train, evaluate and "
                "reproduce, extended by plugins.", epilog="Exit codes: 0 ok, 1 a reproduction missed "
                "a paper figure, 2 usage/config/data error.  Docs: docs/cli.md, docs/configs.md.")
    p.add_argument("--version", action="version", version=f"toolbox {__version__}")
    p.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    # --debug is accepted after the sub-command too (SUPPRESS: does not reset the top-level one)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show tracebacks for errors")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    def add(name: str, help: str, **kw: Any) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, description=kw.pop("description", help),
                              parents=[common], **kw)

    s = add("plugins", "list installed plugins and what each registers")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.set_defaults(func=cmd_plugins)

    s = add("list", "list registered components of one kind (or all); with NAME, its documentation "
            "and arguments")
    s.add_argument("kind", nargs="?", help=f"one of {', '.join(KINDS)}")
    s.add_argument("name", nargs="?", help="a registered name: show its documentation and arguments")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.set_defaults(func=cmd_list)

    sets = dict(action="append", metavar="KEY=VALUE", default=[],
                help="override a config value, e.g. --set train.epochs=3 (value parsed as TOML; "
                     "repeatable)")

    s = add("train", "train and evaluate one TOML experiment config",
            description="Train and evaluate one TOML experiment config.  The run directory gets "
                        "config.toml, config.json, history.csv, curves.png, checkpoints/ and "
                        "eval.csv/eval.md.")
    s.add_argument("config", help="experiment config (.toml); see docs/configs.md")
    s.add_argument("--set", **sets)
    s.add_argument("--run-dir", help="run directory (default runs/<name>-<timestamp>)")
    s.add_argument("--resume", action="store_true",
                   help="continue the run in --run-dir from its last checkpoint (same config)")
    s.add_argument("--device", help="override train.device (cpu, cuda, cuda:N, auto)")
    s.set_defaults(func=cmd_train)

    s = add("eval", "evaluate a checkpoint; prints the per-example worst-case table")
    s.add_argument("checkpoint", help="checkpoints/last.pt of a run, best.pt, or a model state_dict")
    s.add_argument("--config", help="experiment config (default: config.toml of the checkpoint's run)")
    s.add_argument("--set", **sets)
    s.add_argument("--attack", action="append", metavar="NAME[,NAME]",
                   help="attack(s) to run (default: the config's [eval.attacks])")
    s.add_argument("--eps", type=float, help="radius in [0, 1] pixel units (needed with --attack)")
    s.add_argument("--norm", help="threat model: linf (default), l2, l1, ...")
    s.add_argument("--steps", type=int, help="attack iterations (attacks that take steps)")
    s.add_argument("--step-size", type=float, help="attack step size")
    s.add_argument("--restarts", type=int, help="random restarts (attacks that take restarts)")
    s.add_argument("--seed", type=int, default=0, help="attack seed (default 0)")
    s.add_argument("--n", type=int, help="number of test examples (default: the config's eval.n)")
    s.add_argument("--batch-size", type=int, help="evaluation batch size (default: eval.batch_size)")
    s.add_argument("--split", default="test", help="dataset split (default test)")
    s.add_argument("--device", help="override train.device")
    s.add_argument("--csv", help="also write the table to this CSV file")
    s.add_argument("--json", action="store_true", help="print the table as JSON")
    s.set_defaults(func=cmd_eval)

    s = add("repro", "run a plugin's reproduction configs; paper vs measured",
            description="Run the reproduction configs a plugin ships (toolbox_repro_configs hook) "
                        "and print the paper's figures beside the measured ones.  Exit code 1 "
                        "when a figure misses its tolerance.")
    s.add_argument("plugin", help="plugin name (see `toolbox plugins`)")
    s.add_argument("--quick", action="store_true", help="only the CPU scale-downs (paper.quick = true)")
    s.add_argument("--list", action="store_true", help="list the configs and their figures, run nothing")
    s.add_argument("--config", action="append", metavar="NAME",
                   help="run only this config (its name or file stem; repeatable)")
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
    if type(exc).__name__ == "DatasetNotFoundError" and "data.root" not in out:
        out += ' (in a config: [data] root = "DIR", or --set data.root=DIR)'
    return out


#: errors shown as one line with exit code 2; anything else is a bug and keeps its traceback
EXPECTED_ERRORS = (ValueError, KeyError, OSError)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0 ok, 1 failed reproduction, 2 usage/config/data
    error, shown as one line ``toolbox: error: ...`` on stderr; ``--debug`` raises instead)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv[: argv.index("--")] if "--" in argv else "--debug" in argv
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if getattr(args, "func", None) is None:
            parser.print_help(sys.stderr)
            return 2
        args._argv = argv
        return int(args.func(args) or 0)
    except SystemExit as exc:  # --help, --version; a plugin command calling sys.exit
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    except EXPECTED_ERRORS as exc:
        if debug and not isinstance(exc, UsageError):
            raise
        print(f"toolbox: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("toolbox: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
