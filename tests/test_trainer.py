"""The Trainer on small real data (digits): schedules per step, eps reaching the defense,
gradient clipping, AMP on CPU, callback order, the store, metrics, bad input, and a real
robustness gain from adversarial training."""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import toolbox as tb
from toolbox.defense import Batch, Defense
from toolbox.train import Callback, Trainer, make_schedule

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def digits():
    return tb.data.load("digits", split="train"), tb.data.load("digits", split="test")


@pytest.fixture(scope="module")
def small(digits):
    return tb.data.subset(digits[0], torch.arange(200))


def tiny(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


def weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


class Recorder(Callback):
    """Records the optimizer's lr, trainer state and batch fields at each step."""

    def __init__(self, order: int = 0, name: str = "rec", journal: list | None = None):
        self.order = order
        self.name = name
        self.journal = journal if journal is not None else []
        self.steps: list[dict] = []

    def on_fit_start(self, trainer):
        self.journal.append((self.name, "fit_start"))

    def on_epoch_start(self, trainer, epoch):
        self.journal.append((self.name, "epoch_start", epoch))

    def on_batch_end(self, trainer, batch, logs):
        self.journal.append((self.name, "batch_end", batch.step))
        self.steps.append({"lr": trainer.optimizer.param_groups[0]["lr"], "current_lr": trainer.current_lr,
                           "step": trainer.step, "batch_step": batch.step, "epoch": batch.epoch,
                           "eps": batch.eps, "logs": dict(logs), "index": batch.index.clone()})

    def on_epoch_end(self, trainer, epoch, logs):
        self.journal.append((self.name, "epoch_end", epoch))
        logs[f"{self.name}_seen"] = len(self.steps)

    def on_fit_end(self, trainer):
        self.journal.append((self.name, "fit_end"))


class EpsProbe(Defense):
    """Clean CE; logs the radius the adversary would use (batch.eps through adversary())."""

    name = "eps-probe"

    def loss(self, model, batch):
        loss = F.cross_entropy(model(batch.x), batch.y)
        eps = self.adversary(batch).threat.eps
        return loss, {"loss": loss.detach(), "adv_eps": float(eps)}


# ----------------------------------------------------------------------------------- schedules
def test_lr_schedule_is_applied_per_step(small):
    spec = {"kind": "cyclic", "peak": 0.05, "peak_at": 0.4}
    rec = Recorder()
    tr = Trainer(tiny(), tb.defense("standard"), optimizer={"name": "sgd", "lr": 1.0}, batch_size=50,
                 lr_schedule=spec, callbacks=[rec])
    hist = tr.fit(small, epochs=3)
    assert tr.steps_per_epoch == 4 and tr.total_steps == 12 and tr.step == 12
    f = make_schedule(spec, epochs=3)
    expected = [f((s + 1) / 4) for s in range(12)]
    assert [r["lr"] for r in rec.steps] == pytest.approx(expected)
    assert [r["current_lr"] for r in rec.steps] == pytest.approx(expected)
    assert 0.045 < max(expected) <= 0.05 and len(set(expected)) > 6       # really per step
    assert hist["lr"].tolist() == pytest.approx([expected[3], expected[7], expected[11]])
    assert hist["epoch"].tolist() == [0, 1, 2] and hist["step"].tolist() == [4, 8, 12]


def test_torch_scheduler_is_stepped_once_per_optimizer_step(small):
    model = tiny()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s))
    rec = Recorder()
    tr = Trainer(model, tb.defense("standard"), optimizer=opt, scheduler=sched, batch_size=50, callbacks=[rec])
    tr.fit(small, epochs=2)
    assert sched.last_epoch == 8
    # the lr the optimizer used at step s is 0.1 / (1 + s); after it, the scheduler moved on
    assert [r["lr"] for r in rec.steps] == pytest.approx([0.1 / (2 + s) for s in range(8)])
    # a factory optimizer -> scheduler is accepted too
    tr2 = Trainer(tiny(), tb.defense("standard"), optimizer={"name": "sgd", "lr": 0.1},
                  scheduler=lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=3, gamma=0.5), batch_size=50)
    tr2.fit(small, epochs=1)
    assert tr2.scheduler.last_epoch == 4 and tr2.optimizer.param_groups[0]["lr"] == pytest.approx(0.05)


