"""labkit.export: ONNX export + ONNX Runtime give PyTorch's outputs; ORT int8 is smaller and close."""

import pytest
import torch
from torch import nn

from labkit.compress import fold_batchnorm
from labkit.data import load_dataset, make_loader
from labkit.export import (
    OnnxModule,
    compare,
    export,
    onnx_session,
    quantize_onnx,
    quantize_onnx_static,
    run_onnx,
    runtime_ops,
)
from labkit.metrics import file_size
from labkit.models import MLP, SmallCNN
from labkit.train import evaluate

pytestmark = pytest.mark.slow  # each export traces the model with torch.export (seconds)


@pytest.fixture(scope="module")
def mlp_onnx(tmp_path_factory):
    torch.manual_seed(0)
    model = MLP(hidden=(256, 128)).eval()
    path = export(model, model.example_inputs(1), tmp_path_factory.mktemp("onnx") / "mlp.onnx")
    return model, path


@torch.no_grad()
def test_onnx_matches_torch_with_any_batch(mlp_onnx, gen):
    model, path = mlp_onnx
    assert not path.with_suffix(".onnx.data").exists()  # weights inside the file
    assert file_size(path) > 4 * sum(p.numel() for p in model.parameters()) * 0.99
    for batch in (1, 7):
        x = torch.rand(batch, 1, 28, 28, generator=gen)
        out = run_onnx(path, x)
        assert out.shape == (batch, 10)
        c = compare(model(x), out)
        assert c["allclose"] and c["max_abs_diff"] < 1e-4 and c["same_argmax"] == 1.0


@torch.no_grad()
def test_cnn_with_batchnorm(tmp_path, gen):
    model = SmallCNN(widths=(4, 8)).eval()
    path = export(model, model.example_inputs(2), tmp_path / "cnn.onnx")
    x = torch.rand(3, 1, 28, 28, generator=gen)
    assert compare(model(x), run_onnx(onnx_session(path), x))["allclose"]


@torch.no_grad()
def test_ort_dynamic_int8_is_smaller_and_close(mlp_onnx, tmp_path, gen):
    model, path = mlp_onnx
    q = quantize_onnx(path, tmp_path / "mlp.int8.onnx")
    assert file_size(path) / file_size(q) > 3.5
    x = torch.rand(32, 1, 28, 28, generator=gen)
    ref = model(x)
    c = compare(ref, run_onnx(q, x))
    assert c["max_abs_diff"] < 0.02 * float(ref.abs().max()) and c["same_argmax"] >= 0.9
    per_channel = quantize_onnx(path, tmp_path / "mlp.int8pc.onnx", per_channel=True)
    assert compare(ref, run_onnx(per_channel, x))["max_abs_diff"] < 0.02 * float(ref.abs().max())


@torch.no_grad()
def test_ort_static_qdq_really_computes_in_int8(tmp_path, gen):
    torch.manual_seed(0)
    model = fold_batchnorm(SmallCNN(widths=(4, 8)).eval())
    path = export(model, model.example_inputs(2), tmp_path / "cnn.onnx")
    calibration = [torch.rand(16, 1, 28, 28, generator=gen) for _ in range(3)]
    static = quantize_onnx_static(path, tmp_path / "cnn.qdq.onnx", calibration)
    dynamic = quantize_onnx(path, tmp_path / "cnn.dyn.onnx")
    float_ops, static_ops, dynamic_ops = runtime_ops(path), runtime_ops(static), runtime_ops(dynamic)
    assert float_ops.get("Conv") == 2 and "QLinearConv" not in float_ops  # two convs, one linear
    assert static_ops.get("QLinearConv") == 2 and "Conv" not in static_ops  # int8 in, int8 out
    assert static_ops.get("QuantizeLinear") == 1  # the input, once; then int8 layer to layer
    assert dynamic_ops.get("ConvInteger") == 2 and dynamic_ops.get("DynamicQuantizeLinear") == 2
    x = torch.cat(calibration)
    ref = model(x)  # an untrained network: near-uniform logits, so only a loose closeness check
    c = compare(ref, run_onnx(static, x))
    assert c["mean_abs_diff"] < 0.05 * float(ref.abs().max()) and c["same_argmax"] >= 0.9
    # with the QDQ fusion turned off ORT dequantizes and runs float Conv: same file, other kernels
    assert "QLinearConv" not in runtime_ops(static, session_options={"session.disable_quant_qdq": "1"})


