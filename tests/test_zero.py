"""ZeRO memory table (hand-worked) and FSDP2 on CPU/gloo: equal to single-process training,
each of 2 ranks holding half of the parameters, gradients and Adam state."""

from __future__ import annotations

import math

import pytest
import torch

from labkit.data import load_arrays
from labkit.efficiency.memory import training_memory
from labkit.parallel.data_parallel import build_model, train_single_process
from labkit.parallel.launch import launch
from labkit.parallel.zero import STAGES, fsdp_train, zero_memory

TOY = {"parameters": 400, "gradients": 400, "optimizer_state": 800, "activations": 100}


def test_table_by_hand():
    rows = {r["stage"]: r for r in zero_memory(TOY, 4)}
    assert list(rows) == list(STAGES)
    assert [r["total"] for r in rows.values()] == [1700, 1100, 800, 500]
    z3 = rows["ZeRO-3 / FSDP (+ parameters)"]
    assert (z3["parameters"], z3["gradients"], z3["optimizer_state"], z3["activations"]) == (100, 100, 200, 100)


def test_one_rank_shards_nothing():
    assert {r["total"] for r in zero_memory(TOY, 1)} == {1700}


def test_table_from_a_measured_step():
    model = build_model(seed=0)
    x, y = load_arrays("digits")
    mem = training_memory(model, torch.optim.Adam(model.parameters()), x[:32], y[:32])
    p_bytes = 4 * sum(q.numel() for q in model.parameters())
    assert mem["parameters"] == mem["gradients"] == p_bytes
    ddp, z1, z2, z3 = zero_memory(mem, 2)
    assert z1["optimizer_state"] == mem["optimizer_state"] / 2 and z3["parameters"] == p_bytes / 2
    assert ddp["total"] > z1["total"] > z2["total"] > z3["total"]


@pytest.mark.parametrize("memory, world, exc, word", [
    ([1, 2], 2, TypeError, "memory"),
    ({"parameters": 1}, 2, ValueError, "lacks"),
    (TOY, 0, ValueError, "world_size"),
    (TOY, 1.5, TypeError, "world_size"),
    ({**TOY, "gradients": math.nan}, 2, ValueError, "gradients"),
])
def test_errors(memory, world, exc, word):
    with pytest.raises(exc, match=word):
        zero_memory(memory, world)


@pytest.mark.dist
def test_fsdp_equals_single_process_and_halves_memory():
    data = load_arrays("digits")
    kwargs = {"steps": 4, "batch_size": 32, "data": data}
    per_rank = launch(fsdp_train, 2, **kwargs, timeout=180)
    reference, losses = train_single_process(**kwargs)
    for r in per_rank:
        torch.testing.assert_close(r["params"], reference, rtol=0, atol=1e-5)
        assert r["losses"] == pytest.approx(losses, abs=1e-5)
        for part in ("parameters", "gradients", "optimizer_state"):
            # half, up to the padding FSDP adds so that all shards of a tensor have one shape
            assert r["full"][part] <= 2 * r["local"][part] <= 1.1 * r["full"][part], part
    assert per_rank[0]["full"]["parameters"] == 4 * sum(q.numel() for q in build_model().parameters())
