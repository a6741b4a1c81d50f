"""Tensor parallelism over attention heads and sequence parallelism on the LM's transformer block:
equal to the dense block (outputs, input and parameter gradients), from scratch and through
DTensor, with the bytes each collective moves and the activation bytes autograd keeps written
out as formulas here."""

from __future__ import annotations

import pytest
import torch

from labkit.lm.model import Block, GPTConfig
from labkit.parallel.comm import CountingComm
from labkit.parallel.dtensor_block import block_comparison_worker, dtensor_block_worker
from labkit.parallel.launch import launch
from labkit.parallel.tp_block import (
    TensorParallelBlock,
    block_problem,
    block_reference,
    head_order,
    tp_block_worker,
)

D, HEADS, SEQ, BATCH, P = 32, 4, 16, 2, 2
FP32 = 4


def test_head_order_by_hand():
    # d=4, 2 heads of 2, 2 ranks: rank 0 gets q rows 0-1, k rows 4-5, v rows 8-9
    assert head_order(4, 2, 2).tolist() == [0, 1, 4, 5, 8, 9, 2, 3, 6, 7, 10, 11]
    assert head_order(4, 2, 1).tolist() == list(range(12))
    with pytest.raises(ValueError, match="n_head"):
        head_order(4, 2, 4)
    with pytest.raises(TypeError, match="world_size"):
        head_order(4, 2, 2.0)


@pytest.mark.parametrize("sequence_parallel,recompute_gather", [(False, False), (True, False), (True, True)])
def test_group_of_one_equals_the_dense_block(sequence_parallel, recompute_gather):
    block, x, y = block_problem(D, HEADS, SEQ, BATCH, seed=3)
    tp = TensorParallelBlock(block, CountingComm(), sequence_parallel=sequence_parallel,
                             recompute_gather=recompute_gather)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    out = tp(x1)
    torch.testing.assert_close(out, block(x2))
    ((out - y) ** 2).sum().backward()
    ((block(x2) - y) ** 2).sum().backward()
    dense = dict(block.named_parameters())
    got = tp.dense_gradients()
    assert sorted(got) == sorted(dense)
    for name, g in got.items():
        torch.testing.assert_close(g, dense[name].grad, msg=name)


def test_errors():
    block = Block(GPTConfig(block_size=8, n_layer=1, n_head=2, n_embd=8))
    with pytest.raises(TypeError, match="block"):
        TensorParallelBlock(torch.nn.Linear(2, 2), CountingComm())
    with pytest.raises(TypeError, match="comm"):
        TensorParallelBlock(block, object())
    with pytest.raises(ValueError, match="recompute_gather"):
        TensorParallelBlock(block, CountingComm(), recompute_gather=True)
    with pytest.raises(ValueError, match="n_head"):
        block_problem(8, 3)
    for worker in (tp_block_worker, dtensor_block_worker, block_comparison_worker):
        with pytest.raises(RuntimeError, match="launch"):
            worker()


def saved_bytes(p: int, *, boundary_shards: int = 1, gathered_shards: int = 1) -> int:
    """What autograd keeps for one block's backward, tensor by tensor (fp32), on one of ``p``
    tensor-parallel ranks. ``boundary_shards``: how many ways the LayerNorms' inputs and
    statistics are cut (``p`` under sequence parallelism); ``gathered_shards``: the same for the
    column-parallel layers' inputs (``p`` only when they are gathered again in backward)."""
    btd, bt = BATCH * SEQ * D, BATCH * SEQ
    tensors = [
        ("LN1 input (residual stream)", btd / boundary_shards),
        ("LN1 mean and 1/std", 2 * bt / boundary_shards),
        ("q,k,v Linear input", btd / gathered_shards),
        ("q, k, v of my heads", 3 * btd / p),
        ("attention output of my heads (= c_proj input)", btd / p),
        ("attention log-sum-exp, my heads", BATCH * HEADS * SEQ / p),
        ("LN2 input (residual stream)", btd / boundary_shards),
        ("LN2 mean and 1/std", 2 * bt / boundary_shards),
        ("MLP Linear(d, 4d) input", btd / gathered_shards),
        ("GELU input, my hidden units", 4 * btd / p),
        ("Linear(4d, d) input, my hidden units", 4 * btd / p),
    ]
    return int(sum(n for _, n in tensors)) * FP32


def test_dense_block_saves_what_the_formula_says():
    assert block_reference(D, HEADS, SEQ, BATCH)["saved_bytes"] == saved_bytes(1)


@pytest.fixture(scope="module")
def two_ranks():
    """One launch for every dist test below: TP, SP, SP gathering again, DTensor (world 2)."""
    return launch(block_comparison_worker, P, D, HEADS, SEQ, BATCH, timeout=240, threads_per_rank=1)


