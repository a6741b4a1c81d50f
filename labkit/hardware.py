"""The figures of lesson ``01_cpu_vs_gpu_tpu``: what the hardware can do, measured.

Matmul GFLOP/s against size (:func:`matmul_sweep`), memory-bound elementwise bandwidth, an
estimate of the CPU's theoretical peak (with its assumptions spelled out), host<->device copy
bandwidth, the roofline ``min(peak, bandwidth x intensity)``, thread scaling, one training step
per device, and the synchronization pitfall. Every time goes through :func:`labkit.timing.time_fn`;
FLOPs are counted by :func:`labkit.metrics.count_flops`.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from labkit import _args
from labkit._args import positive_float, positive_int
from labkit.devices import (
    available_devices,
    cpu_cores,
    cpu_flags,
    describe_device,
    get_device,
    synchronize,
)
from labkit.timing import Timing, time_fn
from labkit.train import make_train_step

# --- compute-bound and memory-bound kernels ------------------------------------------------------


def matmul_gflops(
    n: int, *, dtype: torch.dtype = torch.float32, device=None, min_run_time: float = 0.2, threads: int | None = None
) -> dict:
    """Achieved GFLOP/s of an ``n x n @ n x n`` matmul (2 n^3 FLOPs) on ``device``."""
    positive_int("n", n)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating torch.dtype, got {dtype!r}")
    dev = get_device(device)
    a = torch.randn(n, n, device=dev).to(dtype)
    b = torch.randn(n, n, device=dev).to(dtype)
    c = torch.empty_like(a)  # a live output: lazy devices (XLA) only run work whose result is kept
    t = time_fn(lambda: torch.matmul(a, b, out=c), device=dev, label=f"matmul {n} {dtype}", min_run_time=min_run_time, threads=threads)
    flops = 2 * n**3
    return {"n": n, "dtype": str(dtype).replace("torch.", ""), "device": str(dev), "seconds": t.median,
            "iqr": t.iqr, "gflops": flops / t.median / 1e9, "intensity": flops / (3 * n * n * a.element_size())}


def matmul_sweep(
    sizes: Sequence[int] = (64, 128, 256, 512, 1024, 2048),
    dtypes: Sequence[torch.dtype] = (torch.float32,),
    *,
    device=None,
    min_run_time: float = 0.2,
) -> list[dict]:
    """:func:`matmul_gflops` over every size and dtype (rows for a table or a plot)."""
    if len(sizes) == 0 or len(dtypes) == 0:
        raise ValueError("sizes and dtypes must not be empty")
    return [matmul_gflops(n, dtype=d, device=device, min_run_time=min_run_time) for d in dtypes for n in sizes]


def elementwise_gbps(numel: int, *, device=None, dtype=torch.float32, min_run_time: float = 0.2) -> dict:
    """Bandwidth of ``y = x + 1`` (reads and writes ``numel`` elements: memory bound)."""
    positive_int("numel", numel)
    dev = get_device(device)
    x = torch.randn(numel, device=dev, dtype=dtype)
    out = torch.empty_like(x)
    t = time_fn(lambda: torch.add(x, 1.0, out=out), device=dev, label=f"add {numel}", min_run_time=min_run_time)
    nbytes = 2 * numel * x.element_size()
    return {"numel": numel, "device": str(dev), "seconds": t.median, "gbps": nbytes / t.median / 1e9,
            "gflops": numel / t.median / 1e9, "intensity": numel / nbytes}


def copy_bandwidth(nbytes: int = 64 << 20, *, device=None, pinned: bool = True, min_run_time: float = 0.2) -> dict | None:
    """Host->device and device->host copy GB/s, or None when ``device`` is the CPU itself."""
    positive_int("nbytes", nbytes)
    dev = get_device(device)
    if dev.type == "cpu":
        return None
    host = torch.empty(nbytes // 4, dtype=torch.float32)
    if pinned and dev.type == "cuda":
        host = host.pin_memory()
    on_dev = host.to(dev)
    h2d = time_fn(lambda: on_dev.copy_(host, non_blocking=True), device=dev, min_run_time=min_run_time)
    d2h = time_fn(lambda: host.copy_(on_dev, non_blocking=True), device=dev, min_run_time=min_run_time)
    return {"device": str(dev), "bytes": host.numel() * 4, "h2d_gbps": host.numel() * 4 / h2d.median / 1e9,
            "d2h_gbps": host.numel() * 4 / d2h.median / 1e9}


# --- theoretical peak ---------------------------------------------------------------------------


@dataclass(frozen=True)
class PeakEstimate:
    """cores x clock x FLOPs per cycle per core, and the assumptions behind each factor."""

    cores: int
    ghz: float
    flops_per_cycle: int
    gflops: float
    assumptions: tuple[str, ...]

    def __post_init__(self):
        _args.fields(self)

    def __str__(self) -> str:
        lines = [f"peak ~ {self.cores} cores x {self.ghz:.2f} GHz x {self.flops_per_cycle} FLOP/cycle = {self.gflops:.0f} GFLOP/s"]
        return "\n".join(lines + [f"  - {a}" for a in self.assumptions])


def cpu_clock_ghz() -> tuple[float, str]:
    """The CPU's clock in GHz and where the figure came from."""
    path = "/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq"
    try:
        with open(path) as f:
            return int(f.read()) / 1e6, "cpufreq max frequency"
    except (OSError, ValueError):
        pass
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("cpu MHz"):
                    return float(line.split(":")[1]) / 1e3, "/proc/cpuinfo 'cpu MHz' (current clock; turbo may be higher)"
    except OSError:
        pass
    return 3.0, "unknown clock: assumed 3.0 GHz"


