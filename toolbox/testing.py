"""pytest plugin shipped with the toolbox (entry point ``pytest11: toolbox``).

Loaded automatically by pytest once the toolbox is installed, so every plugin's test suite gets:

* one torch thread per pytest-xdist worker (two workers on two cores otherwise oversubscribe and
  run several times slower);
* ``toolbox_seed`` — seeds torch, numpy and ``random`` with 0 for the test and returns the seed;
* ``digits_data`` — sklearn digits as float tensors ``(x_train [N,1,8,8], y_train, x_test,
  y_test)`` in [0, 1] (session scope, no download);
* ``digits_model`` — a small CNN trained on digits to ~95 % clean accuracy, cached on disk under
  ``$TOOLBOX_CACHE`` so parallel workers and later runs reuse it (session scope, eval mode);
* ``toolbox_plugin`` — registers a plugin object for the test only and unregisters it after.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: a longer test (a reproduction scale-down)")
    config.addinivalue_line("markers", "oracle: compares with a peer library used as a test oracle")
    if os.environ.get("PYTEST_XDIST_WORKER") or os.environ.get("TOOLBOX_TEST_THREADS"):
        import torch

        torch.set_num_threads(int(os.environ.get("TOOLBOX_TEST_THREADS", "1")))


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
    """sklearn digits, 8x8 greyscale in [0, 1]: ``(x_train, y_train, x_test, y_test)``.

    1,297 training and 500 held-out test images (fixed split), shapes ``[N, 1, 8, 8]``.
    """
    from toolbox import data

    train, test = data.load("digits", split="train"), data.load("digits", split="test")
    return train.x.float(), train.y.long(), test.x.float(), test.y.long()


def _train_digits_model(x, y, seed: int = 0):
    import torch
    from toolbox import models

    torch.manual_seed(seed)
    model = models.create("digits-cnn", seed=seed)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(seed)
    for _ in range(30):
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), 64):
            idx = perm[i:i + 64]
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    return model.eval()


@pytest.fixture(scope="session")
def digits_model(digits_data, tmp_path_factory):
    """A small CNN trained on ``digits_data`` (eval mode), cached on disk between runs/workers."""
    import torch
    from toolbox import models

    cache = Path(os.environ.get("TOOLBOX_CACHE") or tmp_path_factory.getbasetemp().parent) / "digits-cnn-v1.pt"
    model = models.create("digits-cnn", seed=0)
    if cache.exists():
        try:
            model.load_state_dict(torch.load(cache, weights_only=True))
            return model.eval()
        except Exception:  # a half-written file from a killed run: retrain
            pass
    x, y, _, _ = digits_data
    model = _train_digits_model(x, y)
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(f".{os.getpid()}.tmp")
    torch.save(model.state_dict(), tmp)
    os.replace(tmp, cache)
    return model


@pytest.fixture
def toolbox_plugin():
    """Register plugin objects for one test: ``toolbox_plugin(obj, name=None)``; removed after."""
    from toolbox import plugins

    added = []

    def register(obj, name=None):
        added.append(plugins.system().register(obj, name))
        return obj

    yield register
    for name in reversed(added):
        plugins.system().unregister(name)
