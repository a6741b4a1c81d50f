"""labkit.metrics: sizes, FLOPs and latency rows, checked against formulas and files."""

from __future__ import annotations

import pytest
import torch

from labkit import metrics as Mx
from labkit.models import MLP, SmallCNN


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
