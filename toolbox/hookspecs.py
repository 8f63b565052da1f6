"""Hook specifications of the ``toolbox`` plugin system (pluggy project name ``"toolbox"``).

A plugin is a module (or object) whose functions are marked with :data:`toolbox.hookimpl`
and named like the specs below.  A distribution exposes it through the ``toolbox``
entry-point group::

    [options.entry_points]
    toolbox =
        myplugin = toolbox_myplugin.plugin

Every hook takes keyword arguments only, as pluggy requires.  Implementations may accept any
subset of the documented arguments.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:  # pragma: no cover
    import argparse

    from .registry import Registry

PROJECT = "toolbox"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


# --------------------------------------------------------------------------- registration
@hookspec
def toolbox_register(registry: Registry) -> None:
    """Add components to ``registry``.

    Called once per plugin when the registry is first built (lazily, on the first
    ``tb.names``/``tb.attack``/... call).  Use the ``registry.add_<kind>(name, factory)``
    methods; kinds are ``attack``, ``defense``, ``threat``, ``certifier``, ``model``,
    ``dataset``, ``callback`` and ``loss``.  A name already taken by another plugin raises
    :class:`toolbox.registry.DuplicateNameError` naming both plugins.
    """


# --------------------------------------------------------------------------- reproduction
@hookspec
def toolbox_repro_configs() -> list[Path]:
    """Return the paths of this plugin's reproduction configs (``repro/*.toml``).

    ``toolbox repro <plugin>`` runs them and prints the paper's numbers beside the measured
    ones.  Return an empty list (or do not implement the hook) when there are none.
    """


# --------------------------------------------------------------------------- command line
@hookspec
def toolbox_add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Add sub-commands to the ``toolbox`` CLI.

    Each added parser must set a ``func`` default: ``parser.set_defaults(func=callable)``;
    the callable receives the parsed ``argparse.Namespace`` and returns an exit code.
    """


# --------------------------------------------------------------------------- trainer events
@hookspec
def toolbox_trainer_event(event: str, trainer: Any, logs: dict) -> None:
    """Observe Trainer events without writing a callback.

    ``event`` is one of ``"fit_start"``, ``"epoch_start"``, ``"epoch_end"``, ``"fit_end"``;
    ``logs`` holds the metrics known at that point (read-only by convention).  Called on every
    rank; use ``trainer.is_main_process`` to act once.
    """
