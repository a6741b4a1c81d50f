"""Data parallelism: shards, gradient averaging, the bucketed DDP-in-miniature, and DP training on
real processes against single-process training (every mode), plus what DDP's no_sync saves."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from torch import nn

from labkit.data import load_arrays
from labkit.parallel.data_parallel import (
    MODES,
    BucketedDataParallel,
    average_gradients_,
    build_model,
    dp_equivalence,
    global_batch,
    shard_batch,
    train_single_process,
    wrap_ddp,
)
from labkit.parallel.dp_timing import step_timing
from labkit.parallel.examples import run_each
from labkit.parallel.launch import launch


@pytest.fixture
def world1():
    """A one-rank gloo process group in this process (for code that calls torch.distributed)."""
    if dist.is_initialized():
        pytest.skip("a process group is already initialised in this process")
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def _grad_vector(model):
    return nn.utils.parameters_to_vector([q.grad for q in model.parameters()]).clone()


def test_shards_cover_the_batch_in_order():
    x = torch.arange(24).reshape(12, 2)
    parts = [shard_batch(x, r, 3) for r in range(3)]
    assert all(len(s) == 4 for s in parts)
    assert torch.equal(torch.cat(parts), x)


@pytest.mark.parametrize("args, exc, word", [
    ((torch.ones(10, 2), 0, 3), ValueError, "equal shards"),
    ((torch.ones(12, 2), 3, 3), ValueError, "rank"),
    ((torch.ones(12, 2), -1, 3), ValueError, "rank"),
    ((torch.ones(12, 2), 0, 0), ValueError, "world_size"),
    ((torch.ones(12, 2), 0, 2.0), TypeError, "world_size"),
    (([1, 2], 0, 1), TypeError, "x must"),
])
def test_shard_errors(args, exc, word):
    with pytest.raises(exc, match=word):
        shard_batch(*args)


@pytest.mark.parametrize("p", [1, 2, 4, 8])
def test_mean_of_shard_gradients_is_the_full_batch_gradient(p):
    x, y = global_batch(0, 64, data=load_arrays("digits"))
    model = build_model(seed=1)
    nn.functional.cross_entropy(model(x), y).backward()
    full = _grad_vector(model)
    total = torch.zeros_like(full)
    for r in range(p):
        model.zero_grad()
        nn.functional.cross_entropy(model(shard_batch(x, r, p)), shard_batch(y, r, p)).backward()
        total += _grad_vector(model)
    torch.testing.assert_close(total / p, full, rtol=1e-5, atol=1e-7)


def test_average_gradients_with_a_stand_in_all_reduce():
    """Without processes: an 'all-reduce' that adds a second, identical rank's gradient
    (x2) and a world of 2 must leave the gradients unchanged."""
    model = build_model(seed=0)
    x, y = global_batch(0, 8, data=load_arrays("digits"))
    nn.functional.cross_entropy(model(x), y).backward()
    before = _grad_vector(model)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(dist, "get_world_size", lambda group=None: 2)
        calls = average_gradients_(model, all_reduce=lambda t: t.mul_(2))
    assert calls == len(list(model.parameters()))
    torch.testing.assert_close(_grad_vector(model), before)
    with pytest.raises(TypeError, match="model"):
        average_gradients_("model")


def test_bucketed_bad_arguments():
    with pytest.raises(TypeError, match="module"):
        BucketedDataParallel("net")
    with pytest.raises(ValueError, match="bucket_mb"):
        BucketedDataParallel(build_model(), bucket_mb=0)


def test_bucketed_layout_and_gradients_on_one_rank(world1):
    plain, wrapped = build_model(seed=3), BucketedDataParallel(build_model(seed=3), bucket_mb=0.004)
    params = list(wrapped.module.parameters())
    # buckets hold the parameters last-first, each closed once it reaches 4 KiB
    assert [q for b in wrapped.buckets for q in b] == params[::-1]
    sizes = [sum(q.numel() * 4 for q in b) for b in wrapped.buckets]
    assert all(s >= 0.004 * 2**20 for s in sizes[:-1]) and len(sizes) == 2
    x, y = global_batch(0, 16, data=load_arrays("digits"))
    for net in (plain, wrapped):
        nn.functional.cross_entropy(net(x), y).backward()
    assert len([e for e in wrapped.events if e["event"] == "launch"]) == 2  # launched inside backward
    wrapped.finish_gradient_sync()
    torch.testing.assert_close(_grad_vector(wrapped.module), _grad_vector(plain))
    with pytest.raises(RuntimeError, match="after backward"):
        wrapped.finish_gradient_sync()
    wrapped.remove_hooks()


def test_step_timing_runs_on_one_rank(world1):
    out = step_timing(batch_size=8, hidden=(16,), repeats=1, sizes_mb=(0.01,), thread_counts=(1,),
                      data=load_arrays("digits"))
    for key in ("compute", "optimizer", "comm", "naive_step", "ddp_step", "bucketed_step"):
        assert out[key] > 0
    assert out["sweep"] == [] and out["world_size"] == 1 and set(out["by_threads"]) == {1}
    assert out["grad_bytes"] == sum(out["tensor_bytes"]) == 4 * sum(q.numel() for q in build_model(hidden=(16,)).parameters())


def test_bad_modes_steps_and_batches():
    with pytest.raises(ValueError, match="modes"):
        dp_equivalence(["zero"])
    with pytest.raises(ValueError, match="steps"):
        train_single_process(steps=0)
    with pytest.raises(ValueError, match="batch_size"):
        global_batch(0, 0, data=(torch.zeros(4, 1), torch.zeros(4)))
    with pytest.raises(ValueError, match="step"):
        global_batch(-1, 2, data=(torch.zeros(4, 1), torch.zeros(4)))
    with pytest.raises(TypeError, match="model"):
        wrap_ddp("net")


def test_global_batch_wraps_around():
    data = (torch.arange(10.0).reshape(10, 1), torch.arange(10))
    x, y = global_batch(2, 4, data=data)
    assert y.tolist() == [8, 9, 0, 1] and x[:, 0].tolist() == [8.0, 9.0, 0.0, 1.0]


@pytest.mark.dist
def test_data_parallel_equals_single_process_in_every_mode():
    data = load_arrays("digits")
    kwargs = {"steps": 4, "batch_size": 32, "data": data}
    timing = {"batch_size": 16, "hidden": (64, 32), "repeats": 2, "sizes_mb": (0.01, 0.05), "bucket_mb": 0.004,
              "data": data}
    per_rank = launch(run_each, 2, [(dp_equivalence, kwargs), (step_timing, timing)], timeout=180)
    reference, losses = train_single_process(**kwargs)
    equiv = per_rank[0][0]
    assert set(equiv) == set(MODES)
    for mode, r in equiv.items():
        torch.testing.assert_close(r["params"], reference, rtol=0, atol=1e-5, msg=mode)
        assert r["rank_spread"] == 0.0, mode
        assert r["losses"] == pytest.approx(losses, abs=1e-5), mode
        torch.testing.assert_close(per_rank[1][0][mode]["params"], r["params"], rtol=0, atol=0)
    n_tensors = len(list(build_model().parameters()))
    assert equiv["naive"]["allreduce_calls"] == equiv["ring"]["allreduce_calls"] == 4 * n_tensors
    assert equiv["bucketed"]["allreduce_calls"] == 4 * 2  # two 4 KiB buckets per step
    assert equiv["ddp_no_sync"]["allreduce_calls"] < equiv["ddp_accumulate"]["allreduce_calls"]

    t = per_rank[0][1]
    assert t["world_size"] == 2 and t["local_batch"] == 8
    assert {r["bytes"] for r in t["sweep"]} == {int(0.01 * 2**20) // 4 * 4, int(0.05 * 2**20) // 4 * 4}
    ours = t["timeline_ours"]
    launches = [e for e in ours["events"] if e["event"] == "launch"]
    assert len(launches) == 2 and launches[0]["t"] < ours["backward_end"]  # sent while backward still ran
    assert ours["step_end"] >= ours["backward_end"]
