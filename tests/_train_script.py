"""Training script run as a real subprocess by tests/test_resume.py and tests/test_ddp.py.

    python tests/_train_script.py resume OUT RUN_DIR [--resume] [--block-in-epoch E]
    python tests/_train_script.py ddp OUT RUN_DIR                      # one process
    python -m torch.distributed.run --standalone --nproc_per_node=2 tests/_train_script.py ddp OUT RUN_DIR

``resume``: a stateful defense (per-example store + FGSM with a random start drawn from the
global RNG + noise from the Trainer's generator) with a cyclic LR and a linear eps ramp,
2 epochs, a checkpoint each epoch.  ``--block-in-epoch E`` prints ``BLOCKED`` after a few
steps of 0-based epoch ``E`` and sleeps (the test kills it with SIGKILL there).

``ddp``: the same phases alone or under torchrun, so the test can compare them:
``standard`` (plain SGD), ``adversarial`` (a deterministic FGSM run on the unwrapped module
inside the defense, plus a clean term: two training forwards through DDP), ``input-grad``
(a defense taking ``torch.autograd.grad`` w.r.t. the input through the DDP-wrapped model
itself), ``batchnorm`` (BatchNorm running statistics must agree across ranks) and
``store`` (the stateful defense on 401 examples, so one rank pads; Checkpoint callback,
counting the checkpoint writes of each rank).  Rank 0 writes the results to ``OUT``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

torch.set_num_threads(1)

import toolbox as tb  # noqa: E402
import toolbox.train.trainer as trainer_module  # noqa: E402
from toolbox.defense import Adversarial, Defense  # noqa: E402
from toolbox.train import Callback, Checkpoint, Trainer  # noqa: E402
from toolbox.train import distributed as D  # noqa: E402


class StoreEMA(Adversarial):
    """Adversarial training whose per-example weights depend on an EMA of past losses kept in
    the store, with input noise drawn from the Trainer's generator: every kind of state matters."""

    name = "store-ema"
    uses_store = True

    def loss(self, model, batch):
        g = batch.extra["generator"]
        x = (batch.x + 0.01 * torch.rand(batch.x.shape, generator=g, device=batch.x.device)).clamp(0, 1)
        x_adv = self.adversary(batch)(model, x, batch.y, check=False)
        per = F.cross_entropy(model(x_adv), batch.y, reduction="none")
        ema = batch.store.get("ema", batch.index, init=0.0)
        seen = batch.store.get("seen", batch.index, init=0, dtype=torch.int64)
        w = 1.0 + 0.1 * torch.tanh(ema)
        loss = (w * per).mean()
        batch.store.set("ema", batch.index, 0.9 * ema + 0.1 * per.detach())
        batch.store.set("seen", batch.index, seen + 1)
        return loss, {"loss": loss.detach()}


class InputGrad(Defense):
    """FGSM written by hand inside the defense: the input gradient goes through the model the
    Trainer passes (the DDP wrapper under torchrun) with the parameters still trainable."""

    name = "input-grad"

    def loss(self, model, batch):
        x = batch.x.clone().requires_grad_(True)
        g, = torch.autograd.grad(F.cross_entropy(model(x), batch.y), x)
        x_adv = (batch.x + 0.1 * g.sign()).clamp(0, 1)
        loss = F.cross_entropy(model(x_adv), batch.y)
        return loss, {"loss": loss.item()}


class Block(Callback):
    def __init__(self, epoch: int) -> None:
        self.block_epoch = epoch
        self.steps = 0

    def on_batch_end(self, trainer, batch, logs):
        if trainer.epoch == self.block_epoch:
            self.steps += 1
            if self.steps == 3:
                print("BLOCKED", flush=True)
                time.sleep(600)


class StartEpoch(Callback):
    """Records the epoch a fit starts at (0, or the resume point)."""

    def __init__(self) -> None:
        self.start = None

    def on_fit_start(self, trainer):
        self.start = trainer.epoch


def data(n: int):
    ds = tb.data.load("digits", split="train")
    return tb.data.subset(ds, torch.arange(n))


def stateful_defense():
    atk = tb.attack("fgsm", threat=tb.Linf(0.1), random_start=True, seed=None)
    return StoreEMA(atk)


def run_resume(args) -> None:
    torch.manual_seed(0)
    model = tb.models.create("digits-cnn")
    start = StartEpoch()
    callbacks = [Checkpoint(every=1, keep_last=2), start]
    if args.block_in_epoch is not None:
        callbacks.append(Block(args.block_in_epoch))
    trainer = Trainer(model, stateful_defense(), batch_size=50, seed=3, run_dir=args.run_dir, callbacks=callbacks,
                      lr_schedule={"kind": "cyclic", "peak": 5e-3, "peak_at": 0.4},
                      eps_schedule={"kind": "linear", "start": 0.05, "end": 0.1, "epochs": 1})
    hist = trainer.fit(data(300), epochs=2, resume=True if args.resume else None)
    torch.save({"model": model.state_dict(), "store": trainer.store.state_dict(),
                "history": hist.to_dict("records"), "step": trainer.step, "start_epoch": start.start}, args.out)


def weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def phase(defense: Defense, n: int = 400, epochs: int = 2, model: nn.Module | None = None) -> dict:
    torch.manual_seed(0)
    model = model if model is not None else tb.models.create("digits-cnn")
    init = weights(model)
    trainer = Trainer(model, defense, optimizer={"name": "sgd", "lr": 0.1}, batch_size=40, seed=5)
    hist = trainer.fit(data(n), epochs=epochs)
    return {"model": weights(model), "init": init, "history": hist.to_dict("records"),
            "world_size": trainer.world_size}


def run_ddp(args) -> None:
    out: dict = {}
    out["standard"] = phase(tb.defense("standard"))
    fgsm = tb.attack("fgsm", threat=tb.Linf(0.1), random_start=False)
    out["adversarial"] = phase(Adversarial(fgsm, clean_weight=0.5))
    out["input-grad"] = phase(InputGrad())

    torch.manual_seed(0)
    bn = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(),
                       nn.Linear(8 * 64, 10))
    res = phase(tb.defense("standard"), epochs=1, model=bn)
    res["buffers_all_ranks"] = D.all_gather_object({k: v for k, v in res["model"].items() if "running" in k})
    out["batchnorm"] = res

    # the store on every rank, checkpoints by rank 0 only (count the writes of each rank)
    writes = []
    save = trainer_module.atomic_save

    def counting_save(obj, path):
        writes.append(Path(path).name)
        return save(obj, path)

    trainer_module.atomic_save = counting_save
    torch.manual_seed(0)
    model = tb.models.create("digits-cnn")
    trainer = Trainer(model, stateful_defense(), batch_size=40, seed=5, run_dir=args.run_dir,
                      callbacks=[Checkpoint(every=1, keep_last=1)])
    trainer.fit(data(401), epochs=2)
    trainer_module.atomic_save = save
    out["store"] = {"store": trainer.store.state_dict(), "writes_per_rank": D.all_gather_object(writes),
                    "store_all_ranks": D.all_gather_object(trainer.store.state_dict()),
                    "model": weights(model)}
    if trainer.is_main_process:
        torch.save(out, args.out)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["resume", "ddp"])
    p.add_argument("out")
    p.add_argument("run_dir")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--block-in-epoch", type=int, default=None)
    args = p.parse_args()
    (run_resume if args.mode == "resume" else run_ddp)(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
