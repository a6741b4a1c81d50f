"""labkit.efficiency.precision: format facts from first principles, and a loss scaler equal to torch.amp.GradScaler."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from labkit.efficiency.precision import (
    NaiveLossScaler,
    autocast_step_times,
    autocast_supported,
    dtype_facts,
    flushed_to_zero,
    matmul_relative_error,
    round_to,
    running_sum,
)


def test_dtype_facts_by_hand():
    rows = {r["dtype"]: r for r in dtype_facts()}
    assert (rows["float32"]["exponent_bits"], rows["float32"]["mantissa_bits"]) == (8, 23)
    assert (rows["bfloat16"]["exponent_bits"], rows["bfloat16"]["mantissa_bits"]) == (8, 7)
    assert (rows["float16"]["exponent_bits"], rows["float16"]["mantissa_bits"]) == (5, 10)
    assert rows["float16"]["max"] == 65504.0 and rows["bfloat16"]["eps"] == 2.0**-7
    with pytest.raises(TypeError, match="dtype"):
        dtype_facts([torch.int8])


def test_rounding_and_accumulation():
    assert round_to(1 + 2**-8, torch.bfloat16) == 1.0  # below bfloat16's half-epsilon... a tie, rounds to even
    assert round_to(1 + 2**-8, torch.float16) == 1 + 2**-8
    assert round_to(70000, torch.float16) == math.inf
    assert round_to(70000, torch.bfloat16) == 70144.0
    assert running_sum(1.0, 300, torch.bfloat16) == 256.0  # 256 + 1 rounds back to 256
    assert running_sum(1.0, 300, torch.float32) == 300.0
    with pytest.raises(ValueError, match="n must"):
        running_sum(1.0, -1, torch.float32)


@settings(max_examples=50, deadline=None)
@given(st.floats(min_value=1e-30, max_value=1e30))
def test_round_to_error_within_half_epsilon(x):
    for dt in (torch.bfloat16, torch.float32):
        assert abs(round_to(x, dt) - x) <= torch.finfo(dt).eps / 2 * abs(x) * (1 + 1e-12)


def test_matmul_error_orders_formats(gen):
    e32 = matmul_relative_error(64, torch.float32, generator=torch.Generator().manual_seed(0))
    e16 = matmul_relative_error(64, torch.bfloat16, generator=torch.Generator().manual_seed(0))
    assert e32 < 1e-5 < e16 < 2e-2
    with pytest.raises(ValueError, match="n must"):
        matmul_relative_error(0, torch.float32)


def test_flushed_to_zero():
    g = torch.tensor([1e-9, 1e-3, 2e-8, 0.0, 5.0])
    assert flushed_to_zero(g, torch.float16) == 0.5  # 1e-9 and 2e-8 underflow, 1e-3 and 5 survive
    assert flushed_to_zero(g, torch.bfloat16) == 0.0
    assert flushed_to_zero(g, torch.float16, scale=2.0**16) == 0.0
    with pytest.raises(ValueError, match="non-zero"):
        flushed_to_zero(torch.zeros(3), torch.float16)
    with pytest.raises(ValueError, match="scale"):
        flushed_to_zero(g, torch.float16, scale=0)


def _scaled_run(scaler, model, opt, losses_scale):
    scales = []
    for i, boost in enumerate(losses_scale):
        opt.zero_grad()
        x = torch.full((2, 3), float(i + 1))
        loss = model(x).sum() * boost
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        scales.append(scaler.get_scale())
    return scales


def test_naive_scaler_equals_gradscaler():
    torch.manual_seed(0)
    base = torch.nn.Linear(3, 2)
    a, b = copy.deepcopy(base), copy.deepcopy(base)
    boosts = [1.0, 1.0, 1e38, 1.0, 1.0, 1.0, math.inf, 1.0, 1.0]  # two overflowing steps
    ours = _scaled_run(NaiveLossScaler(init_scale=1024.0, growth_interval=3), a,
                       torch.optim.SGD(a.parameters(), lr=0.01), boosts)
    ref = _scaled_run(torch.amp.GradScaler("cpu", init_scale=1024.0, growth_interval=3), b,
                      torch.optim.SGD(b.parameters(), lr=0.01), boosts)
    assert ours == ref
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb)
    with pytest.raises(ValueError, match="growth_interval"):
        NaiveLossScaler(growth_interval=0)
    with pytest.raises(ValueError, match="init_scale"):
        NaiveLossScaler(init_scale=-1)


def test_autocast_times_rows():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    x, y = torch.randn(16, 8), torch.randint(0, 3, (16,))
    assert autocast_supported("cpu", torch.bfloat16)
    rows = autocast_step_times(model, x, y, dtypes=(torch.float32, torch.bfloat16), min_run_time=0.01)
    assert [r["dtype"] for r in rows] == ["float32", "bfloat16"] and rows[0]["speedup"] == 1.0
    assert all(r["seconds"] > 0 for r in rows)
    rows = autocast_step_times(model, x, y, train=False, min_run_time=0.01)
    assert len(rows) == 2
    with pytest.raises(ValueError, match="dtypes"):
        autocast_step_times(model, x, y, dtypes=())
    with pytest.raises(TypeError, match="model"):
        autocast_step_times("net", x, y)


def test_unsupported_autocast_is_reported(monkeypatch):
    import labkit.efficiency.precision as P

    monkeypatch.setattr(P, "autocast_supported", lambda device_type, dtype: False)
    model = torch.nn.Linear(4, 2)
    rows = P.autocast_step_times(model, torch.randn(3, 4), torch.tensor([0, 1, 0]), min_run_time=0.01)
    assert math.isnan(rows[1]["seconds"])
