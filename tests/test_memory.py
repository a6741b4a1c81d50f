"""labkit.efficiency.memory: byte counts checked by hand, checkpointing and accumulation checked against plain runs."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint_sequential

from labkit.efficiency.memory import (
    CheckpointedSequential,
    SavedTensorMeter,
    accumulation_step,
    checkpoint_sweep,
    current_rss_bytes,
    gradient_bytes,
    measure_peak,
    optimizer_state_bytes,
    parameter_bytes,
    peak_rss_bytes,
    saved_activation_bytes,
    training_memory,
)
from labkit.models import MLP


def deep(depth=6, width=16, classes=5):
    torch.manual_seed(0)
    return MLP((width,), hidden=(width,) * depth, num_classes=classes)


def test_saved_activations_hand_count():
    # Flatten -> [Linear -> ReLU] x 6 -> Linear. Autograd keeps the input of the first Linear,
    # each ReLU output (shared with the next Linear's input): 7 storages of batch x width floats.
    model, x = deep(), torch.randn(8, 16)
    assert saved_activation_bytes(model, x) == 7 * 8 * 16 * 4
    with SavedTensorMeter(exclude=model.parameters()) as m:
        model(x)
    assert m.count == 7
    # weights the Linears save to pass the gradient back to their input: 5 of 16x16 and the 5x16 head;
    # the first Linear's input needs no gradient, so its weight is not saved
    assert m.parameter_bytes == (5 * 16 * 16 + 5 * 16) * 4
    with pytest.raises(ValueError, match="input"):
        saved_activation_bytes(model)


def test_checkpointing_matches_pytorch_and_plain_gradients():
    model, x = deep(depth=8), torch.randn(8, 16)
    y = torch.randint(0, 5, (8,))
    ck = CheckpointedSequential(copy.deepcopy(model.layers), 3)
    loss_plain = nn.functional.cross_entropy(model(x), y)
    loss_plain.backward()
    loss_ck = nn.functional.cross_entropy(ck(x), y)
    loss_ck.backward()
    torch.testing.assert_close(loss_ck, loss_plain)
    for a, b in zip(model.parameters(), ck.parameters()):
        torch.testing.assert_close(a.grad, b.grad)
    ours = saved_activation_bytes(ck, x)
    with SavedTensorMeter(exclude=model.parameters()) as ref:
        checkpoint_sequential(model.layers, 3, x, use_reentrant=False)
    assert ours == ref.activation_bytes
    assert ours < saved_activation_bytes(model, x)


def test_checkpoint_boundaries_cover_every_module():
    ck = CheckpointedSequential(nn.Sequential(*[nn.ReLU() for _ in range(10)]), 3)
    assert ck.boundaries() == [(0, 3), (3, 6), (6, 10)]
    assert CheckpointedSequential(nn.Sequential(nn.ReLU()), 1).boundaries() == [(0, 1)]


def test_checkpointed_runs_plainly_in_eval():
    model, x = deep(), torch.randn(4, 16)
    ck = CheckpointedSequential(model.layers, 2).eval()
    assert saved_activation_bytes(ck, x) == saved_activation_bytes(model.eval(), x)
    with torch.no_grad():
        torch.testing.assert_close(ck(x), model(x))


def test_checkpoint_bad_arguments():
    with pytest.raises(ValueError, match="segments"):
        CheckpointedSequential(nn.Sequential(nn.ReLU(), nn.ReLU()), 3)
    with pytest.raises(ValueError, match="segments"):
        CheckpointedSequential(nn.Sequential(nn.ReLU()), 0)
    with pytest.raises(TypeError, match="sequential"):
        CheckpointedSequential(nn.ReLU(), 1)


@pytest.mark.parametrize("name,copies", [("sgd", 0), ("momentum", 1), ("adam", 2)])
def test_training_memory_optimizer_state(name, copies):
    model, x = deep(), torch.randn(8, 16)
    y = torch.randint(0, 5, (8,))
    opt = {"sgd": lambda p: torch.optim.SGD(p, lr=0.1), "momentum": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9),
           "adam": lambda p: torch.optim.Adam(p)}[name](model.parameters())
    got = training_memory(model, opt, x, y)
    p = sum(t.numel() for t in model.parameters()) * 4
    assert got["parameters"] == p == parameter_bytes(model)
    assert got["gradients"] == p == gradient_bytes(model)
    n_tensors = len(list(model.parameters()))
    extra = 4 * n_tensors if name == "adam" else 0  # Adam's step counters: one float32 scalar each
    assert got["optimizer_state"] == copies * p + extra == optimizer_state_bytes(opt)
    assert got["activations"] == saved_activation_bytes(model, x, loss_fn=lambda out: nn.functional.cross_entropy(out, y))


@pytest.mark.parametrize("k", [1, 2, 3, 7])
def test_accumulation_equals_one_big_batch(k):
    model, x = deep(), torch.randn(14, 16)
    y = torch.randint(0, 5, (14,))
    twin = copy.deepcopy(model)
    big = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    acc = torch.optim.SGD(twin.parameters(), lr=0.5, momentum=0.9)
    for _ in range(2):
        big.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        big.step()
        acc_loss = accumulation_step(twin, acc, x, y, micro_batches=k)
        assert acc_loss == pytest.approx(float(loss.detach()), rel=1e-5)  # the whole batch's mean loss before the step
    for a, b in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_accumulation_bad_counts():
    model, x, y = deep(), torch.randn(4, 16), torch.randint(0, 5, (4,))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="micro_batches must be positive"):
        accumulation_step(model, opt, x, y, micro_batches=0)
    with pytest.raises(ValueError, match="micro_batches must be positive"):
        accumulation_step(model, opt, x, y, micro_batches=-2)
    with pytest.raises(TypeError, match="micro_batches"):
        accumulation_step(model, opt, x, y, micro_batches=2.0)
    with pytest.raises(ValueError, match="more than the batch"):
        accumulation_step(model, opt, x, y, micro_batches=5)
    with pytest.raises(ValueError, match="rows"):
        accumulation_step(model, opt, x, y[:3], micro_batches=2)


def test_rss_sees_a_big_allocation():
    before = current_rss_bytes()
    block = torch.ones(64 << 20, dtype=torch.uint8)  # 64 MiB, written so its pages are resident
    assert current_rss_bytes() - before >= 48 << 20
    assert peak_rss_bytes() >= current_rss_bytes() - (4 << 20)
    del block
    out = measure_peak(lambda: torch.ones(32 << 20, dtype=torch.uint8).sum(), interval=0.0005)
    assert out["method"] == "sampled process RSS" and out["peak_bytes"] >= 0
    with pytest.raises(TypeError, match="fn"):
        measure_peak(3)
    with pytest.raises(ValueError, match="interval"):
        measure_peak(lambda: None, interval=0)


def test_measure_peak_uses_cuda_stats(monkeypatch):
    calls = {}
    monkeypatch.setattr(torch.cuda, "synchronize", lambda dev=None: None)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda dev=None: calls.setdefault("reset", True))
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda dev=None: 1000)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda dev=None: 5000)
    out = measure_peak(lambda: None, device="cuda:0")
    assert out == {"peak_bytes": 4000, "method": "torch.cuda.max_memory_allocated"} and calls["reset"]


def test_bad_model_arguments():
    with pytest.raises(TypeError, match="model"):
        parameter_bytes("net")
    with pytest.raises(TypeError, match="optimizer"):
        optimizer_state_bytes("adam")


def test_checkpoint_sweep_rows():
    model, x = deep(depth=8), torch.randn(8, 16)
    y = torch.randint(0, 5, (8,))
    out = checkpoint_sweep(model.layers, x, y, [2, 4], rounds=1, min_run_time=0.01)
    assert out["plain"]["bytes"] == saved_activation_bytes(model, x)
    assert [p["segments"] for p in out["points"]] == [2, 4]
    for p in out["points"]:
        assert p["bytes"] == saved_activation_bytes(CheckpointedSequential(model.layers, p["segments"]), x)
        assert p["memory_ratio"] == p["bytes"] / out["plain"]["bytes"] < 1
        assert p["time_ratio"] == pytest.approx(p["seconds"] / out["plain"]["seconds"])
    assert all(prm.grad is None for prm in model.parameters())  # the sweep leaves no gradients behind
    with pytest.raises(ValueError, match="segments"):
        checkpoint_sweep(model.layers, x, y, [])
    with pytest.raises(TypeError, match="sequential"):
        checkpoint_sweep(model, x, y, [2])
