"""pytest plugin shipped with the toolbox (entry point ``pytest11: toolbox``).

Loaded automatically by pytest once the toolbox is installed, so every plugin's test suite gets:

* one torch thread per test process (pytest-xdist workers included: two workers on two cores
  otherwise oversubscribe and run several times slower); ``TOOLBOX_TEST_THREADS=N`` sets
  another count;
* ``toolbox_seed`` -- seeds torch, numpy and ``random`` with 0 for the test and returns the seed;
* ``digits_data`` -- scikit-learn's digits as float tensors ``(x_train [1297,1,8,8], y_train
  [1297], x_test [500,1,8,8], y_test [500])``, images in [0, 1] (session scope, no download);
* ``digits_model`` -- a small CNN (``digits-cnn``) trained on ``digits_data`` to about 97 %
  clean accuracy on the 500 test digits (at least 90 % is asserted), in eval mode.  Trained
  once (about 2 s on one core) and cached under :func:`toolbox.data.cache_dir`
  (``$TOOLBOX_CACHE``); pytest-xdist workers share the file through a lock and an atomic
  write, so every worker sees the same weights.  Each test gets its own copy: training or
  modifying it does not leak into other tests;
* ``toolbox_plugin`` -- ``toolbox_plugin(obj, name=None)`` registers a plugin object (a module
  or any object with ``@toolbox.hookimpl`` methods) for the test only; it is unregistered
  afterwards and the registry rebuilt.

And two functions for plugin test suites:

* :func:`run_script` -- runs a Python script (a tutorial, an example) in a fresh interpreter
  with one torch thread and a non-interactive matplotlib backend, fails the test with the
  script's stderr when it exits non-zero, and returns its stdout;
* :func:`check_repro_configs` -- checks every reproduction config a plugin ships (found
  through its hook, loads, states the paper's figures, builds) and returns them by file name.
"""

from __future__ import annotations

import contextlib
import copy
import os
import random
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

#: bump when the training recipe below changes, so stale caches are not reused
DIGITS_MODEL_VERSION = "v2"
#: the clean accuracy on the 500 test digits that ``digits_model`` guarantees
DIGITS_MODEL_MIN_ACCURACY = 0.90


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: a longer test (a reproduction scale-down)")
    config.addinivalue_line("markers", "oracle: compares with a peer library used as a test oracle")
    # one torch thread per test process unless TOOLBOX_TEST_THREADS says otherwise: the test
    # models are tiny, and two threads on a busy two-core machine run them up to 10x slower
    import torch

    raw = os.environ.get("TOOLBOX_TEST_THREADS", "1")
    try:
        threads = int(raw)
    except ValueError:
        raise pytest.UsageError(f"TOOLBOX_TEST_THREADS must be a positive integer, got {raw!r}") from None
    if threads < 1:
        raise pytest.UsageError(f"TOOLBOX_TEST_THREADS must be a positive integer, got {raw!r}")
    torch.set_num_threads(threads)


@pytest.fixture
def toolbox_seed():
    """Seed ``random``, numpy and torch with 0; returns 0."""
    import numpy as np
    import torch

    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    return 0


@pytest.fixture(scope="session")
def digits_data():
    """scikit-learn digits, 8x8 greyscale in [0, 1]: ``(x_train, y_train, x_test, y_test)``.

    1,297 training and 500 held-out test images (a fixed split: the last 500 images of the
    set are the test split), images float32 ``[N, 1, 8, 8]``, labels int64 ``[N]``.  Shared by
    the whole session: do not modify the tensors in place.
    """
    from toolbox import data

    train, test = data.load("digits", split="train"), data.load("digits", split="test")
    return train.x.float(), train.y.long(), test.x.float(), test.y.long()


def _shift(x: Any, generator: Any) -> Any:
    """Translate each image of ``x [B, C, H, W]`` by -1, 0 or +1 pixel in each direction."""
    import torch
    import torch.nn.functional as F

    h, w = x.shape[-2:]
    padded = F.pad(x, (1, 1, 1, 1))
    dy = torch.randint(0, 3, (x.shape[0],), generator=generator)
    dx = torch.randint(0, 3, (x.shape[0],), generator=generator)
    out = torch.empty_like(x)
    for a in range(3):
        for b in range(3):
            m = (dy == a) & (dx == b)
            if m.any():
                out[m] = padded[m, :, a:a + h, b:b + w]
    return out