def test_eps_schedule_reaches_batch_eps_and_the_adversary(small):
    atk = tb.attack("fgsm", threat=tb.Linf(0.3))
    spec = {"kind": "linear", "start": 0.0, "end": 0.3, "epochs": 2}
    rec = Recorder()
    tr = Trainer(tiny(), EpsProbe(atk), batch_size=50, eps_schedule=spec, callbacks=[rec])
    hist = tr.fit(small, epochs=3)
    f = make_schedule(spec)
    expected = [f((s + 1) / 4) for s in range(12)]
    assert [r["eps"] for r in rec.steps] == pytest.approx(expected)
    assert [r["logs"]["adv_eps"] for r in rec.steps] == pytest.approx(expected)   # adversary re-radiused
    assert expected[0] == pytest.approx(0.0375) and expected[-1] == pytest.approx(0.3)
    assert hist["eps"].tolist() == pytest.approx([expected[3], expected[7], expected[11]])
    assert atk.threat.eps == 0.3                                                    # not mutated
    # without a schedule batch.eps is None and the history shows the attack's radius
    rec2 = Recorder()
    h2 = Trainer(tiny(), EpsProbe(atk), batch_size=100, callbacks=[rec2]).fit(small, epochs=1)
    assert all(r["eps"] is None for r in rec2.steps) and h2["eps"].tolist() == [0.3]


def test_eps_schedule_trains_real_adversarial_defense(small):
    d = tb.defense("adversarial", attack=tb.attack("pgd", threat=tb.Linf(0.2), steps=2))
    tr = Trainer(tiny(), d, batch_size=100, eps_schedule={"kind": "piecewise", "knots": [0, 1, 1, 2],
                                                          "values": [0.05, 0.05, 0.2, 0.2]})
    hist = tr.fit(small, epochs=2)
    assert hist["eps"].tolist() == pytest.approx([0.2, 0.2])   # the epoch's last step is at the knot
    assert set(hist.columns) >= {"train_loss", "train_adv_loss", "train_adv_acc"}


# ----------------------------------------------------------------------------------- optimisation
def test_grad_clip_bounds_the_update_and_logs_the_norm(small):
    def one_step(clip):
        model = tiny()
        before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
        tr = Trainer(model, tb.defense("standard"), optimizer={"name": "sgd", "lr": 1.0}, batch_size=200,
                     grad_clip=clip)
        hist = tr.fit(small, epochs=1)
        after = torch.cat([p.detach().flatten() for p in model.parameters()])
        return (after - before).norm().item(), hist

    free, h_free = one_step(None)
    clipped, h_clip = one_step(1e-3)
    assert free > 0.1                                       # plain SGD moves far
    assert clipped == pytest.approx(1e-3, rel=1e-3)         # lr 1 x clipped norm 1e-3
    assert "train_grad_norm" not in h_free.columns
    assert h_clip["train_grad_norm"].iloc[0] == pytest.approx(free, rel=1e-4)   # the norm before clipping


def test_amp_on_cpu_is_a_noop_with_a_log_message(small, caplog):
    runs = {}
    for amp in (False, True, "bf16"):
        with caplog.at_level(logging.INFO, logger="toolbox.train"):
            caplog.clear()
            model = tiny()
            tr = Trainer(model, tb.defense("standard"), batch_size=50, amp=amp)
            tr.fit(small, epochs=1)
        noted = [r for r in caplog.records if "amp" in r.getMessage() and "CUDA only" in r.getMessage()]
        assert (len(noted) == 1) == bool(amp), (amp, [r.getMessage() for r in caplog.records])
        assert not tr.scaler.is_enabled()
        runs[amp] = weights(model)
    for amp in (True, "bf16"):
        assert all(torch.equal(runs[False][k], runs[amp][k]) for k in runs[False])


