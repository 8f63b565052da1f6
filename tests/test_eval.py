"""Worst-case evaluation, sanity flags, robustness curves and plots, on small models trained
on scikit-learn's digits (8x8, x = images / 16) in a module fixture (a few seconds)."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from torch import nn

import toolbox as tb
from toolbox.eval import SanityWarning

torch.set_num_threads(1)

EPS = 0.1
N = 200


# ------------------------------------------------------------------------------------------------
# fixtures: trained models, data, a sound certifier
# ------------------------------------------------------------------------------------------------
def _train(model: nn.Module, ds, epochs: int, lr: float, seed: int = 0) -> nn.Module:
    x, y, _ = ds.tensors()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), 64):
            b = perm[i:i + 64]
            loss = F.cross_entropy(model(x[b]), y[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    for p in model.parameters():
        p.grad = None
    return model


@pytest.fixture(scope="module")
def digits():
    return tb.data.load("digits", split="train"), tb.data.load("digits", split="test")


@pytest.fixture(scope="module")
def cnn(digits):
    """The digits CNN trained for 8 epochs: about 94% clean test accuracy."""
    model = _train(tb.models.create("digits-cnn", seed=0), digits[0], epochs=8, lr=1e-2)
    x, y, _ = digits[1].tensors()
    with torch.no_grad():
        assert (model(x).argmax(1) == y).float().mean() > 0.85  # really trained
    return model


@pytest.fixture(scope="module")
def linear(digits):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    return _train(model, digits[0], epochs=30, lr=5e-2)


@pytest.fixture(scope="module")
def test_xy(digits):
    x, y, idx = digits[1].tensors()
    return x[:N], y[:N], idx[:N]


def attacks(eps: float = EPS) -> dict[str, tb.Attack]:
    tm = tb.Linf(eps)
    return {"fgsm": tb.attack("fgsm", threat=tm),
            "pgd10": tb.attack("pgd", threat=tm, steps=10),
            "apgd-ce": tb.attack("apgd-ce", threat=tm, steps=10)}


class LinearMarginCertifier(tb.Certifier):
    """Sound for ``Flatten -> Linear`` under Linf: ``z_y - z_j`` moves by at most
    ``eps * ||w_y - w_j||_1`` over the ball (the box only shrinks the set)."""

    name = "linear-margin"

    def certify(self, model, x, y):
        lin = model[1]
        z = model(x)
        w = lin.weight  # (C, D)
        dw = (w[y][:, None, :] - w[None, :, :]).abs().sum(-1)  # (N, C): ||w_y - w_j||_1
        margins = (z.gather(1, y[:, None]) - z) - self.threat.eps * dw
        margins.scatter_(1, y[:, None], float("inf"))
        return tb.Certificate(certified=(margins > 0).all(1), margins=margins)


class NothingCertifier(tb.Certifier):
    name = "nothing"

    def certify(self, model, x, y):
        return tb.Certificate(certified=torch.zeros(x.shape[0], dtype=torch.bool))


def quiet_evaluate(*args, **kw):
    """Evaluate and return (report, SanityWarnings issued)."""
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        report = tb.evaluate(*args, **kw)
    return report, [str(w.message) for w in rec if issubclass(w.category, SanityWarning)]


# ------------------------------------------------------------------------------------------------
# the report
# ------------------------------------------------------------------------------------------------
def test_worst_case_is_the_per_example_and(cnn, digits):
    report, issued = quiet_evaluate(cnn, digits[1], attacks(), n=N, per_example=True,
                                    batch_size=64, progress=False)
    assert list(report.index) == ["clean", "fgsm", "pgd10", "apgd-ce", "worst-case"]
    assert list(report["kind"]) == ["clean", "attack", "attack", "attack", "worst-case"]
    for col in ("accuracy", "n", "correct", "time_s", "threat", "eps", "max_norm"):
        assert col in report.columns
    acc = report["accuracy"]
    worst = acc["worst-case"]
    assert worst <= acc[["fgsm", "pgd10", "apgd-ce"]].min() + 1e-12
    assert worst <= acc["clean"]
    assert acc["clean"] > 0.85 and acc["pgd10"] < acc["clean"] - 0.1  # the attacks do something
    assert (report["n"] == N).all()

    pe = report.attrs["per_example"]
    assert list(pe.columns) == ["index", "label", "pred", "clean_correct", "fgsm", "pgd10",
                                "apgd-ce", "worst_case"]
    assert len(pe) == N
    expect = pe["clean_correct"] & pe["fgsm"] & pe["pgd10"] & pe["apgd-ce"]
    assert (pe["worst_case"] == expect).all()
    assert worst == pytest.approx(expect.mean())
    for name in ("fgsm", "pgd10", "apgd-ce"):
        assert not (pe[name] & ~pe["clean_correct"]).any()  # robust implies clean-correct
        assert acc[name] == pytest.approx(pe[name].mean())
        assert report.loc[name, "correct"] == pe[name].sum()
    np.testing.assert_array_equal(pe["index"], digits[1].indices[:N].numpy())
    np.testing.assert_array_equal(pe["label"], digits[1].y[:N].numpy())

    # every attack stays in the ball: max_norm <= eps, and no sanity flag on a sound setup
    assert (report.loc[["fgsm", "pgd10", "apgd-ce"], "max_norm"] <= EPS + 1e-6).all()
    assert (report.loc[["fgsm", "pgd10", "apgd-ce"], "eps"] == EPS).all()
    assert (report.loc[["fgsm", "pgd10", "apgd-ce"], "threat"] == "linf").all()
    assert report.attrs["warnings"] == [] and issued == []
    assert report.attrs["specs"]["pgd10"]["steps"] == 10


def test_clean_only_and_list_of_attacks(cnn, test_xy):
    x, y, _ = test_xy
    clean, _ = quiet_evaluate(cnn, (x, y), progress=False)
    assert list(clean.index) == ["clean", "worst-case"]
    assert clean.loc["clean", "accuracy"] == clean.loc["worst-case", "accuracy"]
    with torch.no_grad():
        assert clean.loc["clean", "accuracy"] == pytest.approx((cnn(x).argmax(1) == y).float().mean().item())

    tm = tb.Linf(EPS)
    rep, _ = quiet_evaluate(cnn, (x, y), [tb.attack("fgsm", threat=tm), tb.attack("pgd", threat=tm, steps=5),
                                          tb.attack("pgd", threat=tm, steps=10)], progress=False)
    assert list(rep.index) == ["clean", "fgsm", "pgd", "pgd-2", "worst-case"]


def test_certifier_rows_sit_beside_attacks_and_are_lower_bounds(linear, test_xy):
    eps = 0.03
    tm = tb.Linf(eps)
    report, _ = quiet_evaluate(
        linear, test_xy, {"pgd20": tb.attack("pgd", threat=tm, steps=20)}, per_example=True,
        certifiers={"margin": LinearMarginCertifier(tm), "nothing": NothingCertifier(tm)},
        progress=False)
    assert list(report.index) == ["clean", "pgd20", "worst-case", "margin", "nothing"]
    assert list(report.loc[["margin", "nothing"], "kind"]) == ["certified", "certified"]
    assert report.loc["margin", "eps"] == eps and report.loc["margin", "threat"] == "linf"
    acc = report["accuracy"]
    assert acc["nothing"] == 0.0
    assert 0.0 < acc["margin"] <= acc["worst-case"]  # not vacuous, and below the empirical bound
    pe = report.attrs["per_example"]
    assert not (pe["margin"] & ~pe["worst_case"]).any()  # certified => survives PGD (soundness)
    assert not pe["nothing"].any()


def test_certifier_list_and_name_clash(linear, test_xy):
    tm = tb.Linf(0.02)
    rep, _ = quiet_evaluate(linear, test_xy, certifiers=[LinearMarginCertifier(tm)], progress=False)
    assert rep.loc["linear-margin", "kind"] == "certified"
    with pytest.raises(ValueError, match="certifiers"):
        tb.evaluate(linear, test_xy, {"x": tb.attack("fgsm", threat=tm)},
                    certifiers={"x": NothingCertifier(tm)}, progress=False)


# ------------------------------------------------------------------------------------------------
# cascade, input types, seeding, model state
# ------------------------------------------------------------------------------------------------
def deterministic_attacks() -> dict[str, tb.Attack]:
    tm = tb.Linf(EPS)
    return {"fgsm": tb.attack("fgsm", threat=tm),
            "pgd-ce": tb.attack("pgd", threat=tm, steps=10, random_start=False),
            "pgd-cw": tb.attack("pgd", threat=tm, steps=10, random_start=False, loss="cw")}


def test_cascade_gives_the_same_worst_case(cnn, test_xy):
    full, _ = quiet_evaluate(cnn, test_xy, deterministic_attacks(), per_example=True,
                             batch_size=64, progress=False)
    casc, _ = quiet_evaluate(cnn, test_xy, deterministic_attacks(), per_example=True,
                             batch_size=64, cascade=True, progress=False)
    assert casc.loc["worst-case", "accuracy"] == full.loc["worst-case", "accuracy"]
    assert (casc.attrs["per_example"]["worst_case"] == full.attrs["per_example"]["worst_case"]).all()
    assert casc.attrs["cascade"] is True
    # cascade rows are cumulative: non-increasing, the last equals the worst case
    rows = casc.loc[["clean", "fgsm", "pgd-ce", "pgd-cw"], "accuracy"].to_numpy()
    assert (np.diff(rows) <= 0).all()
    assert rows[-1] == casc.loc["worst-case", "accuracy"]
    pe_full = full.attrs["per_example"]
    cumulative = pe_full["clean_correct"] & pe_full["fgsm"] & pe_full["pgd-ce"]
    assert (casc.attrs["per_example"]["pgd-ce"] == cumulative).all()


def test_input_types_give_identical_results(cnn, digits):
    ds = digits[1]
    n = 150
    x, y, idx = ds.tensors()
    x, y, idx = x[:n], y[:n], idx[:n]
    tm = tb.Linf(EPS)
    atk = {"pgd": tb.attack("pgd", threat=tm, steps=5), "fgsm-rs": tb.attack("fgsm", threat=tm, random_start=True)}
    inputs = {
        "dataset": ds,
        "tuple3": (x, y, idx),
        "tuple2": (x, y),
        "tensor-dataset": torch.utils.data.TensorDataset(x, y),
        "dataloader": torch.utils.data.DataLoader(ds, batch_size=37, shuffle=False),
        "list-of-batches": [(x[i:i + 50], y[i:i + 50]) for i in range(0, 200, 50)],
    }
    reports = {k: quiet_evaluate(cnn, v, atk, n=n, batch_size=64, per_example=True, progress=False)[0]
               for k, v in inputs.items()}
    ref = reports["dataset"]
    cols = ["label", "pred", "clean_correct", "pgd", "fgsm-rs", "worst_case"]
    for k, rep in reports.items():
        assert rep.loc[:, ["accuracy", "n", "correct"]].equals(ref.loc[:, ["accuracy", "n", "correct"]]), k
        assert rep.attrs["per_example"][cols].equals(ref.attrs["per_example"][cols]), k
    np.testing.assert_array_equal(reports["tuple3"].attrs["per_example"]["index"], idx.numpy())
    np.testing.assert_array_equal(reports["dataloader"].attrs["per_example"]["index"], idx.numpy())
    np.testing.assert_array_equal(reports["tuple2"].attrs["per_example"]["index"], np.arange(n))


def test_seeded_and_reproducible(cnn, test_xy):
    atk = {"pgd": tb.attack("pgd", threat=tb.Linf(EPS), steps=3, restarts=2)}
    a, _ = quiet_evaluate(cnn, test_xy, atk, per_example=True, seed=3, progress=False)
    b, _ = quiet_evaluate(cnn, test_xy, atk, per_example=True, seed=3, progress=False)
    assert a.attrs["per_example"].equals(b.attrs["per_example"])


def test_model_state_is_restored(cnn, test_xy):
    cnn.train()
    flags = [p.requires_grad for p in cnn.parameters()]
    try:
        quiet_evaluate(cnn, test_xy, {"fgsm": tb.attack("fgsm", threat=tb.Linf(EPS))}, progress=False)
        assert all(m.training for m in cnn.modules())
        assert [p.requires_grad for p in cnn.parameters()] == flags
        assert all(p.grad is None for p in cnn.parameters())
    finally:
        cnn.eval()


def test_progress_bar_on_and_off(cnn, test_xy, capsys, monkeypatch):
    quiet_evaluate(cnn, test_xy, n=50, progress=False)
    assert capsys.readouterr().err == ""
    quiet_evaluate(cnn, test_xy, n=50, progress=True)
    assert "evaluate" in capsys.readouterr().err
    monkeypatch.setenv("CI", "1")
    quiet_evaluate(cnn, test_xy, n=50)  # progress=None in CI: status lines, none for short work
    assert capsys.readouterr().err == ""


def test_status_lines_are_throttled(capsys):
    """Off a terminal long work prints a plain line at most every ``every`` seconds and a
    closing line; short work prints nothing."""
    from toolbox import eval as ev

    ticks = iter([0.0, 10.0, 31.0, 45.0, 70.0, 71.0])
    st = ev.StatusLines("evaluate", 400, clock=lambda: next(ticks))  # starts at t = 0
    st.update(100, clean=0.99)  # t = 10: too soon
    st.update(200, clean=0.98, worst=0.5)  # t = 31: a line
    st.update(300, clean=0.98)  # t = 45: too soon
    st.update(400, clean=0.97)  # t = 70: a line
    st.close()  # t = 71: the last update's figures
    err = capsys.readouterr().err.splitlines()
    assert err == ["evaluate: 200/400 examples (50 %), clean 0.980, worst 0.500, 0.5 min",
                   "evaluate: 400/400 examples (100 %), clean 0.970, 1.2 min",
                   "evaluate: 400/400 examples (100 %), clean 0.970, 1.2 min (done)"]
    quiet = ev.StatusLines("evaluate", 10)
    quiet.update(10)
    quiet.close()
    assert capsys.readouterr().err == ""


# ------------------------------------------------------------------------------------------------
# sanity flags: each fires on a purpose-built model or attack
# ------------------------------------------------------------------------------------------------
class NaNModel(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        z = self.inner(x)
        bad = (x.flatten(1)[:, 10] > 0.5)[:, None]  # one pixel decides: some examples go NaN
        return torch.where(bad, torch.full_like(z, float("nan")), z)


class RoundingModel(nn.Module):
    """Identity on digits' pixel grid (k / 16) but with zero gradient: gradient masking."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(torch.round(x * 16) / 16)


