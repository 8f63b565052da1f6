"""Name -> factory registries, one per kind of component.

The registry is filled by plugins through the ``toolbox_register(registry)`` hook; builtins go
through the same hook.  Look-ups of unknown names raise :class:`UnknownNameError` (a
``KeyError``) listing what is available.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

KINDS: tuple[str, ...] = (
    "attack",
    "defense",
    "threat",
    "certifier",
    "model",
    "dataset",
    "callback",
    "loss",
)


class UnknownNameError(KeyError):
    """An unknown component name; the message lists the available ones."""

    def __str__(self) -> str:  # KeyError quotes its argument; keep the message readable
        return str(self.args[0]) if self.args else ""


class DuplicateNameError(ValueError):
    """Two plugins registered the same name for the same kind."""


@dataclass(frozen=True)
class Entry:
    kind: str
    name: str
    factory: Callable[..., Any]
    plugin: str
    doc: str = ""


@dataclass
class Registry:
    """Holds ``kind -> name -> Entry``.

    Plugins receive a registry in ``toolbox_register`` and call ``add`` (or the
    ``add_<kind>`` shorthands).  Names are case-insensitive and stored lower-case.
    """

    _entries: dict[str, dict[str, Entry]] = field(default_factory=lambda: {k: {} for k in KINDS})
    _current_plugin: str = "<unknown>"

    # -- registration -------------------------------------------------------------------------
    def add(self, kind: str, name: str, factory: Callable[..., Any], *, doc: str | None = None) -> None:
        """Register ``factory`` (a class or callable returning the component) as ``kind/name``."""
        kind = _check_kind(kind)
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"name must be a non-empty string, got {name!r}")
        if not callable(factory):
            raise ValueError(f"factory for {kind} {name!r} must be callable, got {factory!r}")
        key = name.strip().lower()
        old = self._entries[kind].get(key)
        if old is not None:
            raise DuplicateNameError(
                f"{kind} {key!r} is registered by two plugins: {old.plugin!r} and "
                f"{self._current_plugin!r}; uninstall one of them or disable it with "
                f"TOOLBOX_DISABLE_PLUGINS={self._current_plugin}"
            )
        text = doc if doc is not None else (getattr(factory, "__doc__", None) or "")
        summary = text.strip().splitlines()[0] if text.strip() else ""
        self._entries[kind][key] = Entry(kind, key, factory, self._current_plugin, summary)

    def add_attack(self, name: str, factory: Callable[..., Any], **kw: Any) -> None:
        self.add("attack", name, factory, **kw)

    def add_defense(self, name: str, factory: Callable[..., Any], **kw: Any) -> None:
        self.add("defense", name, factory, **kw)

    def add_threat(self, name: str, factory: Callable[..., Any], **kw: Any) -> None:
        self.add("threat", name, factory, **kw)

    def add_certifier(self, name: str, factory: Callable[..., Any], **kw: Any) -> None:
        self.add("certifier", name, factory, **kw)

    def add_model(self, name: str, factory: Callable[..., Any], **kw: Any) -> None:
        self.add("model", name, factory, **kw)

    def add_dataset(self, name: str, factory: Callable[..., Any], **kw: Any) -> None:
        self.add("dataset", name, factory, **kw)

    def add_callback(self, name: str, factory: Callable[..., Any], **kw: Any) -> None:
        self.add("callback", name, factory, **kw)

    def add_loss(self, name: str, factory: Callable[..., Any], **kw: Any) -> None:
        self.add("loss", name, factory, **kw)

    # -- look-up ------------------------------------------------------------------------------
    def entry(self, kind: str, name: str) -> Entry:
        kind = _check_kind(kind)
        if not isinstance(name, str):
            raise UnknownNameError(f"{kind} name must be a string, got {name!r}")
        key = name.strip().lower()
        try:
            return self._entries[kind][key]
        except KeyError:
            avail = sorted(self._entries[kind])
            close = difflib.get_close_matches(key, avail, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise UnknownNameError(
                f"unknown {kind} {name!r}.{hint} Available: {', '.join(avail) or '(none)'}"
            ) from None

    def get(self, kind: str, name: str) -> Callable[..., Any]:
        """The factory registered as ``kind/name``."""
        return self.entry(kind, name).factory

    def create(self, kind: str, name: str, /, *args: Any, **kwargs: Any) -> Any:
        """Build the component ``kind/name`` with the given arguments."""
        return self.get(kind, name)(*args, **kwargs)

    def names(self, kind: str) -> list[str]:
        return sorted(self._entries[_check_kind(kind)])

    def entries(self) -> list[Entry]:
        return [e for k in KINDS for e in self._entries[k].values()]

    def _remove_plugin(self, plugin: str) -> None:
        for k in KINDS:
            self._entries[k] = {n: e for n, e in self._entries[k].items() if e.plugin != plugin}


def _check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise UnknownNameError(f"unknown kind {kind!r}. Available: {', '.join(KINDS)}")
    return kind
