"""labkit.hardware: timing, GFLOP/s, peak estimate, FLOP counts - checked against known values."""

from __future__ import annotations

import pytest
import torch

from labkit import hardware as B
from labkit import metrics
from labkit.timing import Timing


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


def _mock_mac(monkeypatch, machine, sysctl):
    monkeypatch.setattr(B.platform, "system", lambda: "Darwin")
    monkeypatch.setattr(B.platform, "machine", lambda: machine)
    monkeypatch.setattr(B, "_sysctl", lambda name: sysctl.get(name))
    monkeypatch.setattr(B, "cpu_flags", lambda: set())  # no /proc/cpuinfo on macOS
    real_open = open

    def no_proc(path, *args, **kwargs):
        if str(path).startswith(("/proc", "/sys")):
            raise FileNotFoundError(path)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr("builtins.open", no_proc)


def test_peak_on_apple_silicon_counts_the_amx_unit(monkeypatch):
    _mock_mac(monkeypatch, "arm64", {"hw.perflevel0.physicalcpu": "8", "hw.perflevel1.physicalcpu": "4"})
    p = B.cpu_peak_gflops()
    assert p.cores == 8 and p.ghz == 3.2 and p.flops_per_cycle == 4 * 2 * 4  # NEON 4 lanes x FMA x 4 pipes
    assert p.matrix_unit_gflops == B.APPLE_AMX_FP32_GFLOPS and p.gflops == B.APPLE_AMX_FP32_GFLOPS
    # lesson 01's final assert: a measured Accelerate sgemm of 1.6 TFLOP/s must sit under 1.5 x the estimate
    assert 1600 < 1.5 * p.gflops
    text = str(p)
    assert "sysctl" in text and "AMX" in text and "assumed 3.2 GHz" in text
    p64 = B.cpu_peak_gflops(torch.float64)
    assert p64.matrix_unit_gflops == 0 and p64.gflops == pytest.approx(8 * 3.2 * 2 * 2 * 4)


def test_peak_on_an_intel_mac_reads_sysctl(monkeypatch):
    _mock_mac(monkeypatch, "x86_64", {"hw.cpufrequency_max": "2600000000",
                                      "machdep.cpu.features": "FPU SSE SSE2 FMA AVX1.0",
                                      "machdep.cpu.leaf7_features": "SMEP AVX2 BMI2"})
    p = B.cpu_peak_gflops(cores=6)
    assert p.ghz == 2.6 and p.flops_per_cycle == 8 * 2 * 2 and p.matrix_unit_gflops == 0
    assert any("sysctl hw.cpufrequency_max" in a for a in p.assumptions)


def test_float32_matmul_settings_reports_tf32(monkeypatch):
    assert B.float32_matmul_settings("cpu") is None
    monkeypatch.setattr(B, "get_device", lambda device=None: torch.device("cuda", 0))
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda dev=None: (8, 0))  # an A100
    previous = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("high")
        s = B.float32_matmul_settings()
        assert s["tf32_capable"] and s["capability"] == "8.0" and s["float32_matmul_precision"] == "high"
        torch.set_float32_matmul_precision("highest")
        assert B.float32_matmul_settings()["float32_matmul_precision"] == "highest"
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda dev=None: (7, 5))  # a T4: no TF32
        assert not B.float32_matmul_settings()["tf32_capable"]
    finally:
        torch.set_float32_matmul_precision(previous)


def test_linear_intensity_by_hand_and_against_counted_flops():
    # one token through a 4 x 2 layer: 2*1*4*2 = 16 FLOPs over 4 bytes x (4 + 8 + 2) numbers
    assert B.linear_intensity(1, 4, 2) == pytest.approx(16 / (4 * 14))
    d = 256
    assert B.linear_intensity(1, d, d) < 0.5 < 16 < B.linear_intensity(4096, d, d) < 2 * d * d / (4 * 2 * d)
    lin, x = torch.nn.Linear(d, 3 * d, bias=False), torch.zeros(64, d)
    flops = metrics.count_flops(lin, x)
    assert B.linear_intensity(64, d, 3 * d) == pytest.approx(flops / (4 * (x.numel() + lin.weight.numel() + 64 * 3 * d)))
    rows = B.token_sweep([1, 32], 64, 32, min_run_time=0.01, device="cpu")
    assert [r["tokens"] for r in rows] == [1, 32] and rows[0]["intensity"] < rows[1]["intensity"]
    assert all(r["gflops"] == pytest.approx(2 * r["tokens"] * 64 * 32 / r["seconds"] / 1e9) for r in rows)
    with pytest.raises(ValueError, match="tokens"):
        B.token_sweep([], 4, 4)
    with pytest.raises(ValueError, match="tokens"):
        B.linear_intensity(0, 4, 4)


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
    rows = B.thread_scaling(lambda: torch.ones(1000).sum(), threads=[1, 2], min_run_time=0.01)
    assert rows[0]["speedup"] == 1.0 and [r["threads"] for r in rows] == [1, 2]


def test_thread_scaling_is_over_one_thread(monkeypatch):
    # a fake clock: n threads take 1/n s, so the speed-up over ONE thread is n, whatever comes first
    calls = []

    def fake_time_fn(fn, *, threads, min_run_time):
        calls.append(threads)
        return Timing("fake", 1.0 / threads, 0.0, 1.0 / threads, 1, threads)

    monkeypatch.setattr(B, "time_fn", fake_time_fn)
    rows = B.thread_scaling(lambda: None, threads=[4, 2])
    assert [(r["threads"], r["speedup"]) for r in rows] == [(4, 4.0), (2, 2.0)]
    assert sorted(calls) == [1, 2, 4]  # one thread timed once, as the baseline
    with pytest.raises(ValueError):
        B.thread_scaling(lambda: None, threads=[])
