"""labkit.compress: BN folding is exact, ONNX int8 weights match labkit's, the accounting is right."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from labkit.compress import (
    Step,
    compressed_size,
    fold_batchnorm,
    format_table,
    measure_steps,
    onnx_with_int8_weights,
    pareto_front,
    step_gains,
    strip_onnx_metadata,
)
from labkit.metrics import size_on_disk
from labkit.models import MLP, SmallCNN


def _trained_bn_cnn(gen):
    """A SmallCNN whose BatchNorms hold non-trivial statistics and affine parameters."""
    model = SmallCNN((1, 12, 12), widths=(4, 6), num_classes=3)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5, generator=gen)
                m.running_var.uniform_(0.5, 2.0, generator=gen)
                m.weight.uniform_(0.5, 1.5, generator=gen)
                m.bias.uniform_(-0.2, 0.2, generator=gen)
    return model.eval()


def test_fold_batchnorm_is_exact_and_smaller(gen):
    model = _trained_bn_cnn(gen)
    x = torch.rand(5, 1, 12, 12, generator=gen)
    folded = fold_batchnorm(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())  # the original is untouched
    assert torch.allclose(folded(x), model(x), atol=1e-5)
    assert size_on_disk(folded) < size_on_disk(model)


def test_fold_batchnorm_hand_worked():
    """One channel: conv weight 2, bias 1; BN mean 3, var 4 (eps 0), gamma 0.5, beta 1 ->
    w' = 2 * 0.5 / 2 = 0.5, b' = (1 - 3) * 0.5 / 2 + 1 = 0.5."""
    conv = nn.Conv2d(1, 1, 1)
    bn = nn.BatchNorm2d(1, eps=0.0)
    with torch.no_grad():
        conv.weight.fill_(2.0)
        conv.bias.fill_(1.0)
        bn.running_mean.fill_(3.0)
        bn.running_var.fill_(4.0)
        bn.weight.fill_(0.5)
        bn.bias.fill_(1.0)
    folded = fold_batchnorm(nn.Sequential(conv, bn))
    assert folded[0].weight.item() == pytest.approx(0.5) and folded[0].bias.item() == pytest.approx(0.5)
    assert isinstance(folded[1], nn.Identity)


def test_fold_batchnorm_bad_input():
    with pytest.raises(TypeError, match="model"):
        fold_batchnorm("cnn")
    with pytest.raises(ValueError, match="no Conv2d"):
        fold_batchnorm(MLP((1, 4, 4), hidden=(3,), num_classes=2))
    with pytest.raises(ValueError, match="running statistics"):
        fold_batchnorm(nn.Sequential(nn.Conv2d(1, 1, 1), nn.BatchNorm2d(1, track_running_stats=False)))


def test_compressed_size(tmp_path, gen):
    zeros = nn.Linear(256, 256)
    with torch.no_grad():
        zeros.weight.zero_()
    noisy = nn.Linear(256, 256)
    assert compressed_size(zeros) < 0.1 * size_on_disk(zeros)  # zeros compress away
    assert compressed_size(noisy) > 0.7 * size_on_disk(noisy)  # random floats hardly compress
    p = tmp_path / "w.bin"
    p.write_bytes(bytes(1000))
    assert compressed_size(p) < 200
    assert compressed_size(zeros.state_dict()) == compressed_size(zeros)
    with pytest.raises(TypeError, match="nn.Module"):
        compressed_size(3)
    with pytest.raises(ValueError, match="no such file"):
        compressed_size(tmp_path / "missing.bin")
    with pytest.raises(ValueError, match="preset"):
        compressed_size(zeros, preset=10)


@pytest.mark.slow
def test_onnx_int8_weights_match_labkit_and_shrink(tmp_path, gen):
    from labkit.export import OnnxModule, export, run_onnx
    from labkit.quantize import WeightOnlyConfig, quantize_

    model = fold_batchnorm(_trained_bn_cnn(gen))
    x = torch.rand(7, 1, 12, 12, generator=gen)
    float_path = strip_onnx_metadata(export(model, model.example_inputs(2), tmp_path / "f.onnx"))
    q = quantize_(copy.deepcopy(model), WeightOnlyConfig(bits=8))
    int8_path = onnx_with_int8_weights(float_path, q, tmp_path / "q.onnx")
    with torch.no_grad():
        ref, qout = model(x), q(x)
    got = run_onnx(int8_path, x)
    assert torch.allclose(got, qout, atol=1e-5)  # ORT computes exactly labkit's int8 model
    assert not torch.allclose(got, ref, atol=1e-6)  # ... which is not the float model
    assert int8_path.stat().st_size < float_path.stat().st_size
    assert OnnxModule(int8_path)(x).shape == (7, 3)


@pytest.mark.slow
def test_onnx_int8_weights_bad_input(tmp_path, gen):
    from labkit.export import export
    from labkit.quantize import WeightOnlyConfig, quantize_

    model = fold_batchnorm(_trained_bn_cnn(gen))
    path = export(model, model.example_inputs(2), tmp_path / "f.onnx")
    with pytest.raises(ValueError, match="labkit-quantized"):
        onnx_with_int8_weights(path, model, tmp_path / "q.onnx")
    q4 = quantize_(copy.deepcopy(model), WeightOnlyConfig(bits=4))
    with pytest.raises(ValueError, match="8-bit"):
        onnx_with_int8_weights(path, q4, tmp_path / "q.onnx")
    other = quantize_(SmallCNN((1, 12, 12), widths=(4, 6, 6), num_classes=3), WeightOnlyConfig())
    with pytest.raises(ValueError, match="initializer|shape"):
        onnx_with_int8_weights(path, other, tmp_path / "q.onnx")
    q = quantize_(copy.deepcopy(model), WeightOnlyConfig())
    with pytest.raises(ValueError, match=".onnx"):
        onnx_with_int8_weights(path, q, tmp_path / "q.bin")
    with pytest.raises(ValueError, match="no such file"):
        onnx_with_int8_weights(tmp_path / "missing.onnx", q, tmp_path / "q.onnx")
    with pytest.raises(ValueError, match="no such file"):
        strip_onnx_metadata(tmp_path / "missing.onnx")


@pytest.mark.slow
def test_strip_metadata_keeps_outputs(tmp_path, gen):
    from labkit.export import export, run_onnx

    model = fold_batchnorm(_trained_bn_cnn(gen))
    x = torch.rand(3, 1, 12, 12, generator=gen)
    path = export(model, model.example_inputs(2), tmp_path / "f.onnx")
    before = path.stat().st_size
    out = strip_onnx_metadata(path, tmp_path / "s.onnx")
    assert out.stat().st_size <= before
    assert torch.allclose(run_onnx(out, x), run_onnx(path, x))


def test_measure_steps_rows(gen):
    big = SmallCNN((1, 12, 12), widths=(8, 16), num_classes=3).eval()
    small = SmallCNN((1, 12, 12), widths=(2, 4), num_classes=3).eval()
    x = torch.rand(4, 1, 12, 12, generator=gen)
    data = [(x, torch.tensor([0, 1, 2, 0]))]
    rows = measure_steps([Step("big", big), Step("small", small, reference=small, note="n")], x, data=data,
                         rounds=1, min_run_time=0.01)
    assert [r["step"] for r in rows] == ["big", "small"]
    assert rows[0]["params"] == sum(p.numel() for p in big.parameters())
    assert rows[0]["x_smaller"] == 1.0 and rows[1]["x_smaller"] == pytest.approx(rows[0]["size_kb"] / rows[1]["size_kb"])
    assert rows[0]["size_kb"] == size_on_disk(big) / 1e3
    assert rows[1]["mflops"] < rows[0]["mflops"] and rows[0]["speedup"] == 1.0
    assert 0.0 <= rows[1]["accuracy"] <= 1.0 and rows[1]["note"] == "n"
    assert "big" in format_table(rows) and "x_smaller" in format_table(rows)
    with pytest.raises(TypeError, match="Step"):
        measure_steps([big], x)
    with pytest.raises(ValueError, match="unique"):
        measure_steps([Step("a", big), Step("a", small)], x)


def test_step_validation(tmp_path):
    with pytest.raises(ValueError, match="name must be a non-empty str"):
        Step("", nn.Linear(2, 2))
    with pytest.raises(TypeError, match="name must be a str"):
        Step(None, nn.Linear(2, 2))
    with pytest.raises(TypeError, match="model"):
        Step("a", "model")
    with pytest.raises(TypeError, match="reference"):
        Step("a", nn.Linear(2, 2), reference=3)
    with pytest.raises(ValueError, match="no such file"):
        Step("a", nn.Linear(2, 2), path=tmp_path / "missing.onnx")
    p = tmp_path / "m.onnx"
    p.write_bytes(bytes(123))
    assert Step("a", nn.Linear(2, 2), path=p).size_bytes() == 123


def test_step_gains_and_pareto():
    rows = [{"step": "teacher", "size_kb": 200.0, "latency_ms": 10.0, "mflops": 8.0, "accuracy": 0.97},
            {"step": "student", "size_kb": 80.0, "latency_ms": 4.0, "mflops": 3.0, "accuracy": 0.975},
            {"step": "pruned", "size_kb": 20.0, "latency_ms": 2.0, "mflops": 1.0, "accuracy": 0.96},
            {"step": "bad", "size_kb": 90.0, "latency_ms": 5.0, "mflops": 1.0, "accuracy": 0.95}]
    gains = step_gains(rows)
    assert gains[0]["smaller_x"] == 2.5 and gains[0]["faster_x"] == 2.5 and gains[0]["accuracy_pts"] == pytest.approx(0.5)
    assert gains[1]["fewer_flops_x"] == 3.0
    assert pareto_front(rows, x="latency_ms") == ["student", "pruned"]  # the teacher is beaten on both
    assert pareto_front(rows, x="size_kb") == ["student", "pruned"]
    with pytest.raises(ValueError, match="two rows"):
        step_gains(rows[:1])
    with pytest.raises(ValueError, match="needs"):
        pareto_front([{"step": "a"}], x="size_kb")
    with pytest.raises(ValueError, match="empty"):
        pareto_front([], x="size_kb")
    assert math.isclose(gains[2]["accuracy_pts"], -1.0)


def test_evaluate_handles_a_model_without_parameters(gen):
    """labkit's int8 layers hold only buffers: evaluate() must still find the device (the CPU)."""
    from labkit.quantize import WeightOnlyConfig, quantize_
    from labkit.train import evaluate

    model = fold_batchnorm(_trained_bn_cnn(gen))
    q = quantize_(copy.deepcopy(model), WeightOnlyConfig())
    assert not list(q.parameters())
    x = torch.rand(6, 1, 12, 12, generator=gen)
    y = model(x).argmax(1)
    assert evaluate(q, [(x, y)])["accuracy"] > 0.8  # int8 weights: (nearly) the float model's answers


@pytest.mark.slow
def test_load_int8_weight_onnx_folds_dequantize_and_keeps_outputs(tmp_path, gen):
    from labkit.compress import load_int8_weight_onnx
    from labkit.export import OnnxModule, export
    from labkit.quantize import WeightOnlyConfig, quantize_

    model = fold_batchnorm(_trained_bn_cnn(gen))
    q = quantize_(copy.deepcopy(model), WeightOnlyConfig())
    path = onnx_with_int8_weights(export(model, model.example_inputs(2), tmp_path / "f.onnx"), q, tmp_path / "q.onnx")
    x = torch.rand(5, 1, 12, 12, generator=gen)
    folded_at_load = load_int8_weight_onnx(path, threads=1)
    assert folded_at_load.session.get_session_options().get_session_config_entry("session.disable_quant_qdq") == "1"
    assert torch.allclose(folded_at_load(x), OnnxModule(path, threads=1)(x), atol=1e-6)
    assert torch.allclose(folded_at_load(x), q(x), atol=1e-5)
    assert folded_at_load.size_bytes == path.stat().st_size
    with pytest.raises(ValueError, match="no such file"):
        load_int8_weight_onnx(tmp_path / "missing.onnx")
