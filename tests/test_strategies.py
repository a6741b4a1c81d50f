"""The DP / PP / TP table against hand-worked numbers and against the bytes the code really sends."""

from __future__ import annotations

import pytest
import torch

from labkit.parallel.comm import CountingComm
from labkit.parallel.launch import launch
from labkit.parallel.strategies import (
    Workload,
    compare_table,
    ddp_bytes_worker,
    format_table,
    human_bytes,
    measure_worker,
    strategy_table,
)


def test_counting_comm_in_one_process():
    comm = CountingComm()
    assert (comm.rank, comm.world_size) == (0, 1)
    t = torch.ones(3, 5)
    assert comm.all_reduce(t) is t and torch.equal(t, torch.ones(3, 5))  # a group of one: identity
    assert comm.all_gather(torch.zeros(2))[0].shape == (2,)
    assert comm.log == [("all_reduce", 60), ("all_gather", 8)]
    assert comm.bytes() == 68 and comm.bytes("all_reduce") == 60
    assert comm.wire_bytes() == 0  # nothing leaves a single process


def test_reduce_scatter_and_all_to_all_in_one_process():
    comm = CountingComm()
    t = torch.arange(12.0).reshape(2, 6)
    assert torch.equal(comm.reduce_scatter(t, dim=1), t)  # a group of one keeps the whole sum
    rows = torch.arange(6.0).reshape(3, 2)
    assert torch.equal(comm.all_to_all_single(rows, [3], [3]), rows)
    assert comm.log == [("reduce_scatter", 48), ("all_to_all", 0)]  # rows kept at home travel nowhere
    assert comm.wire_bytes("reduce_scatter") == 0 and comm.bytes("all_to_all") == 0
    with pytest.raises(ValueError, match="input_splits"):
        comm.all_to_all_single(rows, [3], [2])  # 2 rows announced, 3 given
    with pytest.raises(ValueError, match="output_splits"):
        comm.all_to_all_single(rows, [3, 0], [3])  # one split per rank
    with pytest.raises(TypeError, match="input_splits"):
        comm.all_to_all_single(rows, [3], 3)
    with pytest.raises(ValueError, match="op"):
        comm.wire_bytes("broadcast")


def test_counting_comm_errors():
    comm = CountingComm()
    with pytest.raises(ValueError, match="op"):
        comm.bytes("broadcast")
    with pytest.raises(TypeError, match="tensor"):
        comm.all_reduce([1.0])
    with pytest.raises(ValueError, match="dst"):
        comm.isend(torch.ones(1), dst=0)  # no other rank to send to


def test_table_by_hand():
    # d=4, L=2, B=4, p=2, m=2: P = 2 (16 + 4) = 40 parameters, float32
    rows = {r["strategy"]: r for r in strategy_table(Workload(4, 2, 4, 2, 2))}
    assert list(rows) == ["DP", "PP (GPipe)", "PP (1F1B)", "TP"]
    dp, gp, fb, tp = rows["DP"], rows["PP (GPipe)"], rows["PP (1F1B)"], rows["TP"]
    assert dp["sent_per_rank"] == [160, 160] and dp["wire_per_rank"] == 160 and dp["params_per_rank"] == 40
    assert dp["activation_bytes_per_rank"] == [4 * 2 * 4 * 4] * 2  # (L+2) x B/p x d floats
    assert dp["memory_bytes"] == 40 * 4 * 4 + 128  # params + grads + 2 Adam slots, + activations
    assert gp["sent_per_rank"] == [64, 64] and gp["params_per_rank"] == 20
    assert gp["activation_bytes_per_rank"] == [2 * 2 * 4 * 4 * 2, 3 * 2 * 4 * 4 * 2]  # m in flight
    assert fb["activation_bytes_per_rank"] == [2 * 2 * 4 * 4 * 2, 3 * 2 * 4 * 4 * 1]  # min(p - s, m)
    assert tp["sent_per_rank"] == [64, 64] and tp["params_per_rank"] == 16 + 2 + 4
    assert tp["activation_bytes_per_rank"] == [(16 + 8 + 32) * 4] * 2


def test_table_properties():
    big_model = {r["strategy"]: r for r in strategy_table(Workload(1024, 8, 16, 4, 4))}
    big_batch = {r["strategy"]: r for r in strategy_table(Workload(64, 8, 4096, 4, 4))}
    # DP sends the gradients (grows with the model); PP and TP send activations (grow with the batch)
    assert max(big_model["DP"]["sent_per_rank"]) > max(big_model["PP (GPipe)"]["sent_per_rank"])
    assert max(big_batch["DP"]["sent_per_rank"]) < max(big_batch["TP"]["sent_per_rank"])
    assert big_model["PP (GPipe)"]["params_per_rank"] * 4 == big_model["DP"]["params_per_rank"]
    single = strategy_table(Workload(8, 2, 4, 1))
    assert all(max(r["sent_per_rank"]) == 0 for r in single)
    assert "TP" not in {r["strategy"] for r in strategy_table(Workload(8, 3, 6, 3))}  # odd depth: no pairs


def test_workload_and_format_errors():
    with pytest.raises(ValueError, match="width"):
        Workload(0, 2, 4, 2)
    with pytest.raises(ValueError, match="divide"):
        Workload(8, 3, 4, 2)
    with pytest.raises(TypeError, match="Workload"):
        strategy_table({"width": 8})
    with pytest.raises(ValueError, match="rows"):
        format_table([])
    with pytest.raises(ValueError, match="n"):
        human_bytes(-1)
    assert human_bytes(1536) == "1.5 KB" and human_bytes(10) == "10 B"
    text = format_table(strategy_table(Workload(8, 2, 4, 2)))
    assert text.splitlines()[2].startswith("DP") and "TP" in text
    for worker in (ddp_bytes_worker, measure_worker):
        with pytest.raises(RuntimeError, match="launch"):
            worker(8, 2, 4)
    with pytest.raises(ValueError, match="no measurement"):
        compare_table(strategy_table(Workload(8, 2, 4, 2)), [{"TP": {}}])


@pytest.mark.dist
@pytest.mark.parametrize("world", [2, 4])
def test_table_equals_what_the_code_sends(world):
    d, L, B, m = 16, 4, 16, 2
    measured = launch(measure_worker, world, d, L, B, m, timeout=180, threads_per_rank=1)
    rows = strategy_table(Workload(d, L, B, world, m))
    assert {r["strategy"] for r in rows} == set(measured[0])
    for c in compare_table(rows, measured):
        for what in ("sent", "params", "activations"):
            assert c[f"{what} measured"] == pytest.approx(c[f"{what} predicted"]), (c["strategy"], what)
        assert c["wire derived"] == pytest.approx(c["wire predicted"]), c["strategy"]
    # per rank, too: the pipeline's interior ranks send both ways
    by = {r["strategy"]: r for r in rows}
    assert [m_["PP (GPipe)"]["sent"] for m_ in measured] == by["PP (GPipe)"]["sent_per_rank"]
    assert [m_["PP (1F1B)"]["activation_bytes"] for m_ in measured] == by["PP (1F1B)"]["activation_bytes_per_rank"]
