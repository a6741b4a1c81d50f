"""FSDP2 x TP on a 2x2 DeviceMesh (4 gloo ranks): equal to one process, and memory per rank
against ZeRO-3's formula."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from labkit.lm.model import get_config
from labkit.parallel.launch import launch
from labkit.parallel.mesh2d import build_mlp, mesh_problem, mesh_reference, mesh_train, tp_plan
from labkit.parallel.zero import zero_memory


def test_the_block_and_the_plan():
    d = get_config("tiny").n_embd
    mlp = build_mlp("tiny", seed=0)
    assert [type(m) for m in mlp][:3] == [nn.Linear, nn.GELU, nn.Linear]
    assert mlp[0].weight.shape == (4 * d, d) and mlp[2].weight.shape == (d, 4 * d)
    assert torch.equal(mlp[0].weight, build_mlp("tiny", seed=0)[0].weight)
    assert sorted(tp_plan()) == ["0", "2"]
    x, y = mesh_problem("tiny", batch=4, seq=3)
    assert x.shape == y.shape == (4, 3, d)


@pytest.mark.dist
def test_fsdp_times_tp_equals_one_process_and_shards_by_four():
    kwargs = {"steps": 3, "batch": 8, "seq": 4, "lr": 1e-3}
    ranks = launch(mesh_train, 4, **kwargs, timeout=300)
    reference = mesh_reference(**kwargs)
    assert sorted(r["coords"] for r in ranks) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    for r in ranks:
        assert r["losses"] == pytest.approx(reference["losses"], abs=1e-6)
        for name, want in reference["params"].items():
            assert torch.allclose(r["params"][name], want, atol=1e-5), name
        # the weights are sharded over both mesh dimensions; the row-parallel bias over dp only
        assert r["placements"]["2.weight"] == "(Shard(dim=0), Shard(dim=1))"
        assert r["placements"]["2.bias"] == "(Shard(dim=0), Replicate())"
    d = get_config("tiny").n_embd
    n_params = 4 * d * d + 4 * d + 4 * d * d + d  # the MLP: d -> 4d -> d, with biases
    full = {"parameters": 4 * n_params, "gradients": 4 * n_params, "optimizer_state": 8 * n_params, "activations": 0}
    assert ranks[0]["full"] == {k: full[k] for k in ("parameters", "gradients", "optimizer_state")}
    zero3 = zero_memory(full, 4)[-1]  # ZeRO-3 on dp x tp = 4 ranks: everything / 4
    extra = 4 * d / 2 - 4 * d / 4  # the bias that TP replicates: d floats / dp instead of / (dp x tp)
    for r in ranks:
        assert r["local"]["parameters"] == zero3["parameters"] + extra
        assert r["local"]["gradients"] == zero3["gradients"] + extra
        assert r["local"]["optimizer_state"] == zero3["optimizer_state"] + 2 * extra
