"""Checkpoints and resume: a real process killed with SIGKILL in its second epoch and resumed
ends bit-identical to an uninterrupted run; corrupt, foreign and mismatched checkpoints give
clear errors; writes are atomic."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import toolbox as tb
from toolbox.defense import Adversarial
from toolbox.train import Callback, Checkpoint, Trainer, latest_checkpoint, read_checkpoint
from toolbox.train.checkpoint import atomic_save

torch.set_num_threads(1)

SCRIPT = Path(__file__).with_name("_train_script.py")
TIME_COLUMNS = {"time_s"}


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}


def _run(*args: str, timeout: float = 120) -> None:
    proc = subprocess.run([sys.executable, str(SCRIPT), *args], env=_env(), capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]


def _start_and_kill_when_blocked(*args: str, timeout: float = 120) -> int:
    """Start the script, wait until it prints BLOCKED, SIGKILL it; returns its exit code."""
    proc = subprocess.Popen([sys.executable, str(SCRIPT), *args], env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + timeout
        seen = ""
        while "BLOCKED" not in seen:
            assert proc.poll() is None, f"script ended before blocking: {proc.stderr.read()[-3000:]}"
            left = deadline - time.monotonic()
            assert left > 0, "script never reached the blocking point"
            ready, _, _ = select.select([proc.stdout], [], [], min(left, 1.0))
            if ready:
                seen += proc.stdout.readline()
        os.kill(proc.pid, signal.SIGKILL)
        return proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()


def _rows(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIME_COLUMNS} for r in history]


@pytest.mark.slow
def test_sigkill_in_second_epoch_then_resume_is_bit_identical(tmp_path):
    straight_out, resumed_out = tmp_path / "straight.pt", tmp_path / "resumed.pt"
    run_dir = tmp_path / "killed"
    # the uninterrupted run and the run that gets killed, side by side
    straight = subprocess.Popen([sys.executable, str(SCRIPT), "resume", str(straight_out), str(tmp_path / "straight")],
                                env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        code = _start_and_kill_when_blocked("resume", str(tmp_path / "never.pt"), str(run_dir),
                                            "--block-in-epoch", "1")
        _, err = straight.communicate(timeout=120)
        assert straight.returncode == 0, err[-3000:]
    finally:
        if straight.poll() is None:
            straight.kill()
            straight.wait()
    assert code == -signal.SIGKILL
    ckpts = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert ckpts == ["epoch_001.pt", "last.pt"]                      # epoch 2 never finished; no temp files
    assert not (tmp_path / "never.pt").exists()
    saved = read_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert saved["epoch"] == 1 and saved["step"] == 6

    _run("resume", str(resumed_out), str(run_dir), "--resume")
    a = torch.load(straight_out, weights_only=False)
    b = torch.load(resumed_out, weights_only=False)
    assert b["start_epoch"] == 1 and a["start_epoch"] == 0          # it really resumed
    assert b["history"][0]["time_s"] == saved["history"][0]["time_s"]
    assert a["step"] == b["step"] == 12
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert a["store"]["tensors"].keys() == b["store"]["tensors"].keys() == {"ema", "seen"}
    for k in a["store"]["tensors"]:
        assert torch.equal(a["store"]["tensors"][k], b["store"]["tensors"][k]), k
    assert torch.all(a["store"]["tensors"]["seen"] == 2)
    assert _rows(a["history"]) == _rows(b["history"]) and len(a["history"]) == 2


# ------------------------------------------------------------------------------ in-process resume
class Crash(Callback):
    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_batch_end(self, trainer, batch, logs):
        if trainer.epoch == self.epoch and batch.step % trainer.steps_per_epoch == 2:
            raise KeyboardInterrupt("simulated crash")


class NoisyStore(Adversarial):
    """PGD with a random start from the global RNG, noise from the Trainer's generator and a
    per-example store term: the resumed run must restore all three."""

    name = "noisy-store"

    def loss(self, model, batch):
        x = (batch.x + 0.02 * torch.randn(batch.x.shape, generator=batch.extra["generator"])).clamp(0, 1)
        x_adv = self.adversary(batch)(model, x, batch.y, check=False)
        per = F.cross_entropy(model(x_adv), batch.y, reduction="none")
        prev = batch.store.get("prev", batch.index, init=1.0)
        batch.store.set("prev", batch.index, per.detach())
        loss = (per * prev.clamp(0.5, 2.0)).mean()
        return loss, {"loss": loss.detach()}


def _make(run_dir, extra_callbacks=(), seed=7, batch_size=50, lr=0.05):
    torch.manual_seed(1)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=5, gamma=0.7)
    atk = tb.attack("pgd", threat=tb.Linf(0.1), steps=2, random_start=True)
    return model, Trainer(model, NoisyStore(atk), optimizer=opt, scheduler=sched, batch_size=batch_size, seed=seed,
                          grad_clip=5.0, run_dir=run_dir, eps_schedule={"kind": "linear", "start": 0.02,
                                                                        "end": 0.1, "epochs": 2},
                          callbacks=[Checkpoint(every=1, keep_last=None), *extra_callbacks])


@pytest.fixture(scope="module")
def data():
    return tb.data.subset(tb.data.load("digits", split="train"), torch.arange(200))


def test_resume_in_process_after_a_crash_matches_straight_run(tmp_path, data):
    model_a, tr_a = _make(tmp_path / "a")
    hist_a = tr_a.fit(data, epochs=3)
    model_b, tr_b = _make(tmp_path / "b", [Crash(epoch=2)])
    with pytest.raises(KeyboardInterrupt):
        tr_b.fit(data, epochs=3)
    assert latest_checkpoint(tmp_path / "b") == tmp_path / "b" / "checkpoints" / "last.pt"
    model_c, tr_c = _make(tmp_path / "b")
    hist_c = tr_c.fit(data, epochs=3, resume=True)
    assert tr_c.step == tr_a.step == 12 and tr_c.scheduler.last_epoch == 12
    for k, v in model_a.state_dict().items():
        assert torch.equal(v, model_c.state_dict()[k]), k
    assert torch.equal(tr_a.store.tensor("prev"), tr_c.store.tensor("prev"))
    assert _rows(hist_a.to_dict("records")) == _rows(hist_c.to_dict("records"))
    # an explicit path to an older checkpoint continues from there, too
    model_d, tr_d = _make(tmp_path / "d")
    tr_d.fit(data, epochs=3, resume=tmp_path / "a" / "checkpoints" / "epoch_001.pt")
    for k, v in model_a.state_dict().items():
        assert torch.equal(v, model_d.state_dict()[k]), k


def test_resume_true_without_checkpoint_starts_fresh(tmp_path, data):
    _, tr = _make(tmp_path)
    hist = tr.fit(data, epochs=1, resume=True)
    assert len(hist) == 1 and (tmp_path / "checkpoints" / "epoch_001.pt").is_file()


def test_seed_none_resume_continues_the_drawn_seed(tmp_path, data):
    def run(run_dir, resume, crash=False):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
        cbs = [Checkpoint()] + ([Crash(epoch=1)] if crash else [])
        tr = Trainer(model, tb.defense("standard"), batch_size=50, seed=None, run_dir=run_dir, callbacks=cbs)
        tr.fit(data, epochs=2, resume=resume)
        return tr

    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, None, crash=True)
    first_seed = read_checkpoint(tmp_path / "checkpoints" / "last.pt")["seed"]
    tr = run(tmp_path, True)
    assert tr.seed == first_seed and tr.loader.seed == first_seed and tr.step == 8


# ------------------------------------------------------------------------------ bad checkpoints
def test_corrupt_foreign_and_missing_checkpoints_raise_value_error(tmp_path, data):
    _, tr = _make(tmp_path / "run")
    tr.fit(data, epochs=1)
    good = tmp_path / "run" / "checkpoints" / "epoch_001.pt"
    blob = good.read_bytes()

    (tmp_path / "garbage.pt").write_bytes(b"this is not a checkpoint")
    (tmp_path / "truncated.pt").write_bytes(blob[: len(blob) // 2])
    torch.save({"state_dict": {"w": torch.zeros(2)}}, tmp_path / "foreign.pt")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    torch.save({"format": "toolbox-checkpoint", "version": 99}, tmp_path / "future.pt")
    torch.save({"x": nn.Linear(2, 2)}, tmp_path / "pickled_module.pt")  # refused by weights_only=True
    cases = {"garbage.pt": "corrupt", "truncated.pt": "corrupt", "foreign.pt": "not a toolbox checkpoint",
             "list.pt": "not a toolbox checkpoint", "future.pt": "version", "pickled_module.pt": "weights_only",
             "missing.pt": "does not exist"}
    for name, match in cases.items():
        with pytest.raises(ValueError, match=match) as info:
            _make(tmp_path / "other")[1].fit(data, epochs=1, resume=tmp_path / name)
        assert name in str(info.value)
    with pytest.raises(ValueError, match="corrupt"):
        tr.load_checkpoint(tmp_path / "truncated.pt")


def test_resume_with_a_different_configuration_lists_every_difference(tmp_path, data):
    _, tr = _make(tmp_path / "run")
    tr.fit(data, epochs=1)
    ckpt = tmp_path / "run" / "checkpoints" / "last.pt"
    _, other = _make(tmp_path / "x", seed=8, batch_size=40, lr=0.1)
    with pytest.raises(ValueError) as info:
        other.fit(data, epochs=1, resume=ckpt)
    msg = str(info.value)
    assert "different configuration" in msg and str(ckpt) in msg
    for key in ("seed", "batch_size", "optimizer"):
        assert f"  {key}:" in msg, msg
    assert "  model:" not in msg and "  defense:" not in msg and "  epochs:" not in msg
    _, longer = _make(tmp_path / "y")
    with pytest.raises(ValueError, match="epochs: checkpoint 1, now 2"):
        longer.fit(data, epochs=2, resume=ckpt)
    torch.manual_seed(0)
    wider = Trainer(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), tb.defense("standard"), batch_size=50, seed=7)
    with pytest.raises(ValueError, match=r"(?s)defense:.*grad_clip:.*parameters:.*scheduler:"):
        wider.fit(data, epochs=1, resume=ckpt)


def test_atomic_save_leaves_old_file_and_no_temp_on_failure(tmp_path):
    target = tmp_path / "ckpt.pt"
    atomic_save({"a": torch.ones(3)}, target)
    before = target.read_bytes()
    with pytest.raises(Exception):  # noqa: B017 - pickling a local lambda fails; which error is torch's
        atomic_save({"a": lambda: 1}, target)
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt"]
    mode = target.stat().st_mode & 0o777
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o666 & ~umask


def test_checkpoint_in_the_middle_of_an_epoch_warns(tmp_path, data, caplog):
    class MidEpoch(Callback):
        def on_batch_end(self, trainer, batch, logs):
            if batch.step == 1:
                trainer.save_checkpoint(tmp_path / "mid.pt")

    torch.manual_seed(0)
    tr = Trainer(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), tb.defense("standard"), batch_size=50,
                 callbacks=[MidEpoch()])
    with caplog.at_level("WARNING", logger="toolbox.train"):
        tr.fit(data, epochs=1)
    assert any("middle of epoch 0" in r.getMessage() for r in caplog.records)
    assert read_checkpoint(tmp_path / "mid.pt")["step"] == 2
    caplog.clear()
    tr.save_checkpoint(tmp_path / "end.pt")                    # between epochs: no warning
    assert not caplog.records
