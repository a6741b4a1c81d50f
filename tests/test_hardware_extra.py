"""labkit.hardware additions for lesson 01: roofline formula, one training step per device, the
synchronization pitfall, and devices.synchronize on XLA. Checked against hand-worked values, a
manual SGD step, and a fake asynchronous device."""

from __future__ import annotations

import threading
import time
import types

import pytest
import torch
from torch import nn

from labkit import devices as D
from labkit import hardware as B
from labkit import train
from labkit.models import MLP, SmallCNN

# --- roofline -------------------------------------------------------------------------------------


def test_attainable_gflops_worked_example():
    # peak 100 GFLOP/s, 10 GB/s: ridge at 10 FLOP/byte
    assert B.attainable_gflops(0.125, 100.0, 10.0) == pytest.approx(1.25)  # x + 1 in fp32: memory-bound
    assert B.attainable_gflops(10.0, 100.0, 10.0) == pytest.approx(100.0)  # exactly at the ridge
    assert B.attainable_gflops(170.0, 100.0, 10.0) == pytest.approx(100.0)  # big matmul: compute-bound


@pytest.mark.parametrize("args", [(0, 1, 1), (1, -1, 1), (1, 1, 0)])
def test_attainable_gflops_bad_input(args):
    with pytest.raises(ValueError, match="must be a number > 0"):
        B.attainable_gflops(*args)
    with pytest.raises(TypeError):
        B.attainable_gflops("1", 1, 1)


def test_matmul_gflops_keeps_its_output_correct():
    # matmul_gflops writes into a preallocated output (so lazy XLA tensors execute); the formula holds
    row = B.matmul_gflops(32, dtype=torch.bfloat16, min_run_time=0.01)
    assert row["dtype"] == "bfloat16" and row["gflops"] == pytest.approx(2 * 32**3 / row["seconds"] / 1e9)
    assert row["intensity"] == pytest.approx(2 * 32**3 / (3 * 32 * 32 * 2))


# --- one training step ----------------------------------------------------------------------------


def _batch(gen, model, n=8):
    (x,) = model.example_inputs(n, generator=gen)
    return x, torch.randint(10, (n,), generator=gen)


def test_train_step_matches_a_manual_sgd_step(gen):
    torch.manual_seed(0)
    model = MLP(hidden=(16,))
    x, y = _batch(gen, model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    step = train.make_train_step(model, x, y, device="cpu", lr=0.1)
    loss = step()
    # reference: the same step by hand on the original weights
    ref = MLP(hidden=(16,))
    ref.load_state_dict(before)
    ref_loss = nn.functional.cross_entropy(ref(x), y)
    ref_loss.backward()
    with torch.no_grad():
        expected = {n: p - 0.1 * p.grad for n, p in ref.named_parameters()}
    assert loss.item() == pytest.approx(ref_loss.item(), rel=1e-6)
    for name, p in step.model.named_parameters():
        torch.testing.assert_close(p.detach(), expected[name])
    # the caller's model did not move
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])


def test_train_steps_reduce_the_loss(gen):
    torch.manual_seed(0)
    model = MLP(hidden=(32,))
    x, y = _batch(gen, model, 16)
    step = train.make_train_step(model, (x,), y, lr=0.1)
    first = step().item()
    for _ in range(30):
        last = step().item()
    assert last < first / 2


def test_train_step_bf16_autocast_is_close_to_fp32(gen):
    torch.manual_seed(0)
    model = MLP(hidden=(32,))
    x, y = _batch(gen, model)
    fp32 = train.make_train_step(model, x, y)().item()
    bf16 = train.make_train_step(model, x, y, autocast_dtype=torch.bfloat16)().item()
    assert bf16 == pytest.approx(fp32, rel=0.05)