class NoisyModel(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x + 0.05 * torch.randn_like(x))


class SoftmaxModel(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x).softmax(1)


class OutsideBall(tb.Attack):
    """Broken on purpose: moves every pixel by 3 eps."""

    name = "outside"

    def perturb(self, model, x, y, *, generator=None, **kw):
        return (x + 3 * self.threat.eps * (1 - 2 * (x > 0.5).float())).clamp(0, 1)


class FakeBlackBox(tb.attacks.PGD):
    """A gradient attack dressed up as black-box, to stand in for one that beats white-box."""

    name = "fake-black-box"
    white_box = False


class Identity(tb.Attack):
    name = "identity"
    white_box = False

    def perturb(self, model, x, y, *, generator=None, **kw):
        return x.clone()


@pytest.mark.parametrize("case", ["nan", "zero-grad", "random", "probabilities"])
def test_model_sanity_flags_fire(cnn, test_xy, case):
    model = {"nan": NaNModel, "zero-grad": RoundingModel, "random": NoisyModel,
             "probabilities": SoftmaxModel}[case](cnn)
    match = {"nan": "NaN/inf", "zero-grad": "zero input gradients", "random": "randomised model",
             "probabilities": "probabilities"}[case]
    atk = {"fgsm": tb.attack("fgsm", threat=tb.Linf(EPS))}
    with pytest.warns(SanityWarning, match=match):
        report = tb.evaluate(model, test_xy, atk, n=100, progress=False)
    assert any(match in m for m in report.attrs["warnings"])
    others = [m for m in report.attrs["warnings"] if match not in m]
    assert others == [], others  # each purpose-built model trips its own flag only
    if case == "nan":
        x = test_xy[0][:100]
        n_nan = int((x.flatten(1)[:, 10] > 0.5).sum())
        assert 0 < n_nan < 100
        assert report.loc["clean", "correct"] <= 100 - n_nan  # NaN rows count as wrong


