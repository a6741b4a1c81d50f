"""labkit.hardware: timing, GFLOP/s, peak estimate, FLOP counts - checked against known values."""

from __future__ import annotations

import pytest
import torch

from labkit import hardware as B
from labkit import metrics


def test_matmul_gflops_formula():
    row = B.matmul_gflops(64, min_run_time=0.02)
    assert row["gflops"] == pytest.approx(2 * 64**3 / row["seconds"] / 1e9)
    assert row["intensity"] == pytest.approx(2 * 64**3 / (3 * 64 * 64 * 4))
    assert row["dtype"] == "float32" and row["device"] == "cpu"


def test_matmul_bad_input():
    with pytest.raises(ValueError, match="n must be an int >= 1"):
        B.matmul_gflops(-4)
    with pytest.raises(TypeError, match="floating"):
        B.matmul_gflops(8, dtype=torch.int32)
    with pytest.raises(ValueError, match="empty"):
        B.matmul_sweep(())


def test_matmul_sweep_rows():
    rows = B.matmul_sweep((16, 32), (torch.float32, torch.float64), min_run_time=0.01)
    assert [(r["n"], r["dtype"]) for r in rows] == [(16, "float32"), (32, "float32"), (16, "float64"), (32, "float64")]


def test_elementwise_is_memory_bound():
    row = B.elementwise_gbps(1 << 16, min_run_time=0.02)
    assert row["intensity"] == pytest.approx(1 / 8)  # one add per 8 bytes moved in fp32
    assert row["gbps"] > 0
    with pytest.raises(ValueError):
        B.elementwise_gbps(0)


def test_copy_bandwidth_is_none_on_cpu():
    assert B.copy_bandwidth(1 << 20, device="cpu") is None
    with pytest.raises(ValueError):
        B.copy_bandwidth(0, device="cpu")


def test_peak_estimate_worked_example():
    p = B.cpu_peak_gflops(cores=4, ghz=3.0, flags={"avx2", "fma"})
    assert p.flops_per_cycle == 8 * 2 * 2  # 8 fp32 lanes x FMA x 2 units
    assert p.gflops == pytest.approx(4 * 3.0 * 32)
    p64 = B.cpu_peak_gflops(torch.float64, cores=1, ghz=2.0, flags={"avx512f", "fma"}, fma_units=1)
    assert p64.gflops == pytest.approx(2.0 * 8 * 2)
    assert any("AVX-512" in a for a in p64.assumptions)
    assert "GFLOP/s" in str(p)


def test_peak_estimate_reads_this_machine():
    p = B.cpu_peak_gflops()
    assert p.cores >= 1 and p.ghz > 0 and p.gflops > 0 and len(p.assumptions) >= 3


def test_peak_bad_input():
    with pytest.raises(ValueError, match="float32 or float64"):
        B.cpu_peak_gflops(torch.int8)
    with pytest.raises(ValueError, match="fma_units"):
        B.cpu_peak_gflops(fma_units=0)


def test_count_flops_matches_formula():
    lin = torch.nn.Linear(32, 16, bias=False)
    x = torch.randn(8, 32)
    assert metrics.count_flops(lin, x) == 2 * 8 * 32 * 16
    assert metrics.count_flops(lin, (x,), backward=True) == 2 * 2 * 8 * 32 * 16  # forward + grad_weight
    x.requires_grad_(True)
    assert metrics.count_flops(lin, (x,), backward=True) == 3 * 2 * 8 * 32 * 16  # ... + grad_input
    with pytest.raises(TypeError):
        metrics.count_flops(lambda x: x, x)


def test_thread_scaling_rows():
    rows = B.thread_scaling(lambda: torch.ones(1000).sum(), threads=[1, 1], min_run_time=0.01)
    assert rows[0]["speedup"] == 1.0 and len(rows) == 2
    with pytest.raises(ValueError):
        B.thread_scaling(lambda: None, threads=[])