def _assert_equal_to_dense(report, ref):
    torch.testing.assert_close(report["output"], ref["output"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(report["input_grad"], ref["input_grad"], rtol=1e-5, atol=1e-5)
    assert sorted(report["grads"]) == sorted(ref["grads"])
    for name, g in report["grads"].items():
        torch.testing.assert_close(g, ref["grads"][name], rtol=1e-5, atol=1e-5, msg=name)


@pytest.mark.dist
@pytest.mark.parametrize("variant", ["tp", "sp", "sp_regather", "dtensor", "dtensor_sp"])
def test_two_ranks_equal_the_dense_block(two_ranks, variant):
    ref = block_reference(D, HEADS, SEQ, BATCH)
    for r in two_ranks:
        _assert_equal_to_dense(r[variant], ref)


@pytest.mark.dist
def test_heads_are_split_by_rank(two_ranks):
    shapes = two_ranks[0]["tp"]["local_shapes"]
    assert shapes["qkv.weight"] == (3 * D // P, D) and shapes["proj.weight"] == (D, D // P)
    assert shapes["fc.weight"] == (4 * D // P, D) and shapes["out.weight"] == (D, 4 * D // P)
    assert shapes["ln_1.weight"] == (D,)


@pytest.mark.dist
def test_bytes_sent_match_the_formulas(two_ranks):
    act = BATCH * SEQ * D * FP32  # one (B, T, d) activation
    ring = (P - 1) / P
    for r in two_ranks:
        tp, sp, regather = r["tp"], r["sp"], r["sp_regather"]
        # TP: g after each half forward, f before each half backward: 4 all-reduces of B x T x d
        assert tp["forward_calls"] == ["all_reduce"] * 2 and tp["calls"] == ["all_reduce"] * 4
        assert tp["bytes"] == {"all_reduce": 4 * act} and tp["wire_bytes"]["all_reduce"] == 4 * 2 * ring * act
        assert tp["grad_sync_bytes"] == 0
        # SP: each all-reduce becomes a reduce-scatter (of the whole) plus an all-gather (of a 1/p shard)
        assert sp["forward_calls"] == ["all_gather", "reduce_scatter"] * 2
        assert sp["bytes"] == {"all_gather": 4 * act // P, "reduce_scatter": 4 * act}
        assert sum(sp["wire_bytes"].values()) == sum(tp["wire_bytes"].values())  # same bytes on the wire
        # ... plus the LayerNorms' weights and biases and the two row-parallel biases, all-reduced
        assert sp["grad_sync_bytes"] == (2 * 2 * D + 2 * D) * FP32
        # gathering again in backward: one more all-gather per column-parallel layer
        assert regather["bytes"] == {"all_gather": 6 * act // P, "reduce_scatter": 4 * act}
        # DTensor's plan: same forward; backward all-reduces each Colwise layer's input gradient
        # on its own (q, k and v separately, then the MLP): 4 all-reduces where ours does 2
        forward = [n for op, bw, n in r["dtensor"]["comms"] if not bw and op == "all_reduce"]
        backward = [n for op, bw, n in r["dtensor"]["comms"] if bw and op == "all_reduce"]
        assert forward == [act, act] and backward == [act] * 4
        assert len(r["dtensor"]["comms"]) == 6
        # DTensor's sequence-parallel plan issues exactly our collectives, in our order and sizes
        names = {"all_gather_into_tensor": "all_gather", "reduce_scatter_tensor": "reduce_scatter"}
        dsp = [(names[op], n) for op, _, n in r["dtensor_sp"]["comms"]]
        assert [op for op, _ in dsp] == sp["calls"]
        assert [n for op, n in dsp if op == "all_gather"] == [act // P] * 4
        assert [n for op, n in dsp if op == "reduce_scatter"] == [act] * 4
        # ... and leaves the LayerNorms' gradients as pending sums (reduced when first read whole)
        grads = r["dtensor_sp"]["grad_placements"]
        assert {grads[f"{ln}.{n}"] for ln in ("ln_1", "ln_2") for n in ("weight", "bias")} == {"(Partial(sum),)"}


@pytest.mark.dist
def test_sequence_parallel_saves_the_boundary_activations(two_ranks):
    for r in two_ranks:
        tp, sp, regather = (r[k]["saved_bytes"] for k in ("tp", "sp", "sp_regather"))
        assert tp == saved_bytes(P)
        assert sp == saved_bytes(P, boundary_shards=P)
        assert regather == saved_bytes(P, boundary_shards=P, gathered_shards=P)
        assert regather < sp < tp < saved_bytes(1)
        assert sp / tp == pytest.approx(saved_bytes(P, boundary_shards=P) / saved_bytes(P))