def test_outside_ball_flag_and_not_counted(cnn, test_xy):
    tm = tb.Linf(EPS)
    with pytest.warns(SanityWarning, match="outside the threat model's ball"):
        report = tb.evaluate(cnn, test_xy, {"outside": OutsideBall(tm)}, progress=False)
    assert report.loc["outside", "max_norm"] == pytest.approx(3 * EPS, abs=1e-6)
    # invalid points break nothing: the row equals clean accuracy
    assert report.loc["outside", "accuracy"] == report.loc["clean", "accuracy"]


def test_black_box_beating_white_box_flag(cnn, test_xy):
    tm = tb.Linf(EPS)
    weak_white = tb.attack("fgsm", threat=tm, step_size=1e-3)
    strong_black = FakeBlackBox(tm, steps=10)
    with pytest.warns(SanityWarning, match="black-box attack 'bb'"):
        report = tb.evaluate(cnn, test_xy, {"fgsm": weak_white, "bb": strong_black}, progress=False)
    assert report.loc["bb", "accuracy"] < report.loc["fgsm", "accuracy"]
    # a black-box attack weaker than the white-box one: no flag
    report, issued = quiet_evaluate(cnn, test_xy, {"pgd": tb.attack("pgd", threat=tm, steps=5),
                                                   "id": Identity(tm)}, progress=False)
    assert report.attrs["warnings"] == [] and issued == []