@pytest.mark.parametrize("kwargs, err, match", [
    ({"model": "mlp"}, TypeError, "model must be an nn.Module"),
    ({"inputs": [1, 2]}, TypeError, "inputs must be a tensor"),
    ({"targets": torch.zeros(8)}, TypeError, "int64"),
    ({"targets": torch.zeros(3, dtype=torch.int64)}, ValueError, "3 labels"),
    ({"lr": 0.0}, ValueError, "lr must be a number > 0"),
    ({"autocast_dtype": torch.int8}, TypeError, "autocast_dtype"),
    ({"device": "tpu"}, ValueError, "not a device name"),
])
def test_make_train_step_bad_input(gen, kwargs, err, match):
    model = MLP(hidden=(4,))
    x, y = _batch(gen, model)
    args = {"model": model, "inputs": x, "targets": y, **kwargs}
    with pytest.raises(err, match=match):
        train.make_train_step(args.pop("model"), args.pop("inputs"), args.pop("targets"), **args)


def test_time_train_step_and_by_device(gen):
    model = SmallCNN(widths=(4,))
    mode_before = model.training
    x, y = _batch(gen, model, 4)
    t = B.time_train_step(model, x, y, min_run_time=0.01)
    assert t.median > 0 and "train step on cpu" in t.label
    rows = B.train_step_by_device(model, batch_size=4, devices=["cpu"], min_run_time=0.01, generator=gen)
    assert [r["device"] for r in rows] == ["cpu"]
    r = rows[0]
    assert r["speedup"] == 1.0 and r["samples_per_s"] == pytest.approx(4 / (r["ms"] / 1e3))
    assert model.training == mode_before  # the probe ran on a copy


def test_train_step_by_device_bad_input(monkeypatch):
    with pytest.raises(TypeError, match="example_inputs"):
        B.train_step_by_device(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="devices must not be empty"):
        B.train_step_by_device(MLP(hidden=(4,)), devices=[])
    monkeypatch.setattr(D, "available_devices", lambda: ["cpu"])  # a machine with only a CPU
    with pytest.raises(ValueError, match="not available"):
        B.train_step_by_device(MLP(hidden=(4,)), devices=["cuda:0"], min_run_time=0.01)


# --- the synchronization pitfall -----------------------------------------------------------------


def test_sync_pitfall_on_a_fake_asynchronous_device(monkeypatch):
    """A fake device whose 'kernels' run in background threads: only synchronize waits for them."""
    pending: list[threading.Thread] = []

    def launch():  # queues 30 ms of work and returns at once, like a CUDA kernel launch
        t = threading.Thread(target=time.sleep, args=(0.03,))
        t.start()
        pending.append(t)

    def sync(dev):
        while pending:
            pending.pop().join()

    monkeypatch.setattr(B, "synchronize", sync)
    r = B.sync_pitfall(launch, device="cpu", repeats=3)
    assert r["synced_s"] >= 0.03 / 3  # at least one 30 ms kernel over 3 calls
    assert r["unsynced_s"] < r["synced_s"] and r["ratio"] > 1
    assert not pending


def test_sync_pitfall_counts_synchronizations(monkeypatch):
    calls = []
    monkeypatch.setattr(B, "synchronize", lambda dev: calls.append(dev))
    r = B.sync_pitfall(lambda: None, device="cpu", repeats=4)
    assert len(calls) == 3 and r["repeats"] == 4 and r["device"] == "cpu"  # warm-up, drain, the right one


def test_sync_pitfall_bad_input():
    with pytest.raises(TypeError, match="fn must be callable"):
        B.sync_pitfall(3)
    with pytest.raises(ValueError, match="repeats"):
        B.sync_pitfall(lambda: None, repeats=0)


def test_xla_synchronize_cuts_the_lazy_graph_before_waiting(monkeypatch):
    """Lazy XLA tensors only run at a step boundary: synchronize must mark_step, then wait."""
    calls = []
    xm = types.SimpleNamespace(xla_device=lambda: "xla:0", mark_step=lambda: calls.append("mark_step"),
                               wait_device_ops=lambda: calls.append("wait"))
    monkeypatch.setattr(D, "_xla_module", lambda: xm)
    D.synchronize("xla:0")
    assert calls == ["mark_step", "wait"]
