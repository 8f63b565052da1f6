"""The plugin manager: builtin plugins plus third-party ones found through entry points.

Loading order: hook specs, the kernel's builtin plugins (``BUILTIN_PLUGINS``), then every
entry point of the group ``toolbox``.  Environment variables:

``TOOLBOX_DISABLE_PLUGINS=a,b``
    do not load the named plugins (entry-point names, or builtin names such as
    ``builtin-attacks``).
``TOOLBOX_DISABLE_PLUGIN_AUTOLOAD=1``
    load only the builtins (handy for isolated tests).
``TOOLBOX_TRACE_PLUGINS=1``
    print every hook call (pluggy tracing) to stderr.

A plugin that raises on import, or inside ``toolbox_register``, or whose hooks do not match the
specs (a misspelled ``toolbox_*`` name, wrong argument names) produces a
:class:`PluginLoadWarning` naming it and is skipped; everything else still loads.  A second
distribution using an entry-point name already taken is skipped with a warning naming both.
Two plugins registering the same component name raise
:class:`~toolbox.registry.DuplicateNameError` naming both.

Note: ``toolbox.plugins`` as an *attribute* of the package is the function ``tb.plugins()``;
reach this module with ``from toolbox.plugins import system`` or
``importlib.import_module("toolbox.plugins")``.
"""

from __future__ import annotations

import importlib
import os
import sys
import threading
import warnings
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pluggy

from . import hookspecs
from .registry import DuplicateNameError, Registry

ENTRY_POINT_GROUP = "toolbox"

#: builtin plugin name -> module, registered exactly like third-party plugins ("dogfooding")
BUILTIN_PLUGINS: dict[str, str] = {
    "builtin-threats": "toolbox.threat",
    "builtin-losses": "toolbox.losses",
    "builtin-attacks": "toolbox.attacks",
    "builtin-defenses": "toolbox.defense",
    "builtin-models": "toolbox.models",
    "builtin-datasets": "toolbox.data",
    "builtin-callbacks": "toolbox.train.callbacks",
}


class PluginLoadWarning(UserWarning):
    """A plugin could not be imported or failed while registering; it was skipped."""


@dataclass
class PluginInfo:
    name: str
    module: str
    version: str
    distribution: str
    builtin: bool
    hooks: list[str] = field(default_factory=list)


