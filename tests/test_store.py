"""The per-example Store: lazy named tensors keyed by dataset index, checkpoints, and the
union of rows across real gloo processes."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from toolbox.train import Store


def test_lazy_allocation_names_shapes_and_rows():
    s = Store(10)
    assert s.names() == [] and "delta" not in s
    idx = torch.tensor([7, 2])
    d = s.get("delta", idx, init=0.5, shape=(1, 2, 2))
    assert d.shape == (2, 1, 2, 2) and torch.all(d == 0.5)
    assert s.names() == ["delta"] and s.tensor("delta").shape == (10, 1, 2, 2)
    s.set("delta", idx, torch.stack([torch.full((1, 2, 2), 7.0), torch.full((1, 2, 2), 2.0)]))
    assert torch.all(s.get("delta", torch.tensor([2]))[0] == 2.0)
    assert torch.all(s.get("delta", torch.tensor([7]))[0] == 7.0)
    assert torch.all(s.tensor("delta")[[0, 1, 3]] == 0.5)          # untouched rows keep init
    # later calls ignore init/shape: the tensor exists
    assert s.get("delta", idx, init=9.0, shape=(3,)).shape == (2, 1, 2, 2)


def test_set_allocates_from_values_and_get_returns_a_copy():
    s = Store(5)
    s.set("count", torch.tensor([1, 3]), torch.tensor([4, 5]))
    assert s.tensor("count").dtype == torch.int64 and s.tensor("count").tolist() == [0, 4, 0, 5, 0]
    s.set("flag", torch.tensor([0]), 1.0)                            # a number: float32 scalar rows
    assert s.tensor("flag").shape == (5,) and s.tensor("flag").dtype == torch.float32
    rows = s.get("count", torch.tensor([1]))
    rows += 100                                                      # edits of a copy do not leak in
    assert s.tensor("count")[1] == 4
    s.set("count", torch.tensor([1]), 2.7)                           # cast to the stored dtype
    assert s.tensor("count")[1] == 2


def test_init_callable_and_dtype():
    s = Store(4)
    v = s.get("eps", torch.tensor([0, 3]), init=lambda shape: torch.linspace(0, 1, shape[0]), dtype=torch.float64)
    assert v.dtype == torch.float64 and v.tolist() == pytest.approx([0.0, 1.0])
    with pytest.raises(ValueError, match="shape"):
        s.get("bad", torch.tensor([0]), init=lambda shape: torch.zeros(3))


@pytest.mark.parametrize("index, match", [
    (torch.tensor([0, 10]), "outside"),
    (torch.tensor([-1]), "outside"),
    (torch.tensor([[0, 1]]), "1-D"),
    (torch.tensor([0.0]), "integer"),
    ([0, 1], "index"),
])
def test_bad_index_raises_value_error(index, match):
    with pytest.raises(ValueError, match=match):
        Store(10).get("x", index)


def test_bad_arguments():
    with pytest.raises(ValueError, match="size"):
        Store(0)
    with pytest.raises(ValueError, match="name"):
        Store(3).get("", torch.tensor([0]))
    with pytest.raises(KeyError, match="nope"):
        Store(3).tensor("nope")


def test_state_dict_roundtrip_and_size_check():
    s = Store(6)
    s.set("a", torch.tensor([1, 4]), torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
    s.get("b", torch.tensor([0]), init=-1, dtype=torch.int32)
    state = s.state_dict()
    t = Store(6)
    t.load_state_dict(state)
    assert t.names() == ["a", "b"] and torch.equal(t.tensor("a"), s.tensor("a"))
    assert t.tensor("b").dtype == torch.int32 and torch.all(t.tensor("b") == -1)
    state["tensors"]["a"][0, 0] = 99.0                                # the store holds its own copy
    assert t.tensor("a")[0, 0] == 0
    with pytest.raises(ValueError, match="size"):
        Store(7).load_state_dict(state)
    with pytest.raises(ValueError, match="tensors"):
        Store(6).load_state_dict({"size": 6})


def test_sync_alone_only_clears_bookkeeping():
    s = Store(3)
    s.set("a", torch.tensor([1]), 2.0)
    before = s.tensor("a").clone()
    s.sync()
    assert torch.equal(s.tensor("a"), before) and not s._dirty["a"].any()


# ------------------------------------------------------------------------------ two gloo processes
def _worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        s = Store(6)
        mine = torch.tensor([0, 1, 2]) if rank == 0 else torch.tensor([2, 3])
        s.get("v", mine, init=-1.0, shape=(2,))
        s.set("v", mine, torch.full((len(mine), 2), 10.0 * (rank + 1)))   # row 2 written by both
        s.set("n", mine, torch.full((len(mine),), 3 + rank, dtype=torch.int64))
        if rank == 1:                                              # a name only rank 1 allocated
            s.get("only1", torch.tensor([5]), init=7.0)
            s.set("only1", torch.tensor([4]), torch.tensor([1.5]))
        s.sync()
        first = s.state_dict()
        s.sync()                                                   # nothing written since: no change
        second = s.state_dict()
        s.set("v", torch.tensor([5]), torch.full((1, 2), float(rank)))   # both ranks, next sync
        s.sync()
        third = s.state_dict()
        err = None
        bad = Store(6)
        bad.get("w", torch.tensor([0]), shape=(rank + 1,))
        try:
            bad.sync()
        except RuntimeError as e:
            err = str(e)
        torch.save({"first": first, "second": second, "third": third, "err": err}, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_sync_two_processes_union_mean_and_missing_names(tmp_path):
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    for key in ("first", "second", "third"):                        # every rank holds the union
        assert r0[key]["tensors"].keys() == r1[key]["tensors"].keys() == {"v", "n", "only1"}
        for name in r0[key]["tensors"]:
            assert torch.equal(r0[key]["tensors"][name], r1[key]["tensors"][name]), (key, name)
    v = r0["first"]["tensors"]["v"]
    assert v[:, 0].tolist() == [10.0, 10.0, 15.0, 20.0, -1.0, -1.0]   # row 2: mean of both ranks
    assert r0["first"]["tensors"]["n"].tolist() == [3, 3, 4, 4, 0, 0]  # round((3 + 4) / 2) = 4
    assert r0["first"]["tensors"]["only1"].tolist() == [7.0, 7.0, 7.0, 7.0, 1.5, 7.0]
    assert torch.equal(r0["second"]["tensors"]["v"], v)
    assert r0["third"]["tensors"]["v"][5].tolist() == [0.5, 0.5]
    assert r0["err"] is not None and "'w'" in r0["err"] and "rank 1" in r0["err"] and r1["err"] == r0["err"]
