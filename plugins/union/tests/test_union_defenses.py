"""Worst-PGD, PGD-Aug and MSD defenses; the per-norm report (checks 6.5-7)."""

import pytest
import torch
import torch.nn.functional as F
from toolbox_union import (
    ALL,
    MSD,
    MSDDefense,
    PGDAug,
    Union,
    WorstPGD,
    norm_attacks,
    norm_suite,
    union_report,
)

import toolbox as tb
from toolbox.defense import Batch

torch.set_num_threads(1)

RADII = [tb.Linf(0.1), tb.L2(0.6), tb.L1(2.0)]


def _batch(x, y, eps=None):
    return Batch(x=x, y=y, index=torch.arange(len(y)), epoch=0, step=0, eps=eps, store=None,
                 trainer=None, extra={})


def test_registered_names():
    assert {"msd", "worst-pgd", "pgd-aug"} <= set(tb.names("defense"))
    assert "msd" in tb.names("attack") and "union" in tb.names("threat")
    d = tb.defense("msd", threat=Union(RADII), steps=3, step_size=(0.05, 0.3, 1.0))
    assert isinstance(d, MSDDefense) and isinstance(d.attack, MSD) and d.attack.steps == 3
    w = tb.defense("worst-pgd", threat=RADII, steps=2)
    assert list(w.attacks) == ["linf", "l2", "l1"] and all(a.steps == 2 for a in w.attacks.values())


def test_worst_pgd_trains_on_the_per_example_worst_case(digits_data, digits_model):
    _, _, xt, yt = digits_data
    x, y = xt[:40], yt[:40]
    d = WorstPGD(threat=RADII, steps=3)
    for a in d.attacks.values():
        a.seed = 0
    batch = _batch(x, y)
    loss, logs = d.loss(digits_model, batch)
    advs = d.perturbations(digits_model, batch)   # same seeds: the same adversarial batches
    with torch.no_grad():
        ce = torch.stack([F.cross_entropy(digits_model(v), y, reduction="none") for v in advs.values()])
    torch.testing.assert_close(loss.detach(), ce.max(0).values.mean(), rtol=1e-5, atol=1e-6)
    assert ce.max(0).values.mean() >= ce.mean(1).max() - 1e-6
    picks = [logs[f"pick_{k}"] for k in ("linf", "l2", "l1")]
    assert float(sum(picks)) == pytest.approx(1.0)
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in digits_model.parameters())


def test_pgd_aug_is_the_mean_over_norms(digits_data, digits_model):
    _, _, xt, yt = digits_data
    x, y = xt[:40], yt[:40]
    d = PGDAug(threat=RADII, steps=3)
    for a in d.attacks.values():
        a.seed = 1
    loss, logs = d.loss(digits_model, _batch(x, y))
    advs = d.perturbations(digits_model, _batch(x, y))
    with torch.no_grad():
        ce = [F.cross_entropy(digits_model(v), y) for v in advs.values()]
    torch.testing.assert_close(loss.detach(), torch.stack(ce).mean(), rtol=1e-5, atol=1e-6)
    for k, v in zip(advs, ce, strict=True):
        torch.testing.assert_close(logs[f"adv_loss_{k}"], v, rtol=1e-5, atol=1e-6)


def test_eps_schedule_scales_every_norm(digits_data, digits_model):
    _, _, xt, yt = digits_data
    d = WorstPGD(threat=RADII, steps=2)
    half = d.adversaries(_batch(xt[:4], yt[:4], eps=0.5))
    assert [a.threat.eps for a in half.values()] == [0.05, 0.3, 1.0]
    assert d.adversaries(_batch(xt[:4], yt[:4], eps=None)) is d.attacks
    m = MSDDefense(threat=RADII, steps=2)
    assert [t.eps for t in m.adversary(_batch(xt[:4], yt[:4], eps=0.5)).threat.threats] == [0.05, 0.3, 1.0]


