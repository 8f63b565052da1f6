"""Training script run as a real subprocess by tests/test_resume.py and tests/test_ddp.py.

    python tests/_train_script.py resume OUT RUN_DIR [--resume] [--block-in-epoch E]
    python -m torch.distributed.run --nproc_per_node=2 tests/_train_script.py ddp OUT RUN_DIR

``resume``: a stateful defense (per-example store + FGSM with a random start drawn from the
global RNG + noise from the Trainer's generator) with a cyclic LR, 2 epochs, checkpoint each
epoch.  ``--block-in-epoch E`` prints ``BLOCKED`` after a few steps of 0-based epoch ``E`` and
sleeps (the test kills it with SIGKILL).  ``ddp``: phase 1 plain SGD on the standard defense
(for the weight comparison), phase 2 the stateful defense with a Checkpoint callback.
The results (weights, store, history) go to ``OUT`` (torch.save).
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
import torch.nn.functional as F

torch.set_num_threads(1)

import toolbox as tb  # noqa: E402
from toolbox.defense import Adversarial  # noqa: E402
from toolbox.train import Callback, Checkpoint, Trainer  # noqa: E402


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


def data(n: int):
    ds = tb.data.load("digits", split="train")
    return tb.data.subset(ds, torch.arange(n))


def stateful_defense():
    atk = tb.attack("fgsm", threat=tb.Linf(0.1), random_start=True, seed=None)
    return StoreEMA(atk)


def run_resume(args) -> None:
    torch.manual_seed(0)
    model = tb.models.create("digits-cnn")
    callbacks = [Checkpoint(every=1, keep_last=2)]
    if args.block_in_epoch is not None:
        callbacks.append(Block(args.block_in_epoch))
    trainer = Trainer(model, stateful_defense(), batch_size=50, seed=3, run_dir=args.run_dir, callbacks=callbacks,
                      lr_schedule={"kind": "cyclic", "peak": 5e-3, "peak_at": 0.4},
                      eps_schedule={"kind": "linear", "start": 0.05, "end": 0.1, "epochs": 1})
    hist = trainer.fit(data(300), epochs=2, resume=True if args.resume else None)
    torch.save({"model": model.state_dict(), "store": trainer.store.state_dict(),
                "history": hist.to_dict("records"), "step": trainer.step}, args.out)


def run_ddp(args) -> None:
    # phase 1: plain SGD, same global batch as the single-process run
    torch.manual_seed(0)
    model = tb.models.create("digits-cnn")
    trainer = Trainer(model, tb.defense("standard"), optimizer={"name": "sgd", "lr": 0.1}, batch_size=40, seed=5)
    hist = trainer.fit(data(400), epochs=2)
    out = {"model": {k: v.clone() for k, v in model.state_dict().items()}, "history": hist.to_dict("records"),
           "world_size": trainer.world_size, "rank": trainer.rank}
    # phase 2: a defense that writes the store on every rank; checkpoint by rank 0
    torch.manual_seed(0)
    model2 = tb.models.create("digits-cnn")
    trainer2 = Trainer(model2, stateful_defense(), batch_size=40, seed=5, run_dir=args.run_dir,
                       callbacks=[Checkpoint(every=1, keep_last=1)])
    trainer2.fit(data(401), epochs=1)
    out["store"] = trainer2.store.state_dict()
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