# ------------------------------------------------------------------------------------------------
# bad input
# ------------------------------------------------------------------------------------------------
def test_bad_arguments_name_the_argument(cnn, test_xy):
    fgsm = {"fgsm": tb.attack("fgsm", threat=tb.Linf(EPS))}
    with pytest.raises(ValueError, match="n must"):
        tb.evaluate(cnn, test_xy, fgsm, n=0)
    with pytest.raises(ValueError, match="n must"):
        tb.evaluate(cnn, test_xy, fgsm, n=-3)
    with pytest.raises(ValueError, match="batch_size"):
        tb.evaluate(cnn, test_xy, fgsm, batch_size=0)
    with pytest.raises(ValueError, match="attacks"):
        tb.evaluate(cnn, test_xy, {"pgd": object()})
    with pytest.raises(ValueError, match="attacks"):
        tb.evaluate(cnn, test_xy, [lambda m, x, y: x])
    with pytest.raises(ValueError, match="attacks"):
        tb.evaluate(cnn, test_xy, "pgd")
    with pytest.raises(ValueError, match="reserved"):
        tb.evaluate(cnn, test_xy, {"clean": tb.attack("fgsm", threat=tb.Linf(EPS))})
    with pytest.raises(ValueError, match="certifiers"):
        tb.evaluate(cnn, test_xy, certifiers=[object()])
    with pytest.raises(ValueError, match="empty"):
        tb.evaluate(cnn, (torch.zeros(0, 1, 8, 8), torch.zeros(0, dtype=torch.long)))
    with pytest.raises(ValueError, match="empty"):
        tb.evaluate(cnn, [])
    with pytest.raises(ValueError, match="data"):
        tb.evaluate(cnn, 42)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        tb.evaluate(cnn, (test_xy[0] * 2, test_xy[1]))
    with pytest.raises(ValueError, match="eps_list"):
        tb.robustness_curve(cnn, test_xy, fgsm["fgsm"], [])
    with pytest.raises(ValueError, match="eps_list"):
        tb.robustness_curve(cnn, test_xy, fgsm["fgsm"], [0.1, -0.1])
    with pytest.raises(ValueError, match="attack"):
        tb.robustness_curve(cnn, test_xy, "pgd", [0.1])