def train_digits_model(x: Any, y: Any, seed: int = 0, epochs: int = 30) -> Any:
    """The recipe behind ``digits_model``: ``digits-cnn``, Adam with a one-cycle learning rate
    peaking at 5e-3, batch 64, ``epochs`` epochs with random one-pixel shifts.

    ``x`` ``[N, 1, 8, 8]`` in [0, 1], ``y`` ``[N]``.  Returns the model in eval mode (about
    97 % clean accuracy on the digits test split with the defaults).  Runs on one thread
    (about 2 s).
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny net: one thread is several times faster than two
    try:
        return _train(x, y, seed, epochs)
    finally:
        torch.set_num_threads(threads)


def _train(x: Any, y: Any, seed: int, epochs: int) -> Any:
    import torch
    import torch.nn.functional as F

    from toolbox import models

    torch.manual_seed(seed)
    model = models.create("digits-cnn", seed=seed)
    batch = 64
    steps = epochs * ((len(x) + batch - 1) // batch)
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=5e-3, total_steps=steps)
    g = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), batch):
            idx = perm[i:i + batch]
            opt.zero_grad()
            F.cross_entropy(model(_shift(x[idx], g)), y[idx]).backward()
            opt.step()
            sched.step()
    return model.eval()


def _accuracy(model: Any, x: Any, y: Any) -> float:
    import torch

    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[bool]:
    """Exclusive inter-process lock on ``path`` (POSIX ``flock``); yields whether it is held.

    Without ``fcntl`` (Windows) or on an unwritable cache folder it yields ``False`` and the
    caller proceeds unlocked: the atomic write alone still keeps the cache file consistent.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield False
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(path, "a+")  # noqa: SIM115 - closed below
    except OSError:
        yield False
        return
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        yield True
    finally:
        with contextlib.suppress(OSError):
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
        fh.close()


def _atomic_torch_save(obj: Any, path: Path) -> None:
    """``torch.save`` to a temporary file in the same folder, then ``os.replace``."""
    import torch

    from ._io import atomic_write

    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def cached_digits_model(x_train: Any, y_train: Any, x_test: Any, y_test: Any,
                        cache: Path | None = None, *, train: Any = None,
                        min_accuracy: float = DIGITS_MODEL_MIN_ACCURACY) -> Any:
    """Load the ``digits_model`` weights from ``cache`` or train and store them.

    ``x_*`` ``[N, 1, 8, 8]`` in [0, 1], ``y_*`` ``[N]``.  ``cache`` defaults to
    ``cache_dir() / "digits-cnn-<version>.pt"``.  ``train`` (``(x, y) -> model``, default
    :func:`train_digits_model`) must return a ``digits-cnn``.  A missing, corrupt or foreign
    file (one that loads but scores under ``min_accuracy`` on the test split) is replaced.
    Processes sharing the cache take an exclusive lock, so only the first one trains and all
    get the same weights; the file is written atomically.  Raises ``AssertionError`` when a
    freshly trained model misses ``min_accuracy``.  Returns the model in eval mode.
    """
    import torch

    from toolbox import data, models

    if cache is None:
        cache = data.cache_dir() / f"digits-cnn-{DIGITS_MODEL_VERSION}.pt"
    with _file_lock(cache.with_name(cache.name + ".lock")):
        if cache.exists():
            model = models.create("digits-cnn", seed=0)
            try:
                model.load_state_dict(torch.load(cache, weights_only=True))
                model.eval()
                if _accuracy(model, x_test, y_test) >= min_accuracy:
                    return model
            except Exception:  # noqa: BLE001 - a corrupt or foreign file: retrain below
                pass
        model = (train or train_digits_model)(x_train, y_train).eval()
        acc = _accuracy(model, x_test, y_test)
        assert acc >= min_accuracy, (
            f"digits_model reached only {acc:.1%} clean accuracy on the {len(y_test)} test digits "
            f"(needs >= {min_accuracy:.0%}); the training recipe or digits-cnn changed")
        with contextlib.suppress(OSError):  # a read-only cache folder: just do not cache
            cache.parent.mkdir(parents=True, exist_ok=True)
            _atomic_torch_save(model.state_dict(), cache)
        return model


@pytest.fixture(scope="session")
def _toolbox_digits_model(digits_data):
    x, y, xt, yt = digits_data
    return cached_digits_model(x, y, xt, yt)


