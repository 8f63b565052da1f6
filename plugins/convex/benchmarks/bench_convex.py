"""Dual-network certification speed: exact vs random projections, memory vs width, and the
speed-up over solving the LP relaxation per example (thesis §3.4.5, Figure 3.20).

    python plugins/convex/benchmarks/bench_convex.py [--n 20] [--lp-n 2] [--threads 1]

1. Throughput (examples/s) of margin bounds at l_inf eps 0.1 on MNIST test images for the
   MNIST Small net (``mnist-small``: conv16-conv32-fc100, 4,804 hidden units) and Wide(1):
   exact intermediate bounds (a certificate) vs r = 10 / 50 projections (estimates).  Weights
   are a fixed random init (the thesis's timing setting); crossing units are then plentiful,
   the expensive case for both paths.
2. Peak resident memory of one bound computation (10 random MNIST-sized images) for Wide(k),
   k = 1, 2, 4, exact vs r = 50, each in a fresh subprocess: the exact path grows with width squared, the
   projected one linearly.
3. The LP relaxation the dual network bounds (triangle relaxation with the same
   intermediate bounds, all 9 targets, scipy HiGHS on the unrolled sparse network) per
   example on Wide(1), against the exact dual pass: same relaxation, dual is a lower bound.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np
import torch
from torch import nn

import toolbox as tb


def images(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    x, y, _ = tb.data.subset(tb.data.load("mnist", split="test"), torch.arange(n)).tensors()
    return x, y


def throughput(model: nn.Module, x: torch.Tensor, y: torch.Tensor, projections, batch: int) -> float:
    from toolbox_convex import margin_lower_bounds

    g = torch.Generator().manual_seed(0)
    t0 = time.perf_counter()
    with torch.no_grad():
        for s in range(0, x.shape[0], batch):
            margin_lower_bounds(model, x[s:s + batch], y[s:s + batch], 0.1,
                                projections=projections, generator=g)
    return x.shape[0] / (time.perf_counter() - t0)


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _memory_child(k: int, projections: int | None) -> None:
    """Run in a subprocess: print the peak RSS increase (MiB) of one bound computation
    (Linux: the high-water mark is reset through /proc/self/clear_refs just before)."""
    from toolbox_convex import margin_lower_bounds

    torch.set_num_threads(1)
    model = tb.models.create("convex-wide", k=k, seed=0).eval()
    # MNIST-shaped random images: loading the dataset would set the peak RSS by itself
    x = torch.rand(10, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    y = torch.arange(10)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = _status_kib("VmRSS")
    t0 = time.perf_counter()
    with torch.no_grad():
        margin_lower_bounds(model, x, y, 0.1, projections=projections,
                            generator=torch.Generator().manual_seed(0))
    peak = _status_kib("VmHWM")
    print(json.dumps({"mib": (peak - before) / 1024, "s": time.perf_counter() - t0}))


def memory(k: int, projections: int | None) -> dict:
    code = ("import sys; sys.path.insert(0, %r); import bench_convex as b; b._memory_child(%d, %r)"
            % (os.path.dirname(os.path.abspath(__file__)), k, projections))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=900,
                         env=dict(os.environ, OMP_NUM_THREADS="1"))
    if out.returncode:
        return {"mib": float("nan"), "s": float("nan"), "error": out.stderr.strip().splitlines()[-1:]}
    return json.loads(out.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------- the LP
def _dense(block: list[nn.Module], shape: torch.Size) -> tuple[np.ndarray, np.ndarray]:
    """The affine map of a ReLU-free block as a dense ``(out, in)`` matrix and bias."""
    n_in = int(torch.Size(shape).numel())
    with torch.no_grad():
        h0 = torch.zeros(1, *shape, dtype=torch.float64)
        hs = torch.eye(n_in, dtype=torch.float64).view(n_in, *shape)
        for m in block:
            m = m.double()
            h0, hs = m(h0), m(hs)
        b = h0.flatten(1)[0]
        w = (hs.flatten(1) - b).t()
    return w.numpy(), b.numpy()


def lp_margins(model: nn.Module, x: torch.Tensor, y: int, eps: float) -> tuple[np.ndarray, float]:
    """min over the triangle relaxation of ``z_y - z_j`` for every ``j != y`` (HiGHS), with the
    dual network's exact intermediate bounds; returns (values, seconds)."""
    from scipy import sparse
    from scipy.optimize import linprog
    from toolbox_convex import DualNetwork

    model = model.double()
    x = x.double().unsqueeze(0)
    dn = DualNetwork(model, x, eps)
    blocks, cur, relus = [], [], []
    for t, m in enumerate(dn.layers):
        if isinstance(m, nn.ReLU):
            blocks.append(cur)
            relus.append(t)
            cur = []
        else:
            cur.append(m)
    blocks.append(cur)
    # variables: x, then per block its pre-activation zhat, then per ReLU its output z
    shape_in = dn.shapes[0]
    sizes, offs = [], []
    n_var = int(torch.Size(shape_in).numel())
    var_bounds = list(zip(dn.lo.detach().flatten().tolist(), dn.hi.detach().flatten().tolist(),
                          strict=True))
    prev_off, prev_n = 0, n_var
    shape = shape_in
    eq_rows, eq_b, ub_rows, ub_b = [], [], [], []
    for i, block in enumerate(blocks):
        w, b = _dense(block, shape)
        n_out = w.shape[0]
        off = n_var
        n_var += n_out
        var_bounds += [(None, None)] * n_out
        # zhat = W prev + b  ->  [-W | I] = b
        blk = sparse.hstack([sparse.csr_matrix((n_out, prev_off)), sparse.csr_matrix(-w),
                             sparse.csr_matrix((n_out, off - prev_off - prev_n)),
                             sparse.identity(n_out, format="csr")])
        eq_rows.append(blk)
        eq_b.append(b)
        sizes.append(n_out)
        offs.append(off)
        shape = dn.shapes[relus[i]] if i < len(relus) else dn.shapes[-1]
        if i < len(relus):
            lo = dn.lower[relus[i]].detach().flatten().double().numpy()
            up = dn.upper[relus[i]].detach().flatten().double().numpy()
            z_off = n_var
            n_var += n_out
            zb = []
            for j in range(n_out):
                if up[j] <= 0:
                    zb.append((0.0, 0.0))
                elif lo[j] >= 0:
                    zb.append((None, None))
                    eq_rows.append(sparse.csr_matrix(([1.0, -1.0], ([0, 0], [z_off + j, off + j])),
                                                     shape=(1, z_off + j + 1)))
                    eq_b.append(np.zeros(1))
                else:
                    zb.append((0.0, None))
                    # zhat - z <= 0 ; (u - l) z - u zhat <= -u l
                    ub_rows.append(sparse.csr_matrix(([1.0, -1.0], ([0, 0], [off + j, z_off + j])),
                                                     shape=(1, z_off + j + 1)))
                    ub_b.append(0.0)
                    ub_rows.append(sparse.csr_matrix(([up[j] - lo[j], -up[j]], ([0, 0], [z_off + j, off + j])),
                                                     shape=(1, z_off + j + 1)))
                    ub_b.append(-up[j] * lo[j])
            var_bounds += zb
            prev_off, prev_n = z_off, n_out
    def pad(m):
        m = m.tocsr()
        return sparse.hstack([m, sparse.csr_matrix((m.shape[0], n_var - m.shape[1]))]).tocsr()

    a_eq = sparse.vstack([pad(m) for m in eq_rows]).tocsr()
    b_eq = np.concatenate([np.atleast_1d(v) for v in eq_b])
    a_ub = sparse.vstack([pad(m) for m in ub_rows]).tocsr() if ub_rows else None
    b_ub = np.array(ub_b) if ub_rows else None
    out_off, n_cls = offs[-1], sizes[-1]
    vals = []
    t0 = time.perf_counter()
    for j in range(n_cls):
        if j == y:
            continue
        c = np.zeros(n_var)
        c[out_off + y], c[out_off + j] = 1.0, -1.0
        res = linprog(c, A_ub=a_ub, b_ub=b_ub, A_eq=a_eq, b_eq=b_eq, bounds=var_bounds, method="highs")
        vals.append(res.fun if res.status == 0 else float("nan"))
    return np.array(vals), time.perf_counter() - t0


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=20, help="images for the throughput rows")
    p.add_argument("--lp-n", type=int, default=2, help="images for the LP comparison")
    p.add_argument("--widths", type=int, nargs="*", default=[1, 2, 4])
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    from toolbox_convex import margin_lower_bounds

    x, y = images(max(a.n, a.lp_n))
    print("1. certification throughput, l_inf eps 0.1 (examples/s, one thread; projections are estimates)")
    for name, model in (("mnist-small", tb.models.create("mnist-small", seed=0)),
                        ("wide(1)", tb.models.create("convex-wide", k=1, seed=0))):
        model.eval()
        row = {r: throughput(model, x[:a.n], y[:a.n], r, batch=10) for r in (None, 50, 10)}
        print(f"   {name:12s} exact {row[None]:8.2f}   r=50 {row[50]:8.2f} ({row[50] / row[None]:5.1f}x)"
              f"   r=10 {row[10]:8.2f} ({row[10] / row[None]:5.1f}x)")
    print("2. peak memory of one bound computation, 10 images (MiB, RSS increase; seconds)")
    for k in a.widths:
        units = 784 * k + 392 * k + 128 * k
        ex, pr = memory(k, None), memory(k, 50)
        print(f"   wide({k}) {units:6d} hidden units: exact {ex['mib']:8.1f} MiB {ex['s']:7.2f} s"
              f"   r=50 {pr['mib']:8.1f} MiB {pr['s']:7.2f} s")
    print("3. LP relaxation (HiGHS, 9 targets) vs the exact dual pass, Wide(1), per example")
    model = tb.models.create("convex-wide", k=1, seed=0).eval().double()
    for i in range(a.lp_n):
        vals, t_lp = lp_margins(model, x[i], int(y[i]), 0.1)
        t0 = time.perf_counter()
        with torch.no_grad():
            m = margin_lower_bounds(model, x[i:i + 1].double(), y[i:i + 1], 0.1)[0].numpy()
        t_dual = time.perf_counter() - t0
        dual = np.delete(m, int(y[i]))
        print(f"   image {i}: LP {t_lp:7.2f} s, dual {t_dual:6.3f} s ({t_lp / t_dual:6.0f}x faster); "
              f"dual <= LP: {bool((dual <= vals + 1e-6).all())}, max gap {np.nanmax(vals - dual):.3g}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