class PluginSystem:
    """Owns the pluggy ``PluginManager`` and the :class:`Registry` it fills."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.info: dict[str, PluginInfo] = {}
        self.failed: dict[str, str] = {}
        self._registry: Registry | None = None
        self._lock = threading.RLock()
        if os.environ.get("TOOLBOX_TRACE_PLUGINS"):
            self.pm.trace.root.setwriter(lambda s: sys.stderr.write(s))
            self.pm.enable_tracing()
        self._load()

    # -- loading ------------------------------------------------------------------------------
    @staticmethod
    def disabled() -> set[str]:
        raw = os.environ.get("TOOLBOX_DISABLE_PLUGINS", "")
        return {p.strip() for p in raw.split(",") if p.strip()}

    def _load(self) -> None:
        disabled = self.disabled()
        from . import __version__

        for name, modname in BUILTIN_PLUGINS.items():
            if name in disabled:
                continue
            module = importlib.import_module(modname)
            self._register(module, name, PluginInfo(name, modname, __version__, "toolbox", True))
        if os.environ.get("TOOLBOX_DISABLE_PLUGIN_AUTOLOAD", "").lower() in ("1", "true", "yes"):
            return
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            if ep.name in disabled:
                continue
            dist = getattr(ep, "dist", None)
            dist_name = dist.metadata["Name"] if dist is not None else ""
            if ep.name in self.info or ep.name in self.failed:
                other = self.info[ep.name].distribution if ep.name in self.info else "a failed plugin"
                if dist_name != other:  # the same distribution seen twice on sys.path is harmless
                    warnings.warn(
                        f"toolbox plugin name {ep.name!r} of distribution {dist_name or ep.value!r} "
                        f"is already taken by {other!r}; the second one was skipped",
                        PluginLoadWarning,
                        stacklevel=3,
                    )
                continue
            try:
                module = ep.load()
                info = PluginInfo(ep.name, ep.value, dist.version if dist is not None else "",
                                  dist_name, False)
                self._register(module, ep.name, info)
                self._check_hooks(module, ep.name)
            except Exception as exc:  # noqa: BLE001 - one broken plugin must not break the rest
                if self.pm.has_plugin(ep.name):
                    self.pm.unregister(name=ep.name)
                self.info.pop(ep.name, None)
                self.failed[ep.name] = f"{type(exc).__name__}: {exc}"
                warnings.warn(
                    f"toolbox plugin {ep.name!r} ({ep.value}) failed to load and was skipped: "
                    f"{type(exc).__name__}: {exc}",
                    PluginLoadWarning,
                    stacklevel=3,
                )
        self.pm.check_pending()

    def _check_hooks(self, plugin: Any, name: str) -> None:
        """Reject hook implementations that match no spec (a misspelled ``toolbox_*`` name),
        which pluggy would otherwise only report, for every plugin at once, later."""
        unknown = sorted(
            caller.name
            for caller in self.pm.get_hookcallers(plugin) or []
            if not caller.has_spec()
            for impl in caller.get_hookimpls()
            if impl.plugin is plugin and not impl.optionalhook
        )
        if unknown:
            raise pluggy.PluginValidationError(
                plugin, f"plugin {name!r} implements unknown hooks {unknown}; the hooks are: "
                        f"{', '.join(sorted(n for n in dir(hookspecs) if n.startswith('toolbox_')))}")

    def _register(self, plugin: Any, name: str, info: PluginInfo) -> None:
        self.pm.register(plugin, name=name)
        info.hooks = sorted(
            h.name for h in self.pm.get_hookcallers(plugin) or [] if h.name.startswith("toolbox_")
        )
        self.info[name] = info
        self._registry = None

    def register(self, plugin: Any, name: str | None = None) -> str:
        """Register a plugin object at run time (tests, notebooks); returns its name.

        ``plugin`` is a module or object with ``@toolbox.hookimpl`` functions.  Raises
        ``ValueError`` when the name is taken and ``pluggy.PluginValidationError`` when a hook
        does not match its spec (unknown hook or argument names).
        """
        with self._lock:
            name = name or getattr(plugin, "__name__", None) or f"plugin-{id(plugin)}"
            if name in self.info or self.pm.has_plugin(name):
                raise ValueError(f"a toolbox plugin named {name!r} is already registered")
            version = str(getattr(plugin, "__version__", ""))
            module = getattr(plugin, "__name__", None) or type(plugin).__name__
            self._register(plugin, name, PluginInfo(name, str(module), version, "", False))
            try:
                self._check_hooks(plugin, name)
            except Exception:
                self.unregister(name)
                raise
            return name

    def unregister(self, name: str) -> None:
        """Remove the plugin registered as ``name`` (the registry is rebuilt on next use)."""
        with self._lock:
            if self.pm.has_plugin(name):
                self.pm.unregister(name=name)
            self.info.pop(name, None)
            self.failed.pop(name, None)
            self._registry = None

    # -- registry -----------------------------------------------------------------------------
    @property
    def registry(self) -> Registry:
        with self._lock:
            if self._registry is None:
                self._registry = self._build_registry()
            return self._registry

    def _build_registry(self) -> Registry:
        reg = Registry()
        for name in list(self.failed):  # failures inside toolbox_register are re-evaluated
            if name in self.info:
                del self.failed[name]
        # call each implementation separately so every entry knows which plugin made it
        for impl in reversed(self.pm.hook.toolbox_register.get_hookimpls()):
            name = self.pm.get_name(impl.plugin) or repr(impl.plugin)
            reg._current_plugin = name
            try:
                impl.function(registry=reg)
            except DuplicateNameError:
                raise
            except Exception as exc:  # noqa: BLE001
                reg._remove_plugin(name)
                self.failed[name] = f"{type(exc).__name__}: {exc}"
                builtin = name in BUILTIN_PLUGINS
                if builtin:
                    raise
                warnings.warn(
                    f"toolbox plugin {name!r} raised in toolbox_register and was skipped: "
                    f"{type(exc).__name__}: {exc}",
                    PluginLoadWarning,
                    stacklevel=4,
                )
        reg._current_plugin = "<runtime>"
        return reg

    def hook(self) -> Any:
        return self.pm.hook


_SYSTEM: PluginSystem | None = None
_SYSTEM_LOCK = threading.Lock()


def system() -> PluginSystem:
    """The process-wide plugin system (built on first use)."""
    global _SYSTEM
    with _SYSTEM_LOCK:
        if _SYSTEM is None:
            _SYSTEM = PluginSystem()
        return _SYSTEM


def reload() -> PluginSystem:
    """Forget the loaded plugins and load them again (after installing one, or in tests)."""
    global _SYSTEM
    with _SYSTEM_LOCK:
        _SYSTEM = None
    return system()


def registry() -> Registry:
    return system().registry


def names(kind: str) -> list[str]:
    """Registered names of one kind: ``"attack"``, ``"defense"``, ``"threat"``,
    ``"certifier"``, ``"model"``, ``"dataset"``, ``"callback"`` or ``"loss"``."""
    return registry().names(kind)


def plugins():
    """A ``pandas.DataFrame`` with one row per loaded plugin: name, version, distribution,
    whether it is builtin, the hooks it implements and what it registers (``kind:name`` list)."""
    import pandas as pd

    sysm = system()
    reg = sysm.registry
    rows = []
    for name, info in sysm.info.items():
        provides = [f"{e.kind}:{e.name}" for e in reg.entries() if e.plugin == name]
        rows.append(
            {
                "plugin": name,
                "version": info.version,
                "distribution": info.distribution,
                "builtin": info.builtin,
                "module": info.module,
                "hooks": ", ".join(info.hooks),
                "registers": ", ".join(provides),
                "status": "failed: " + sysm.failed[name] if name in sysm.failed else "ok",
            }
        )
    for name, err in sysm.failed.items():
        if name not in sysm.info:
            rows.append(
                {"plugin": name, "version": "", "distribution": "", "builtin": False,
                 "module": "", "hooks": "", "registers": "", "status": "failed: " + err}
            )
    return pd.DataFrame(rows, columns=["plugin", "version", "distribution", "builtin", "module",
                                       "hooks", "registers", "status"])


def repro_dir(module_file: str | os.PathLike) -> Path:
    """The reproduction-config folder of the plugin whose module file is ``module_file``
    (pass ``__file__``): ``<distribution>/repro`` in a source checkout (an editable install,
    ``plugins/<name>/repro``), else ``<package>/repro`` when installed as package data.  A
    plugin's ``toolbox_repro_configs`` hook typically returns ``sorted(repro_dir(__file__).glob("*.toml"))``.
    """
    here = Path(module_file).resolve().parent
    for cand in (here.parent / "repro", here / "repro"):
        if cand.is_dir():
            return cand
    return here.parent / "repro"
