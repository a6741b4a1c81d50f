"""labkit.quantize.runtimes: every real int8 path gives fp32's answers from a ~4x smaller model.
(Correctness and size only: speed is measured in the notebook, never asserted in unit tests.)"""

import pytest
import torch
from torch import nn

from labkit.models import MLP, SmallCNN
from labkit.quantize.runtimes import (
    RUNTIMES,
    build_runtimes,
    format_rows,
    measure_runtimes,
    torch_int8,
    torchao_int8,
)

# torch.ao.quantization and quantized dtypes warn that they are deprecated: known, and taught in notebook 06
pytestmark = [pytest.mark.filterwarnings("ignore::DeprecationWarning"),
              pytest.mark.filterwarnings("ignore:.*quantized tensor creation functions.*:UserWarning")]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return MLP(hidden=(256, 256)).eval()


@torch.no_grad()
@pytest.mark.parametrize("make", [torch_int8, lambda m: torchao_int8(m), lambda m: torchao_int8(m, weight_only=True)])
def test_int8_paths_close_to_fp32_and_leave_the_model_alone(model, make, gen):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    q = make(model)
    x = torch.rand(8, 1, 28, 28, generator=gen)
    ref = model(x)
    assert (q(x) - ref).abs().max() < 0.02 * ref.abs().max()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.slow
def test_build_and_measure_all_runtimes(model, tmp_path):
    runtimes = build_runtimes(model, model.example_inputs(4), workdir=tmp_path)
    assert list(runtimes) == list(RUNTIMES)
    data = [(torch.rand(16, 1, 28, 28), torch.randint(0, 10, (16,))) for _ in range(2)]
    rows = measure_runtimes(runtimes, model.example_inputs(4), data=data, rounds=1, min_run_time=0.01)
    by = {r["runtime"]: r for r in rows}
    assert by["fp32"]["speedup"] == 1.0 and by["fp32"]["max_abs_diff"] == 0.0
    assert by["onnx_fp32"]["max_abs_diff"] < 1e-4
    for name in ("torch_int8", "onnx_int8", "torchao_int8_dynamic", "torchao_int8_weight_only", "labkit_int8"):
        assert by[name]["size_ratio"] > 3.5, name
        assert by[name]["max_abs_diff"] < 0.05, name
        assert abs(by[name]["accuracy"] - by["fp32"]["accuracy"]) <= 1 / 16, name
    text = format_rows(rows)
    assert text.splitlines()[0].split()[:3] == ["runtime", "size_mb", "size_ratio"] and len(text.splitlines()) == 8


@pytest.mark.slow
@torch.no_grad()
def test_compiled_torchao_equals_eager_torchao(model, tmp_path, gen):
    names = ("torchao_int8_weight_only", "torchao_int8_weight_only_compiled")
    runtimes = build_runtimes(model, model.example_inputs(4), names=names, workdir=tmp_path)
    eager, compiled = (runtimes[n] for n in names)
    assert compiled.size_bytes == eager.size_bytes and "torch.compile" in compiled.note
    x = torch.rand(8, 1, 28, 28, generator=gen)
    assert torch.allclose(compiled.module(x), eager.module(x), atol=1e-4)
    with pytest.raises(TypeError, match="compile"):
        torchao_int8(model, compile="yes")


def test_bad_input(model):
    with pytest.raises(ValueError, match=r"names\[0\] must be one of"):
        build_runtimes(model, model.example_inputs(), names=("fp16",))
    with pytest.raises(ValueError, match="nothing to quantize"):
        torch_int8(nn.Sequential(nn.Conv2d(1, 1, 3)))
    with pytest.raises(TypeError, match="model must be an nn.Module"):
        torchao_int8("model")
    runtimes = build_runtimes(model, model.example_inputs(), names=("torch_int8",))
    with pytest.raises(ValueError, match="reference 'fp32' is not among"):
        measure_runtimes(runtimes, model.example_inputs())
    with pytest.raises(ValueError, match="rounds must be an int >= 1"):
        measure_runtimes(build_runtimes(model, model.example_inputs(), names=("fp32",)), model.example_inputs(), rounds=0)
    with pytest.raises(ValueError, match="rows must not be empty"):
        format_rows([])


def test_conv_models_need_linear_layers_for_torch_int8():
    q = torch_int8(SmallCNN(widths=(4, 8)))  # only the classifier Linear is quantized
    assert isinstance(q.classifier[1], torch.ao.nn.quantized.dynamic.Linear)
    assert type(q.features[0]) is nn.Conv2d
