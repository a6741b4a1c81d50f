"""The step-time model of lesson 03: compute + optimizer + one predicted all-reduce per tensor."""

from __future__ import annotations

import pytest

from labkit.parallel.cost import CostModel
from labkit.parallel.dp_timing import predict_naive_step

ROW = {"compute": 0.050, "optimizer": 0.002, "tensor_bytes": [4_000_000, 4_000, 1_000_000], "world_size": 2}


def test_prediction_by_hand():
    m = CostModel(alpha=1e-3, bandwidth=1e9)
    # 3 tensors, each 2(p-1) ring steps of alpha: 3 x 2 x alpha; and 2(p-1)/p = 1 x 5,004,000 bytes at 1 GB/s
    assert predict_naive_step(ROW, m) == pytest.approx(0.050 + 0.002 + 3 * 2e-3 + 5.004e-3)
    assert predict_naive_step({**ROW, "world_size": 4}, m) == pytest.approx(0.052 + 3 * 6e-3 + 1.5 * 5.004e-3)
    assert predict_naive_step({**ROW, "world_size": 1}, m) == pytest.approx(0.052)  # nothing to send


def test_best_of_repetitions():
    row = {**ROW, "compute_min": 0.040, "optimizer_min": 0.001}
    m = CostModel(alpha=0.0, bandwidth=1e9)
    assert predict_naive_step(row, m, stat="min") == pytest.approx(0.041 + 5.004e-3)
    with pytest.raises(ValueError, match="compute_min"):
        predict_naive_step(ROW, m, stat="min")
    with pytest.raises(ValueError, match="stat"):
        predict_naive_step(row, m, stat="mean")


def test_errors():
    with pytest.raises(TypeError, match="CostModel"):
        predict_naive_step(ROW, (1e-3, 1e9))
    with pytest.raises(ValueError, match="tensor_bytes"):
        predict_naive_step({"compute": 1.0}, CostModel(1e-3, 1e9))
