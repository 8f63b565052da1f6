"""DDP: ``torchrun --nproc_per_node=2`` (gloo, CPU) against one process with the same global
batch, running tests/_train_script.py both ways."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).with_name("_train_script.py")
TIMEOUT = 240


def _start(cmd: list[str]) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
    # own session: on a timeout the whole group (torchrun and its workers) is killed
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def _finish(proc: subprocess.Popen) -> str:
    try:
        out, _ = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"{proc.args} timed out:\n{out[-3000:]}")
    assert proc.returncode == 0, out[-4000:]
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    # --standalone: a local rendezvous on a free port (safe with pytest-xdist workers side by side)
    ddp = _start([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                  str(SCRIPT), "ddp", str(tmp / "ddp.pt"), str(tmp / "ddp_run")])
    single = _start([sys.executable, str(SCRIPT), "ddp", str(tmp / "single.pt"), str(tmp / "single_run")])
    _finish(single)
    _finish(ddp)
    load = lambda name: torch.load(tmp / name, weights_only=False)  # noqa: E731
    return load("ddp.pt"), load("single.pt"), tmp


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


@pytest.mark.slow
@pytest.mark.parametrize("phase", ["standard", "adversarial", "input-grad"])
def test_two_processes_match_one_process_with_the_same_global_batch(runs, phase):
    ddp, single, _ = runs
    assert ddp[phase]["world_size"] == 2 and single[phase]["world_size"] == 1
    assert _max_diff(ddp[phase]["model"], single[phase]["model"]) < 1e-5
    assert _max_diff(ddp[phase]["init"], single[phase]["init"]) == 0
    assert _max_diff(ddp[phase]["model"], ddp[phase]["init"]) > 1e-3   # training moved the weights
    hd, hs = ddp[phase]["history"], single[phase]["history"]
    assert len(hd) == len(hs) == 2
    for rd, rs in zip(hd, hs, strict=True):
        assert rd["step"] == rs["step"] == 10 * (rd["epoch"] + 1)       # 400 examples / global batch 40
        for k in rs:
            if k.startswith("train_"):                                 # metrics reduced over both ranks
                assert rd[k] == pytest.approx(rs[k], abs=1e-5), k
    assert hd[1]["train_loss"] < hd[0]["train_loss"]


@pytest.mark.slow
def test_batchnorm_statistics_agree_across_ranks(runs):
    ddp, single, _ = runs
    r0, r1 = ddp["batchnorm"]["buffers_all_ranks"]
    assert r0.keys() == r1.keys() and len(r0) == 2
    for k in r0:
        assert torch.equal(r0[k], r1[k]), k
    # per-rank batch statistics differ from the global batch's, so only closeness is expected
    assert _max_diff(r0, {k: single["batchnorm"]["model"][k] for k in r0}) < 0.05


@pytest.mark.slow
def test_store_holds_every_index_and_checkpoints_are_written_once(runs):
    ddp, single, tmp = runs
    res = ddp["store"]
    writes = res["writes_per_rank"]
    assert writes == [["epoch_001.pt", "epoch_002.pt"], []]             # rank 0 writes, rank 1 never
    s0, s1 = res["store_all_ranks"]
    for name in ("ema", "seen"):                                         # every rank holds the union
        assert torch.equal(s0["tensors"][name], s1["tensors"][name]), name
    seen = res["store"]["tensors"]["seen"]
    assert seen.shape == (401,) and torch.all(seen == 2)                 # each index once per epoch
    assert torch.all(res["store"]["tensors"]["ema"] > 0)
    files = sorted(p.name for p in (tmp / "ddp_run" / "checkpoints").iterdir())
    assert files == ["epoch_002.pt", "last.pt"]                          # keep_last=1, no temp files left

    from toolbox.train import read_checkpoint

    ckpt = read_checkpoint(tmp / "ddp_run" / "checkpoints" / "last.pt")
    assert ckpt["world_size"] == 2 and len(ckpt["rng"]) == 2 and ckpt["epoch"] == 2
    assert torch.equal(ckpt["store"]["tensors"]["seen"], seen)
    for k, v in res["model"].items():
        assert torch.equal(ckpt["model"][k], v), k
    # the same defense in one process visits each example once per epoch as well
    assert torch.all(single["store"]["store"]["tensors"]["seen"] == 2)