def test_defense_argument_errors():
    with pytest.raises(ValueError, match="attacks= .* or threat="):
        WorstPGD()
    with pytest.raises(ValueError, match="either"):
        PGDAug(attacks=[tb.attack("pgd", threat=tb.Linf(0.1))], threat=RADII)
    with pytest.raises(ValueError, match="steps"):
        norm_attacks(RADII, steps=(1, 2))
    with pytest.raises(ValueError, match="attack= .* or threat="):
        MSDDefense()
    with pytest.raises(ValueError, match="differs"):
        MSDDefense(attack=MSD(RADII), threat=[tb.Linf(0.2)])
    d = tb.defense("msd", attack="msd", threat=Union(RADII), attack_kwargs={"steps": 4})
    assert d.attack.steps == 4 and d.attack.threat == Union(RADII)


@pytest.mark.parametrize("method", ["msd", "worst-pgd", "pgd-aug"])
def test_union_defenses_train_with_the_trainer(method, digits_data):
    xtr, ytr, xt, yt = digits_data
    torch.manual_seed(0)
    model = tb.models.create("digits-cnn")
    u = Union(RADII)
    d = (MSDDefense(threat=u, steps=2) if method == "msd" else
         tb.defense(method, threat=u, steps=2))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    trainer = tb.Trainer(model, d, optimizer=opt, batch_size=100, seed=0,
                         eps_schedule={"kind": "linear", "start": 0.0, "end": 1.0, "epochs": 1})
    hist = trainer.fit(tb.data.Dataset(xtr[:1000], ytr[:1000], num_classes=10, name="digits-sub"), epochs=3)
    assert len(hist) == 3 and torch.isfinite(torch.tensor(hist["train_loss"].to_numpy())).all()
    with torch.no_grad():
        acc = (model.eval()(xt).argmax(1) == yt).float().mean()
    assert acc > 0.4  # chance is 0.1


def test_union_report_worst_cases(digits_data, digits_model):
    _, _, xt, yt = digits_data
    suite = norm_suite(RADII, steps=5, restarts=1, extra=True, seed=0)
    assert set(suite) == {"linf", "l2", "l1"} and set(suite["linf"]) == {"pgd", "fgsm", "apgd-ce"}
    suite["l1"]["msd"] = MSD(Union([tb.L1(2.0)]), steps=5)
    rep = union_report(digits_model, (xt[:120], yt[:120]), suite, n=120)
    pe = rep.attrs["per_example"]
    acc = rep["accuracy"]
    for g, atks in suite.items():
        for name in atks:
            assert acc[g] <= acc[f"{g}/{name}"] + 1e-12
        assert acc[ALL] <= acc[g] + 1e-12
        expect = pe["clean_correct"].astype(bool)
        for name in atks:
            expect &= pe[f"{g}/{name}"].astype(bool)
        assert rep.loc[g, "correct"] == int(expect.sum())
    assert acc[ALL] <= acc["clean"]
    assert acc[ALL] < acc["clean"]  # the attacks break something on a standard model
    every = pe["clean_correct"].astype(bool)
    for c in pe.columns:
        if "/" in c:
            every &= pe[c].astype(bool)
    assert rep.loc[ALL, "correct"] == int(every.sum())
    with pytest.raises(ValueError, match="suite"):
        union_report(digits_model, (xt[:8], yt[:8]), {})


def test_msd_attack_in_evaluate_counts_as_inside(digits_data, digits_model):
    _, _, xt, yt = digits_data
    atk = MSD(Union(RADII), steps=5, step_size=(0.03, 0.15, 0.5), seed=0)
    rep = tb.evaluate(digits_model, (xt[:100], yt[:100]), {"msd": atk}, n=100, progress=False)
    assert not any("outside" in w for w in rep.attrs["warnings"])
    assert rep.loc["msd", "accuracy"] < rep.loc["clean", "accuracy"]
    assert rep.loc["msd", "max_norm"] <= 1.0 + 1e-5
