"""labkit.efficiency.compiling: the cost model by hand; torch.compile agrees with eager and fuses the chain."""

from __future__ import annotations

import math

import pytest
import torch

from labkit.efficiency.compiling import (
    CHAIN_OPS,
    CompileReport,
    break_even_steps,
    compare_compiled,
    compile_training_step,
    generated_kernels,
    kernel_excerpt,
    pointwise_chain,
    traffic_bytes,
)


def test_break_even_by_hand():
    assert break_even_steps(10.0, 0.05, 0.03) == pytest.approx(500.0)
    assert break_even_steps(10.0, 0.03, 0.05) == math.inf
    assert break_even_steps(0.0, 0.05, 0.03) == 0.0
    with pytest.raises(ValueError, match="compile_seconds"):
        break_even_steps(-1.0, 0.05, 0.03)
    with pytest.raises(ValueError, match="eager_step"):
        break_even_steps(1.0, float("nan"), 0.03)


def test_traffic_by_hand():
    # eager: add (1 read, 1 write), gelu (1, 1), mul (1, 1), add x (2, 1) = 9 full-size tensors; fused: 2
    assert traffic_bytes(1000) == 9 * 4000
    assert traffic_bytes(1000, fused=True) == 2 * 4000
    assert traffic_bytes(10, 2, ops=[("a", 1, 1)]) == 40
    assert len(CHAIN_OPS) == 4
    with pytest.raises(ValueError, match="numel"):
        traffic_bytes(0)


def test_report_text():
    r = CompileReport("f", 2.0, 0.010, 0.005)
    assert r.ok and r.speedup == pytest.approx(2.0) and r.break_even == pytest.approx(400.0)
    assert "400 steps" in str(r)
    bad = CompileReport("f", math.nan, 0.01, math.nan, error="InvalidCxxCompiler: no compiler")
    assert not bad.ok and math.isnan(bad.speedup) and "failed" in str(bad)


def test_compile_failure_is_caught():
    def broken():
        raise RuntimeError("BackendCompilerFailed: no C++ compiler found")

    r = compare_compiled(lambda: None, broken, label="x", min_run_time=0.01)
    assert not r.ok and "no C++ compiler" in r.error
    with pytest.raises(TypeError, match="eager_fn must be callable"):
        compare_compiled(None, broken)


@pytest.mark.slow
def test_compiled_chain_is_fused_and_equal():
    x, b = torch.randn(8, 16), torch.randn(16)
    names, code = generated_kernels(pointwise_chain, x, b)
    assert len(names) == 1 and all(op in names[0] for op in ("add", "gelu", "mul"))
    assert "kernel" in kernel_excerpt(code, names[0])
    with pytest.raises(ValueError, match="no kernel"):
        kernel_excerpt(code, "nope")
    torch.testing.assert_close(torch.compile(pointwise_chain)(x + 1, b), pointwise_chain(x + 1, b))


@pytest.mark.slow
def test_compiled_training_step_report():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    before = [p.detach().clone() for p in model.parameters()]
    r = compile_training_step(model, torch.randn(4, 6), torch.tensor([0, 1, 2, 0]), min_run_time=0.01)
    assert r.ok, r.error
    assert r.compile_seconds >= 0 and r.eager > 0 and r.compiled > 0
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))  # the eager copy trained
    with pytest.raises(TypeError, match="model"):
        compile_training_step("net", torch.zeros(1), torch.zeros(1))