def cpu_peak_gflops(
    dtype: torch.dtype = torch.float32, *, cores: int | None = None, ghz: float | None = None,
    fma_units: int = 2, flags: set[str] | None = None,
) -> PeakEstimate:
    """Estimate the CPU's theoretical peak for ``dtype`` (float32 or float64).

    FLOPs per cycle per core = SIMD lanes (vector bits / element bits) x 2 (a fused multiply-add
    is two FLOPs) x ``fma_units`` (FMA pipes per core: 2 on most recent x86 cores, an assumption).
    """
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"peak is estimated for float32 or float64, got {dtype}")
    positive_int("fma_units", fma_units)
    flags = cpu_flags() if flags is None else flags
    notes = []
    if cores is None:
        cores = cpu_cores()
        notes.append(f"{cores} cores usable by this process (hyper-threads add no FLOPs)")
    if ghz is None:
        ghz, source = cpu_clock_ghz()
        notes.append(f"clock {ghz:.2f} GHz from {source}")
    if "avx512f" in flags:
        bits, isa = 512, "AVX-512"
    elif "avx2" in flags or "avx" in flags:
        bits, isa = 256, "AVX2"
    elif "asimd" in flags or "neon" in flags:
        bits, isa = 128, "NEON"
    else:
        bits, isa = 128, "SSE (no wider vectors found)"
    elem_bits = 32 if dtype == torch.float32 else 64
    has_fma = "fma" in flags or "asimd" in flags or not flags
    per_cycle = (bits // elem_bits) * (2 if has_fma else 1) * fma_units
    notes.append(f"{isa}: {bits // elem_bits} {dtype} lanes x {'2 (FMA)' if has_fma else '1 (no FMA)'} x {fma_units} vector units")
    if bits == 512:
        notes.append("some cores run 512-bit vectors at half rate or lower clocks: treat this as an upper bound")
    return PeakEstimate(cores, ghz, per_cycle, cores * ghz * per_cycle, tuple(notes))


# --- FLOP counting and thread scaling -------------------------------------------------------------


def thread_scaling(fn: Callable[[], object], threads: Sequence[int] | None = None, *, min_run_time: float = 0.2) -> list[dict]:
    """Median time of ``fn`` with 1..N intra-op threads, and the speed-up over one thread."""
    threads = list(range(1, cpu_cores() + 1)) if threads is None else list(threads)
    if not threads:
        raise ValueError("threads must not be empty")
    rows = [{"threads": n, "seconds": time_fn(fn, threads=n, min_run_time=min_run_time).median} for n in threads]
    base = rows[0]["seconds"]
    for r in rows:
        r["speedup"] = base / r["seconds"]
    return rows


# --- the roofline, one training step per device, and the synchronization pitfall ----------------


def attainable_gflops(intensity: float, peak_gflops: float, bandwidth_gbs: float) -> float:
    """The roofline model: ``min(peak, bandwidth x intensity)`` in GFLOP/s.

    A kernel doing ``intensity`` FLOPs per byte moved cannot run faster than memory can feed it
    (``bandwidth x intensity``) nor faster than the arithmetic units (``peak``). Below the ridge
    point ``peak / bandwidth`` it is memory-bound, above it compute-bound (``01_cpu_vs_gpu_tpu``).
    """
    for name, value in (("intensity", intensity), ("peak_gflops", peak_gflops), ("bandwidth_gbs", bandwidth_gbs)):
        positive_float(name, value)
    return min(peak_gflops, bandwidth_gbs * intensity)


def time_train_step(model: torch.nn.Module, inputs, targets: torch.Tensor, *, device=None, lr: float = 0.01,
                    autocast_dtype: torch.dtype | None = None, min_run_time: float = 0.2,
                    threads: int | None = None) -> Timing:
    """Median time of one training step (see :func:`make_train_step`) on ``device``, synchronized."""
    step = make_train_step(model, inputs, targets, device=device, lr=lr, autocast_dtype=autocast_dtype)
    dev = get_device(device)
    label = f"train step on {dev}" + (f" ({str(autocast_dtype).replace('torch.', '')} autocast)" if autocast_dtype else "")
    return time_fn(step, device=dev, label=label, min_run_time=min_run_time, threads=threads)


def train_step_by_device(model: torch.nn.Module, *, batch_size: int = 64, devices: Sequence[str] | None = None,
                         min_run_time: float = 0.2, generator: torch.Generator | None = None) -> list[dict]:
    """One training step of ``model`` timed on every device (default: all available), side by side.

    The batch comes from ``model.example_inputs(batch_size)`` with random labels, so every device
    gets the same work. Rows: ``device``, ``name``, ``ms``, ``iqr_ms``, ``samples_per_s`` and
    ``speedup`` over the CPU row (``01_cpu_vs_gpu_tpu``).
    """
    if not hasattr(model, "example_inputs"):
        raise TypeError("model needs an example_inputs(batch_size) method (the labkit reference models have one)")
    devices = available_devices() if devices is None else list(devices)
    if not devices:
        raise ValueError("devices must not be empty")
    inputs = model.example_inputs(batch_size, generator=generator)
    with torch.no_grad():  # on a copy: the caller's model keeps its mode and BatchNorm statistics
        classes = copy.deepcopy(model).eval()(*inputs).shape[-1]
    targets = torch.randint(classes, (batch_size,), generator=generator)
    rows = []
    for d in devices:
        t = time_train_step(model, inputs, targets, device=d, min_run_time=min_run_time)
        rows.append({"device": str(get_device(d)), "name": describe_device(d).name, "ms": t.median * 1e3,
                     "iqr_ms": t.iqr * 1e3, "samples_per_s": batch_size / t.median})
    cpu = next((r["ms"] for r in rows if r["device"] == "cpu"), None)
    for r in rows:
        r["speedup"] = cpu / r["ms"] if cpu is not None else float("nan")
    return rows


def sync_pitfall(fn: Callable[[], object], *, device=None, repeats: int = 10) -> dict:
    """Time ``repeats`` calls of ``fn`` with a wall clock, the wrong way and the right way.

    Wrong: read the clock right after the loop. On an asynchronous device (CUDA, MPS, XLA) each
    call only *queues* work, so this measures launch speed. Right: :func:`synchronize` before
    reading the clock. Returns seconds per call, ``unsynced_s`` and ``synced_s``, and their
    ``ratio`` (synced / unsynced: about 1 on a CPU, often >> 1 on a GPU). This is the one place
    the course reads a clock by hand - to show why :func:`time_fn` exists (``01_cpu_vs_gpu_tpu``).
    """
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats <= 0:
        raise ValueError(f"repeats must be a positive int, got {repeats!r}")
    dev = get_device(device)
    fn()
    synchronize(dev)  # warm-up, and start both measurements from an idle device
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    unsynced = (time.perf_counter() - start) / repeats
    synchronize(dev)  # drain the queue the wrong measurement left behind
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    synchronize(dev)
    synced = (time.perf_counter() - start) / repeats
    return {"device": str(dev), "repeats": repeats, "unsynced_s": unsynced, "synced_s": synced,
            "ratio": synced / unsynced if unsynced > 0 else math.inf}
