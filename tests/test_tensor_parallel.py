"""Tensor parallelism: column/row-parallel layers equal the dense layers (outputs and gradients),
from scratch and through DTensor, with the expected number of all-reduces."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from labkit.parallel.comm import CountingComm
from labkit.parallel.launch import launch
from labkit.parallel.problem import reference_run
from labkit.parallel.tensor_parallel import (
    ColumnParallelLinear,
    RowParallelLinear,
    dtensor_worker,
    parallelize_mlp,
    shard,
    tp_worker,
)


def test_shard_by_hand():
    w = torch.arange(12.0).reshape(4, 3)
    assert torch.equal(shard(w, 0, 1, 2), torch.tensor([[6.0, 7, 8], [9, 10, 11]]))
    assert torch.equal(shard(w, 1, 2, 3), torch.tensor([[2.0], [5], [8], [11]]))
    with pytest.raises(ValueError, match="equal shards"):
        shard(w, 0, 0, 3)
    with pytest.raises(ValueError, match="rank"):
        shard(w, 0, 2, 2)
    with pytest.raises(TypeError, match="tensor"):
        shard([1, 2], 0, 0, 1)


def test_single_process_layers_equal_dense(gen):
    # A group of one: the layers must reduce to nn.Linear exactly (collectives are identities).
    comm = CountingComm()
    dense = nn.Linear(6, 4)
    x = torch.randn(5, 6, generator=gen, requires_grad=True)
    for layer in (ColumnParallelLinear.from_dense(dense, comm), RowParallelLinear.from_dense(dense, comm)):
        torch.testing.assert_close(layer(x), dense(x))
    assert [op for op, _ in comm.log] == ["all_reduce"]  # the row layer's forward sum


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_from_dense_keeps_the_dense_layers_dtype(gen, dtype):
    comm = CountingComm()
    dense = nn.Linear(6, 4, dtype=dtype)
    with torch.no_grad():  # weights from the test's generator: the result must not depend on earlier tests
        dense.weight.copy_(torch.randn(4, 6, generator=gen))
        dense.bias.copy_(torch.randn(4, generator=gen))
    x = torch.randn(5, 6, generator=gen, dtype=dtype)
    # bf16 keeps 8 bits: the row layer rounds its partial sums before adding them, one rounding
    # more than the dense layer, so allow a few bf16 steps (1/128 near 1) in absolute terms
    tol = {"atol": 3e-2, "rtol": 1.6e-2} if dtype == torch.bfloat16 else {}
    for layer in (ColumnParallelLinear.from_dense(dense, comm), RowParallelLinear.from_dense(dense, comm)):
        assert {p.dtype for p in layer.parameters()} == {dtype}
        torch.testing.assert_close(layer(x), dense(x), **tol)  # a float64 input used to crash on float32 shards


def test_init_from_a_generator_matches_a_dense_draw():
    comm = CountingComm()
    col = ColumnParallelLinear(6, 4, comm=comm, generator=torch.Generator().manual_seed(0))
    row = RowParallelLinear(6, 4, comm=comm, generator=torch.Generator().manual_seed(0))
    assert torch.equal(col.weight, row.weight) and col.weight.shape == (4, 6)
    assert col.weight.abs().max() <= 1 / 6**0.5


def test_errors():
    comm = CountingComm()
    with pytest.raises(TypeError, match="comm"):
        ColumnParallelLinear(4, 4, comm=object())
    with pytest.raises(TypeError, match="linear"):
        RowParallelLinear.from_dense(nn.Conv1d(2, 2, 1), comm)
    with pytest.raises(ValueError, match="even number"):
        parallelize_mlp(nn.Sequential(nn.Linear(2, 2)), comm)
    with pytest.raises(ValueError, match="layout"):
        parallelize_mlp(nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2)), comm, layout="diagonal")
    with pytest.raises(TypeError, match="model"):
        parallelize_mlp("mlp", comm)
    for worker in (tp_worker, dtensor_worker):
        with pytest.raises(RuntimeError, match="launch"):
            worker(8, 2, 4)


def _assert_equal_to_dense(results, ref):
    for r in results:
        torch.testing.assert_close(r["output"], ref["output"], rtol=1e-5, atol=1e-5)
        assert sorted(r["grads"]) == sorted(ref["grads"])
        for name, g in r["grads"].items():
            torch.testing.assert_close(g, ref["grads"][name], rtol=1e-5, atol=1e-5)


@pytest.mark.dist
def test_megatron_mlp_two_ranks_equals_dense():
    d, L, B = 32, 4, 8
    results = launch(tp_worker, 2, d, L, B, timeout=120, threads_per_rank=1)
    _assert_equal_to_dense(results, reference_run(d, L, B))
    for r in results:
        # two pairs: one all-reduce forward per pair, one backward for the second pair only
        assert r["all_reduce_calls"] == 3 and r["all_reduce_bytes"] == 3 * B * d * 4
        assert r["shapes"]["1.weight"] == (d // 2, d) and r["shapes"]["3.weight"] == (d, d // 2)


@pytest.mark.dist
def test_naive_gather_layout_four_ranks_equals_dense_and_sends_more():
    d, L, B = 32, 2, 8
    results = launch(tp_worker, 4, d, L, B, layout="gather", timeout=120, threads_per_rank=1)
    _assert_equal_to_dense(results, reference_run(d, L, B))
    for r in results:
        assert r["all_gather_bytes"] == L * B * (d // 4) * 4  # every layer gathers its output
        assert r["all_reduce_calls"] == 1  # the second layer's input gradient


@pytest.mark.dist
def test_dtensor_parallelize_module_equals_dense():
    d, L, B = 32, 4, 8
    results = launch(dtensor_worker, 2, d, L, B, timeout=120, threads_per_rank=1)
    _assert_equal_to_dense(results, reference_run(d, L, B))
    for r in results:
        assert r["placements"]["1.weight"] == "(Shard(dim=0),)" and r["placements"]["3.weight"] == "(Shard(dim=1),)"
        assert r["local_shapes"]["1.weight"] == (d // 2, d)
        assert sum(r["forward_comms"].values()) == 2 and sum(r["total_comms"].values()) == 3  # as ours
