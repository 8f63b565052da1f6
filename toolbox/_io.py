"""Atomic file writes: every file the toolbox writes (checkpoints, history CSVs, plots, dataset
caches) goes through :func:`atomic_write`, so a reader or a run resumed after a crash sees the
old file or the new one, never half of one."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path


def temp_path(path: str | os.PathLike, suffix: str = ".tmp") -> Path:
    """A fresh hidden file name next to ``path`` (same directory, so ``os.replace`` is atomic),
    ending in ``suffix`` (writers that pick the format from the suffix need the real one)."""
    path = Path(path)
    return path.parent / f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:12]}{suffix}"


def atomic_write(path: str | os.PathLike, write: Callable[[str], object], *, suffix: str = ".tmp",
                 fsync: bool = False) -> Path:
    """Call ``write(tmp)`` to create a temporary file next to ``path`` (parent folders
    created), optionally fsync it, then rename it onto ``path``.  On any error the temporary
    file is removed and the error re-raised.  The file gets the writer's usual permissions
    (umask).  Returns ``path`` as a :class:`~pathlib.Path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path, suffix)
    try:
        write(str(tmp))
        if fsync:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