def test_optimizer_specs(small):
    m = tiny()
    assert isinstance(Trainer(m, tb.defense("standard")).optimizer, torch.optim.Adam)
    sgd = Trainer(m, tb.defense("standard"), optimizer={"name": "sgd", "lr": 0.2, "momentum": 0.9}).optimizer
    assert isinstance(sgd, torch.optim.SGD) and sgd.defaults["momentum"] == 0.9
    assert isinstance(Trainer(m, tb.defense("standard"), optimizer="adamw").optimizer, torch.optim.AdamW)
    opt = Trainer(m, tb.defense("standard"), optimizer=lambda p: torch.optim.SGD(p, lr=0.3)).optimizer
    assert opt.param_groups[0]["lr"] == 0.3


# ----------------------------------------------------------------------------------- callbacks
def test_callbacks_run_in_order_with_every_hook(small, toolbox_plugin):
    journal: list = []
    late, early, tie_a, tie_b = (Recorder(10, "late", journal), Recorder(-5, "early", journal),
                                 Recorder(0, "tie_a", journal), Recorder(0, "tie_b", journal))
    events = []

    class Observer:
        @tb.hookimpl
        def toolbox_trainer_event(self, event, trainer, logs):
            events.append((event, trainer.epoch, dict(logs)))

    toolbox_plugin(Observer(), "observer")
    tr = Trainer(tiny(), tb.defense("standard"), batch_size=100, callbacks=[late, tie_a, early, tie_b])
    assert [cb.name for cb in tr.callbacks] == ["early", "tie_a", "tie_b", "late"]
    hist = tr.fit(small, epochs=2)
    names = ["early", "tie_a", "tie_b", "late"]
    expected = [(n, "fit_start") for n in names]
    step = 0
    for epoch in range(2):
        expected += [(n, "epoch_start", epoch) for n in names]
        for _ in range(2):
            expected += [(n, "batch_end", step) for n in names]
            step += 1
        expected += [(n, "epoch_end", epoch) for n in names]
    expected += [(n, "fit_end") for n in names]
    assert journal == expected
    assert hist["late_seen"].tolist() == [2, 4]                      # callbacks add history columns
    assert [e[0] for e in events] == ["fit_start", "epoch_start", "epoch_end", "epoch_start", "epoch_end",
                                      "fit_end"]
    assert events[2][2]["epoch"] == 0 and "train_loss" in events[2][2] and "late_seen" in events[2][2]


def test_callback_receives_float_logs_and_can_stop_training(small):
    class Stop(Callback):
        def __init__(self):
            self.types = set()

        def on_batch_end(self, trainer, batch, logs):
            self.types |= {type(v) for v in logs.values()}

        def on_epoch_end(self, trainer, epoch, logs):
            trainer.stop_training = epoch == 1

    stop = Stop()
    tr = Trainer(tiny(), tb.defense("standard"), batch_size=100, callbacks=[stop])
    hist = tr.fit(small, epochs=5)
    assert stop.types == {float}                                      # tensors in, floats out
    assert len(hist) == 2 and tr.epoch == 2 and tr.step == 4


# ----------------------------------------------------------------------------------- metrics, store
class Counting(Defense):
    """Logs the batch size as a tensor and as a float, and counts visits per example in the store."""

    name = "counting"
    uses_store = True

    def loss(self, model, batch: Batch):
        n = float(batch.x.shape[0])
        seen = batch.store.get("seen", batch.index, init=0, dtype=torch.int64)
        batch.store.set("seen", batch.index, seen + 1)
        batch.store.set("label", batch.index, batch.y)
        if batch.epoch == 1:                                           # a name first used later
            batch.store.get("late", batch.index, init=-1.0, shape=(2,))
        loss = F.cross_entropy(model(batch.x), batch.y)
        return loss, {"n_tensor": torch.tensor(n), "n_float": n, "loss": loss.detach()}


