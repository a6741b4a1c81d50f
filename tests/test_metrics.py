"""labkit.metrics: sizes, FLOPs and latency rows, checked against formulas and files."""

from __future__ import annotations

import pytest
import torch

from labkit import metrics as Mx
from labkit import timing
from labkit.metrics import tensor_bytes
from labkit.models import MLP, SmallCNN
from labkit.timing import Timing


def test_size_on_disk_tracks_parameter_bytes(tmp_path):
    m = MLP((256,), hidden=(256,), num_classes=10)
    params = sum(p.numel() for p in m.parameters())
    size = Mx.size_on_disk(m)
    assert params * 4 <= size < params * 4 * 1.1 + 4096  # float32 data plus a little pickle overhead
    assert Mx.size_on_disk(m, path=tmp_path / "m.pt") == Mx.file_size(tmp_path / "m.pt")
    assert Mx.size_on_disk(m.half().state_dict()) < size * 0.6


def test_flops_uses_example_inputs():
    m = MLP((8,), hidden=(4,), num_classes=2)
    assert Mx.flops(m) == 2 * (8 * 4 + 4 * 2)
    cnn = SmallCNN((1, 8, 8), widths=(4,))
    conv = 2 * 4 * 8 * 8 * (1 * 3 * 3)
    assert Mx.flops(cnn, torch.rand(1, 1, 8, 8)) == conv + 2 * (4 * 4 * 4) * 10


def test_model_report_row():
    m = MLP((16,), hidden=(8,))
    row = Mx.model_report("mlp", m, m.example_inputs(4), accuracy=0.5, min_run_time=0.02)
    assert row["model"] == "mlp" and row["params"] == 16 * 8 + 8 + 8 * 10 + 10
    assert row["latency_ms"] > 0 and row["mflops"] > 0 and row["accuracy"] == 0.5


def test_bad_input(tmp_path):
    with pytest.raises(TypeError):
        Mx.size_on_disk([1, 2])
    with pytest.raises(ValueError, match="no such file"):
        Mx.file_size(tmp_path / "missing.onnx")
    with pytest.raises(ValueError, match="example_inputs"):
        Mx.flops(torch.nn.Linear(2, 2))
    with pytest.raises(TypeError):
        Mx.latency("model", torch.zeros(1))
    assert Mx.temp_path(".onnx").suffix == ".onnx"


def test_compare_latency_takes_medians_of_alternating_rounds(monkeypatch):
    a, b = MLP((4,), hidden=(2,)), MLP((4,), hidden=(3,))
    seconds = {"a": iter([0.010, 0.030, 0.012]), "b": iter([0.005, 0.010, 0.004])}  # round 2 was noisy
    calls = []

    def fake_time_fn(fn, *, label, **kwargs):
        calls.append(label)
        return Timing(label, next(seconds[label]), 0.0, 0.0, 1, 1)

    monkeypatch.setattr(timing, "time_fn", fake_time_fn)
    out = Mx.compare_latency({"a": a, "b": b}, torch.rand(2, 4), rounds=3)
    assert calls == ["a", "b"] * 3  # alternating rounds
    assert out["a"] == {"latency_ms": pytest.approx(12.0), "speedup": pytest.approx(1.0)}
    assert out["b"]["latency_ms"] == pytest.approx(5.0)
    assert out["b"]["speedup"] == pytest.approx(3.0)  # median of 2, 3, 3


def test_compare_latency_bad_input():
    m = MLP((4,), hidden=(2,))
    with pytest.raises(ValueError, match="models"):
        Mx.compare_latency({}, torch.rand(1, 4))
    with pytest.raises(ValueError, match="rounds"):
        Mx.compare_latency({"m": m}, torch.rand(1, 4), rounds=0)
    with pytest.raises(TypeError, match="model"):
        Mx.compare_latency({"m": "not a model"}, torch.rand(1, 4))


def test_tensor_bytes_counts_storages_once():
    a = torch.zeros(10, 10)
    assert tensor_bytes([a, a.t(), a[2:5], a.view(-1)]) == 400
    assert tensor_bytes([a, torch.zeros(3, dtype=torch.float64)]) == 424
    with pytest.raises(TypeError, match="tensors"):
        tensor_bytes([a, 3])