def test_static_quantization_bad_input(mlp_onnx, tmp_path):
    _, path = mlp_onnx
    with pytest.raises(TypeError, match="calibration"):
        quantize_onnx_static(path, tmp_path / "q.onnx", [])
    with pytest.raises(TypeError, match="calibration"):
        quantize_onnx_static(path, tmp_path / "q.onnx", [torch.ones(2, 3, dtype=torch.long)])
    with pytest.raises(ValueError, match="method"):
        quantize_onnx_static(path, tmp_path / "q.onnx", torch.rand(4, 1, 28, 28), method="kmeans")
    with pytest.raises(ValueError, match="no such file"):
        runtime_ops(tmp_path / "missing.onnx")


def test_onnx_module_works_with_the_course_helpers(mlp_onnx):
    model, path = mlp_onnx
    m = OnnxModule(path)
    assert m.size_bytes == file_size(path) and "mlp.onnx" in repr(m)
    x = torch.rand(5, 1, 28, 28)
    assert compare(model(x), m(x))["allclose"]
    loader = make_loader(load_dataset("mnist_subset", limit=200).test, batch_size=20)
    assert evaluate(m, loader, device="cpu")["accuracy"] == pytest.approx(evaluate(model, loader, device="cpu")["accuracy"])


def test_compare_by_hand():
    c = compare(torch.tensor([[1.0, 2.0], [3.0, 1.0]]), torch.tensor([[1.0, 2.5], [2.0, 1.0]]))
    assert c == {"max_abs_diff": 1.0, "mean_abs_diff": 0.375, "allclose": False, "same_argmax": 1.0}


def test_bad_input(mlp_onnx, tmp_path):
    model, path = mlp_onnx
    with pytest.raises(ValueError, match=r"path must be a \.onnx file"):
        export(model, model.example_inputs(), tmp_path / "m.pt")
    with pytest.raises(TypeError, match="model must be an nn.Module"):
        export("model", model.example_inputs(), tmp_path / "m.onnx")
    with pytest.raises(ValueError, match="example_inputs must not be empty"):
        export(model, (), tmp_path / "m.onnx")
    with pytest.raises(TypeError, match="example_inputs must be a tensor"):
        export(model, None, tmp_path / "m.onnx")
    with pytest.raises(ValueError, match="path: no such file"):
        run_onnx(tmp_path / "missing.onnx", torch.ones(1, 1, 28, 28))
    with pytest.raises(ValueError, match="takes 1 input"):
        run_onnx(path, (torch.ones(1, 1, 28, 28), torch.ones(1)))
    with pytest.raises(TypeError, match="must be an ONNX path"):
        run_onnx(nn.Linear(2, 2), torch.ones(1, 2))
    with pytest.raises(ValueError, match="shapes differ"):
        compare(torch.ones(2), torch.ones(3))
    with pytest.raises(ValueError, match="atol must be a number >= 0.0, got -1"):
        compare(torch.ones(2), torch.ones(2), atol=-1)
    with pytest.raises(TypeError, match="reference must be a torch.Tensor"):
        compare([1.0, 2.0], torch.ones(2))
    with pytest.raises(ValueError, match="weight_type must be one of"):
        quantize_onnx(path, tmp_path / "q.onnx", weight_type="int4")
    with pytest.raises(ValueError, match=r"out_path must be a \.onnx file"):
        quantize_onnx(path, tmp_path / "q.bin")


@pytest.mark.parametrize("flags,risk", [({"avx2"}, True), ({"avx2", "avx512f"}, True), ({"avx2", "avx_vnni"}, False),
                                        ({"avx512f", "avx512_vnni"}, False), ({"neon"}, False), (set(), False)])
def test_int8_saturation_risk_on_x86_without_vnni(flags, risk):
    from labkit.devices import int8_saturation_risk

    assert int8_saturation_risk(flags) is risk


@pytest.mark.parametrize("risk,given,expected", [(True, None, True), (False, None, False), (True, False, False),
                                                 (False, True, True)])
def test_quantize_onnx_reduces_range_where_int8_can_saturate(mlp_onnx, tmp_path, monkeypatch, risk, given, expected):
    import onnxruntime.quantization as ortq

    import labkit.export as ex

    seen = {}
    real = ortq.quantize_dynamic
    monkeypatch.setattr(ex, "int8_saturation_risk", lambda: risk)
    monkeypatch.setattr(ortq, "quantize_dynamic", lambda *a, **k: (seen.update(k), real(*a, **k))[1])
    quantize_onnx(mlp_onnx[1], tmp_path / "q.onnx", reduce_range=given)
    assert seen["reduce_range"] is expected
    with pytest.raises(TypeError, match="reduce_range"):
        quantize_onnx(mlp_onnx[1], tmp_path / "q2.onnx", reduce_range="yes")