# ------------------------------------------------------------------------------------------------
# robustness curves and plots
# ------------------------------------------------------------------------------------------------
def test_robustness_curve_non_increasing_and_plotted(cnn, test_xy, tmp_path):
    pgd = tb.attack("pgd", threat=tb.Linf(EPS), steps=10)
    eps = [0.2, 0.0, 0.05, 0.1, 0.3]
    with warnings.catch_warnings():
        warnings.simplefilter("error", SanityWarning)
        df = tb.robustness_curve(cnn, test_xy, pgd, eps, progress=False)
    assert list(df["eps"]) == sorted(eps)
    assert {"eps", "accuracy", "n", "accuracy_nested"} <= set(df.columns)
    assert (df["n"] == N).all()
    acc = df["accuracy"].to_numpy()
    assert (np.diff(acc) <= 1.0 / N + 1e-12).all(), acc  # at most one example of noise
    assert acc[0] > 0.85 and acc[-1] < 0.1  # clean at eps 0, broken at eps 0.3
    clean, _ = quiet_evaluate(cnn, test_xy, progress=False)
    assert acc[0] == clean.loc["clean", "accuracy"]
    nested = df["accuracy_nested"].to_numpy()
    assert (np.diff(nested) <= 0).all() and (nested <= acc + 1e-12).all()
    # the curve's point at eps = 0.1 is evaluate's PGD row (same seed, same batches)
    at = quiet_evaluate(cnn, test_xy, {"pgd": pgd}, progress=False)[0]
    assert df.loc[df["eps"] == EPS, "accuracy"].item() == at.loc["pgd", "accuracy"]

    fig = tb.plot.robustness_curve(df)
    assert isinstance(fig, Figure)
    tb.plot.robustness_curve(df.assign(accuracy=df["accuracy_nested"]), ax=fig.axes[0], label="nested")
    assert len(fig.axes[0].lines) == 2
    out = tb.plot.save(fig, tmp_path / "sub" / "curve.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_robustness_curve_with_certifier(linear, test_xy):
    tm = tb.Linf(0.01)
    df = tb.robustness_curve(linear, test_xy, tb.attack("pgd", threat=tm, steps=10), [0, 0.01, 0.03, 0.1],
                             certifier=LinearMarginCertifier(tm), progress=False)
    cert = df["certified_accuracy"].to_numpy()
    assert (cert <= df["accuracy_nested"].to_numpy() + 1e-12).all()  # lower bound below upper bound
    assert (np.diff(cert) <= 0).all() and cert[1] > 0
    assert cert[0] == df["accuracy"].iloc[0]  # eps = 0 certifies every correct example
    fig = tb.plot.robustness_curve(df)
    assert len(fig.axes[0].lines) == 2  # attack and certified


def test_training_curves(tmp_path):
    history = pd.DataFrame({"epoch": [0, 1, 2], "loss": [2.0, 1.0, 0.5], "acc": [0.3, 0.6, 0.8],
                            "lr": [0.1, 0.05, 0.01], "robust_acc": [0.1, 0.2, float("nan")],
                            "note": ["a", "b", "c"], "stopped": [False, False, True]})
    fig = tb.plot.training_curves(history, tmp_path / "curves.png")
    assert isinstance(fig, Figure)
    assert sorted(ax.get_title() for ax in fig.axes) == ["acc", "loss", "lr", "robust_acc"]
    assert list(fig.axes[0].lines[0].get_xdata()) == [1, 2, 3]
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"
    fig = tb.plot.training_curves(history.to_dict("records"), columns=["loss"])
    assert [ax.get_title() for ax in fig.axes] == ["loss"]
    with pytest.raises(ValueError, match="columns"):
        tb.plot.training_curves(history, columns=["nope"])
    # the suffix picks the format, no suffix means PNG (the Trainer writes to temporary names)
    tb.plot.training_curves(history, tmp_path / "noext")
    assert (tmp_path / "noext").read_bytes()[:4] == b"\x89PNG"
    assert isinstance(tb.plot.training_curves(history[["epoch"]]), Figure)  # nothing to draw yet


def test_groups_add_worst_of_rows(cnn, digits):
    """A group row is the per-example AND of its attacks, beside the overall worst case."""
    atk = {"pgd-ce@0.05": tb.attack("pgd", threat=tb.Linf(0.05), steps=10),
           "pgd-cw@0.05": tb.attack("pgd", threat=tb.Linf(0.05), steps=10, loss="cw"),
           "pgd-ce@0.1": tb.attack("pgd", threat=tb.Linf(0.1), steps=10)}
    groups = {"pgd@0.05": ["pgd-ce@0.05", "pgd-cw@0.05"], "pgd@0.1": ["pgd-ce@0.1"]}
    report, issued = quiet_evaluate(cnn, digits[1], atk, n=N, per_example=True, batch_size=100,
                                    progress=False, groups=groups)
    assert issued == []
    assert list(report.index) == ["clean", *atk, "worst-case", "pgd@0.05", "pgd@0.1"]
    assert report.loc["pgd@0.05", "kind"] == "worst-case"
    assert report.loc["pgd@0.05", "eps"] == 0.05 and report.loc["pgd@0.05", "threat"] == "linf"
    pe = report.attrs["per_example"]
    both = pe["pgd-ce@0.05"] & pe["pgd-cw@0.05"]
    assert (pe["pgd@0.05"] == both).all()
    acc = report["accuracy"]
    assert acc["pgd@0.05"] == pytest.approx(both.mean())
    assert acc["pgd@0.05"] <= min(acc["pgd-ce@0.05"], acc["pgd-cw@0.05"])
    assert acc["pgd@0.1"] == acc["pgd-ce@0.1"]
    assert acc["worst-case"] <= acc["pgd@0.05"]
    assert report.attrs["groups"] == groups


@pytest.mark.parametrize("groups, kw, match", [
    ({"g": ["nope"]}, {}, "not attacks of this evaluation"),
    ({"g": []}, {}, "non-empty list"),
    ({"g": "fgsm"}, {}, "non-empty list"),
    ({"fgsm": ["fgsm"]}, {}, "clashes"),
    ({"worst-case": ["fgsm"]}, {}, "clashes"),
    ({"g": ["fgsm"]}, {"cascade": True}, "cascade"),
    (["fgsm"], {}, "dict"),
])
def test_groups_bad_input(linear, test_xy, groups, kw, match):
    with pytest.raises(ValueError, match=match):
        tb.evaluate(linear, test_xy, {"fgsm": tb.attack("fgsm", threat=tb.Linf(EPS))}, n=10,
                    progress=False, groups=groups, **kw)


def test_contains_reuses_the_norms_and_old_overrides_still_work(cnn, digits):
    """evaluate computes each perturbation's norm once and hands it to ``contains(norms=)``;
    a threat model whose ``contains`` override predates ``norms=`` is still served."""
    calls = {"norm": 0}

    class Counting(tb.Linf):
        def norm(self, delta, x=None):
            calls["norm"] += 1
            return super().norm(delta, x)

    class OldStyle(tb.Linf):
        def contains(self, x_adv, x, atol=1e-6, rtol=None):
            return super().contains(x_adv, x, atol, rtol)

    for tm in (Counting(EPS), OldStyle(EPS)):
        report, issued = quiet_evaluate(cnn, digits[1], {"fgsm": tb.attack("fgsm", threat=tm)}, n=64,
                                        batch_size=32, progress=False)
        assert issued == [] and report.loc["fgsm", "max_norm"] <= EPS + 1e-6
    assert calls["norm"] == 2  # one per batch: contains did not compute it again
    x = digits[1].x[:4]
    tm = tb.Linf(EPS)
    assert tm.contains(x, x, norms=torch.zeros(4)).all() and not tm.contains(x, x, norms=torch.ones(4)).any()
    with pytest.raises(ValueError, match="norms must have shape"):
        tm.contains(x, x, norms=torch.zeros(3))