def test_logs_are_example_weighted_means_and_store_is_keyed_by_dataset_index(digits):
    train = tb.data.subset(digits[0], torch.arange(0, 390, 3))      # 130 examples, indices 0, 3, ..., 387
    tr = Trainer(tiny(), Counting(), batch_size=50, seed=4)
    assert tr.store is None
    hist = tr.fit(train, epochs=3)
    want = (50 * 50 + 50 * 50 + 30 * 30) / 130
    assert hist["train_n_tensor"].tolist() == pytest.approx([want] * 3)
    assert hist["train_n_float"].tolist() == pytest.approx([want] * 3)
    store = tr.store
    assert store.size == 388 and store.device == torch.device("cpu")
    assert store.names() == ["label", "late", "seen"]
    seen, label = store.tensor("seen"), store.tensor("label")
    assert seen.dtype == torch.int64 and store.tensor("late").shape == (388, 2)
    idx = torch.arange(0, 390, 3)
    assert torch.all(seen[idx] == 3) and seen.sum() == 3 * 130       # every example once per epoch
    assert torch.equal(label[idx], digits[0].y[idx])                  # rows follow the dataset index
    assert torch.all(store.tensor("late")[idx] == -1.0)


def test_data_order_is_seeded_and_reshuffled_each_epoch(small):
    def orders(seed):
        rec = Recorder()
        Trainer(tiny(), tb.defense("standard"), batch_size=100, seed=seed, callbacks=[rec]).fit(small, epochs=2)
        return [r["index"] for r in rec.steps]

    a, b, c = orders(1), orders(1), orders(2)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not torch.equal(torch.cat(a[:2]), torch.cat(a[2:]))        # epoch 2 is another order
    assert not torch.equal(torch.cat(a), torch.cat(c))
    assert sorted(torch.cat(a[:2]).tolist()) == list(range(200))


def test_second_fit_call_trains_more_epochs_from_the_current_weights(small):
    """fit(d, 1) then fit(d, 2) on one Trainer: three epochs of updates, the second call's
    history holds its own two epochs (counting starts over), the weights carry over."""
    tr = Trainer(tiny(), tb.defense("standard"), batch_size=100, seed=0)
    tr.fit(small, epochs=1)
    after_one = weights(tr.model)
    hist = tr.fit(small, epochs=2)
    assert list(hist["epoch"]) == [0, 1] and list(hist["step"]) == [2, 4]
    assert any(not torch.equal(after_one[k], v) for k, v in weights(tr.model).items())
    # a fresh Trainer's 2 epochs from the same start differ from the 1 + 2 above
    fresh = Trainer(tiny(), tb.defense("standard"), batch_size=100, seed=0)
    fresh.fit(small, epochs=2)
    assert any(not torch.equal(fresh.model.state_dict()[k], v) for k, v in weights(tr.model).items())


# ----------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("kwargs, match", [
    ({"model": None}, "model"),
    ({"defense": "standard"}, "defense"),
    ({"batch_size": 0}, "batch_size"),
    ({"batch_size": 2.5}, "batch_size"),
    ({"grad_clip": -1.0}, "grad_clip"),
    ({"amp": "fp8"}, "amp"),
    ({"amp": 1}, "amp"),
    ({"loader": "fast"}, "loader"),
    ({"seed": 1.5}, "seed"),
    ({"optimizer": "rmsprop"}, "optimizer"),
    ({"optimizer": 3}, "optimizer"),
    ({"callbacks": [object()]}, "callbacks"),
    ({"lr_schedule": {"kind": "cosine"}}, "kind"),
    ({"eps_schedule": {"kind": "linear", "start": 0}}, "linear"),
    ({"lr_schedule": 0.1, "scheduler": lambda o: torch.optim.lr_scheduler.StepLR(o, 1)}, "scheduler"),
])
def test_bad_trainer_arguments_raise_value_error_naming_them(kwargs, match):
    args = {"model": tiny(), "defense": tb.defense("standard")}
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        Trainer(**args)