@pytest.fixture
def digits_model(_toolbox_digits_model):
    """A ``digits-cnn`` trained on ``digits_data`` (>= 90 % clean on the 500 test digits,
    about 97 %), in eval mode; input ``[N, 1, 8, 8]`` in [0, 1], output logits ``[N, 10]``.

    The weights are cached on disk and shared by pytest-xdist workers; every test gets its
    own deep copy, so it may train or modify it.
    """
    return copy.deepcopy(_toolbox_digits_model).eval()


@pytest.fixture
def toolbox_plugin():
    """Register plugin objects for one test: ``toolbox_plugin(obj, name=None)`` returns ``obj``.

    ``obj`` is a module, class instance or namespace whose functions are marked with
    ``@toolbox.hookimpl``.  Every plugin registered this way is unregistered after the test
    (the registry is rebuilt on the next look-up).
    """
    # ``toolbox.plugins`` the attribute is the function ``tb.plugins()``; import from the module
    from toolbox.plugins import system

    added = []

    def register(obj, name=None):
        sysm = system()
        added.append((sysm, sysm.register(obj, name)))
        return obj

    yield register
    for sysm, name in reversed(added):
        sysm.unregister(name)


def run_script(path: str | os.PathLike, *args: str, timeout: float = 600, threads: int = 1) -> str:
    """Run ``python path *args`` in a fresh interpreter and return its stdout (text).

    The child gets ``OMP_NUM_THREADS=threads`` and ``MPLBACKEND=Agg``; a non-zero exit fails
    the calling test with the last 3,000 characters of stderr, a run longer than ``timeout``
    seconds fails it too.  For tests of tutorials and examples::

        out = run_script(ROOT / "tutorials" / "x.py", "--quick", "--out", str(tmp_path))
        assert "robust accuracy" in out
    """
    env = dict(os.environ, OMP_NUM_THREADS=str(int(threads)), MPLBACKEND="Agg")
    try:
        proc = subprocess.run([sys.executable, os.fspath(path), *map(str, args)], env=env,
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{path} ran past {timeout:.0f} s; stderr tail:\n{(exc.stderr or '')[-3000:]}")
    if proc.returncode != 0:
        pytest.fail(f"{path} exited with {proc.returncode}; stderr tail:\n{proc.stderr[-3000:]}")
    return proc.stdout


def check_repro_configs(plugin: str, *, includes: Any = (), quick: Any = None) -> dict[str, Any]:
    """Check the reproduction configs ``plugin`` ships and return them as ``{file name:
    ExperimentConfig}``.

    For every path the plugin's ``toolbox_repro_configs`` hook returns (what ``toolbox repro
    PLUGIN`` runs): the file loads under the strict schema (which also checks that each
    expected figure names a row the evaluation reports), it has a ``[paper]`` table with at
    least one expected figure, and its model, defense, evaluation attacks and certifiers
    build.  ``includes``: file names that must be among the configs; ``quick``: when given,
    the exact set of file names marked ``paper.quick = true`` (the CPU scale-downs that
    ``toolbox repro PLUGIN --quick`` and the test suite run).  Failures name the file::

        configs = check_repro_configs("fastat", includes={"mnist_fgsm_rs_cpu.toml"},
                                      quick={"mnist_fgsm_rs_cpu.toml"})
        assert configs["mnist_fgsm_rs_cpu.toml"].train.epochs == 3
    """
    from .cli import repro_configs
    from .config import load

    paths = repro_configs(plugin)
    if not paths:
        pytest.fail(f"plugin {plugin!r} ships no reproduction configs")
    out: dict[str, Any] = {}
    for path in paths:
        name = Path(path).name
        if name in out:
            pytest.fail(f"plugin {plugin!r} lists two configs named {name}")
        try:
            cfg = load(path)
            cfg.build_model()
            cfg.build_defense()
            cfg.build_eval_attacks()
            cfg.build_eval_certifiers()
        except Exception as exc:  # name the file: the config errors name only the table
            pytest.fail(f"{name}: {type(exc).__name__}: {exc}")
        if cfg.paper is None or not cfg.paper.expect:
            pytest.fail(f"{name}: a reproduction config needs a [paper] table with expected figures")
        out[name] = cfg
    missing = sorted(set(includes) - set(out))
    if missing:
        pytest.fail(f"plugin {plugin!r} does not ship {', '.join(missing)} (it ships {', '.join(sorted(out))})")
    if quick is not None:
        marked = {n for n, c in out.items() if c.paper.quick}
        if marked != set(quick):
            pytest.fail(f"plugin {plugin!r}: configs marked paper.quick = {sorted(marked)}, expected {sorted(quick)}")
    return out