def test_bad_fit_arguments_and_bad_defense_outputs(small):
    tr = Trainer(tiny(), tb.defense("standard"), batch_size=50)
    with pytest.raises(ValueError, match="epochs"):
        tr.fit(small, epochs=0)
    with pytest.raises(ValueError, match="train_data"):
        tr.fit(None, epochs=1)
    with pytest.raises(ValueError, match="resume"):
        tr.fit(small, epochs=1, resume=123)
    with pytest.raises(ValueError, match="run_dir"):
        tr.fit(small, epochs=1, resume=True)

    class Bad(Defense):
        def __init__(self, out):
            super().__init__()
            self.out = out

        def loss(self, model, batch):
            logits = model(batch.x)
            per = F.cross_entropy(logits, batch.y, reduction="none")
            return {"vector": (per, {}), "detached": (per.mean().detach(), {}), "single": per.mean(),
                    "logs": (per.mean(), [1]), "log-value": (per.mean(), {"x": "high"}),
                    "log-shape": (per.mean(), {"x": per.detach()})}[self.out]

    for out, match in [("vector", "scalar"), ("detached", "require grad"), ("single", r"\(loss, logs\)"),
                       ("logs", "dict"), ("log-value", "'x'"), ("log-shape", "'x'")]:
        with pytest.raises(ValueError, match=match):
            Trainer(tiny(), Bad(out), batch_size=50).fit(small, epochs=1)


# ----------------------------------------------------------------------------------- real effect
def test_adversarial_training_beats_standard_on_robust_accuracy(digits):
    train, test = digits
    eps = 0.2
    attacks = {"pgd10": tb.attack("pgd", threat=tb.Linf(eps), steps=10, step_size=eps / 4),
               "apgd-ce": tb.attack("apgd-ce", threat=tb.Linf(eps), steps=20)}
    reports = {}
    for name, d in [("standard", tb.defense("standard")),
                    ("fgsm-rs", tb.defense("adversarial", attack=tb.attack(
                        "fgsm", threat=tb.Linf(eps), step_size=1.25 * eps, random_start=True)))]:
        model = tb.models.create("digits-cnn", seed=0)
        tr = Trainer(model, d, optimizer={"name": "adam", "lr": 3e-3}, batch_size=50, seed=0,
                     lr_schedule={"kind": "cyclic", "peak": 1e-2, "peak_at": 0.4})
        tr.fit(train, epochs=10)
        reports[name] = tb.evaluate(model, test, attacks)["accuracy"]
    std, adv = reports["standard"], reports["fgsm-rs"]
    assert std["clean"] > 0.85 and adv["clean"] > 0.85
    assert adv["worst-case"] > std["worst-case"] + 0.25, (std.to_dict(), adv.to_dict())


def test_plain_torch_dataset_of_x_y_index_items(digits):
    class Items(torch.utils.data.Dataset):
        def __init__(self, ds):
            self.ds = ds

        def __len__(self):
            return 120

        def __getitem__(self, i):
            x, y, _ = self.ds[i]
            return x, y, torch.tensor(i)

    tr = Trainer(tiny(), Counting(), batch_size=50, loader="auto")
    hist = tr.fit(Items(digits[0]), epochs=2)
    assert len(hist) == 2 and tr.steps_per_epoch == 3 and tr.store.size == 120
    assert torch.all(tr.store.tensor("seen") == 2)
    assert torch.equal(tr.store.tensor("label"), digits[0].y[:120])


def test_builtin_defenses_use_mixup_labels():
    from toolbox.defense import batch_ce

    torch.manual_seed(0)
    logits = torch.randn(8, 10)
    y, y2 = torch.randint(0, 10, (8,)), torch.randint(0, 10, (8,))
    b = Batch(torch.rand(8, 1, 8, 8), y, torch.arange(8), extra={"y2": y2, "lam": 0.3})
    want = 0.3 * F.cross_entropy(logits, y) + 0.7 * F.cross_entropy(logits, y2)
    assert torch.allclose(batch_ce(logits, b), want)
    b1 = Batch(b.x, y, b.index, extra={"y2": y2, "lam": 1.0})
    assert torch.allclose(batch_ce(logits, b1), F.cross_entropy(logits, y))
    # a dict attack spec with threat= builds for a defense that takes no threat itself
    d = tb.defense("adversarial", attack={"name": "pgd", "steps": 2}, threat=tb.Linf(0.1))
    assert d.attack.threat.eps == 0.1
