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
import platform
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from labkit import _args
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
    _args.positive_int("n", n)
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


def linear_intensity(tokens: int, d_in: int, d_out: int, *, bytes_per_element: int = 4) -> float:
    """FLOPs per byte of a layer's matmul ``(B x D) @ (D x F)`` for ``B = tokens``:
    ``2 B D F / (e (B D + D F + B F))`` - inputs, weight and output each moved once. With one
    token it is below 1/2 FLOP per byte in float32 (the weight is read for a single row: decode
    is memory-bound); it grows towards ``2 D F / (e (D + F))`` as the batch of tokens grows."""
    for name, value in (("tokens", tokens), ("d_in", d_in), ("d_out", d_out), ("bytes_per_element", bytes_per_element)):
        _args.positive_int(name, value)
    b, d, f = tokens, d_in, d_out
    return 2 * b * d * f / (bytes_per_element * (b * d + d * f + b * f))


def token_sweep(tokens: Sequence[int], d_in: int, d_out: int, *, dtype: torch.dtype = torch.float32, device=None,
                min_run_time: float = 0.2) -> list[dict]:
    """A transformer layer's matmul ``(B x D) @ (D x F)`` timed for each ``B`` in ``tokens``
    (batch x sequence positions): rows ``{tokens, seconds, gflops, intensity}``. Decode with a
    batch of one is ``B = 1``; a training step over a batch of sequences is ``B`` in the
    thousands. Plot GFLOP/s against intensity (:func:`linear_intensity`) to see where the layer
    crosses the roofline's ridge point (lesson ``01_cpu_vs_gpu_tpu``)."""
    tokens = [_args.positive_int(f"tokens[{i}]", b)
              for i, b in enumerate(_args.sequence("tokens", tokens, what="a list of token counts"))]
    if not tokens:
        raise ValueError("tokens must not be empty")
    for name, value in (("d_in", d_in), ("d_out", d_out)):
        _args.positive_int(name, value)
    _args.positive_float("min_run_time", min_run_time)
    dev = get_device(device)
    w = torch.randn(d_in, d_out, device=dev).to(dtype)
    rows = []
    for b in tokens:
        _args.positive_int("tokens", b)
        x = torch.randn(b, d_in, device=dev).to(dtype)
        out = torch.empty(b, d_out, device=dev, dtype=dtype)
        t = time_fn(lambda x=x, out=out: torch.matmul(x, w, out=out), device=dev, label=f"{b} tokens",
                    min_run_time=min_run_time)
        rows.append({"tokens": b, "seconds": t.median, "gflops": 2 * b * d_in * d_out / t.median / 1e9,
                     "intensity": linear_intensity(b, d_in, d_out, bytes_per_element=w.element_size())})
    return rows


def elementwise_gbps(numel: int, *, device=None, dtype=torch.float32, min_run_time: float = 0.2) -> dict:
    """Bandwidth of ``y = x + 1`` (reads and writes ``numel`` elements: memory bound)."""
    _args.positive_int("numel", numel)
    dev = get_device(device)
    x = torch.randn(numel, device=dev, dtype=dtype)
    out = torch.empty_like(x)
    t = time_fn(lambda: torch.add(x, 1.0, out=out), device=dev, label=f"add {numel}", min_run_time=min_run_time)
    nbytes = 2 * numel * x.element_size()
    return {"numel": numel, "device": str(dev), "seconds": t.median, "gbps": nbytes / t.median / 1e9,
            "gflops": numel / t.median / 1e9, "intensity": numel / nbytes}


def copy_bandwidth(nbytes: int = 64 << 20, *, device=None, pinned: bool = True, min_run_time: float = 0.2) -> dict | None:
    """Host->device and device->host copy GB/s, or None when ``device`` is the CPU itself."""
    _args.positive_int("nbytes", nbytes)
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
    """cores x clock x FLOPs per cycle per core, and the assumptions behind each factor.

    ``matrix_unit_gflops`` is a matrix engine beside the vector units (Apple's AMX, used by
    Accelerate's matmuls): when it is set, ``gflops`` is the larger of the two."""

    cores: int
    ghz: float
    flops_per_cycle: int
    gflops: float
    assumptions: tuple[str, ...]
    matrix_unit_gflops: float = 0.0

    def __post_init__(self):
        _args.fields(self)

    def __str__(self) -> str:
        vector = self.cores * self.ghz * self.flops_per_cycle
        lines = [f"peak ~ {self.cores} cores x {self.ghz:.2f} GHz x {self.flops_per_cycle} FLOP/cycle = {vector:.0f} GFLOP/s"]
        if self.matrix_unit_gflops:
            lines.append(f"matrix unit ~ {self.matrix_unit_gflops:.0f} GFLOP/s; peak used = {self.gflops:.0f} GFLOP/s")
        return "\n".join(lines + [f"  - {a}" for a in self.assumptions])


def _sysctl(name: str) -> str | None:
    """``sysctl -n name`` on macOS (None where it is missing or fails)."""
    try:
        out = subprocess.run(["sysctl", "-n", name], capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def _is_mac() -> bool:
    return platform.system() == "Darwin"


def _is_apple_silicon() -> bool:
    return _is_mac() and platform.machine() == "arm64"


def cpu_clock_ghz() -> tuple[float, str]:
    """The CPU's clock in GHz and where the figure came from.

    Linux: cpufreq's max frequency, else ``/proc/cpuinfo``. macOS: ``sysctl hw.cpufrequency_max``
    (Intel Macs); Apple Silicon publishes no clock, so 3.2 GHz (an M1 performance core) is assumed.
    """
    if _is_mac():
        hz = _sysctl("hw.cpufrequency_max")
        if hz and hz.isdigit():
            return int(hz) / 1e9, "sysctl hw.cpufrequency_max"
        if _is_apple_silicon():
            return 3.2, "Apple Silicon publishes no clock: assumed 3.2 GHz (M1 performance core; M2-M4 run 3.5-4.5)"
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


def _mac_flags() -> set[str]:
    """Vector extensions on macOS, where there is no /proc/cpuinfo: NEON on Apple Silicon, the
    ``machdep.cpu`` feature lists on Intel Macs (lower-cased like Linux's flags)."""
    if _is_apple_silicon():
        return {"asimd"}
    words = " ".join(_sysctl(k) or "" for k in ("machdep.cpu.features", "machdep.cpu.leaf7_features"))
    return {w.lower().replace(".", "_") for w in words.split()}


# Accelerate's float32 matmul on Apple's AMX unit: about 1-1.7 TFLOP/s on M1-M3 (public sgemm
# benchmarks, not measured by labkit); the upper figure is used so the estimate stays a ceiling.
APPLE_AMX_FP32_GFLOPS = 1700.0


def cpu_peak_gflops(
    dtype: torch.dtype = torch.float32, *, cores: int | None = None, ghz: float | None = None,
    fma_units: int | None = None, flags: set[str] | None = None,
) -> PeakEstimate:
    """Estimate the CPU's theoretical peak for ``dtype`` (float32 or float64).

    FLOPs per cycle per core = SIMD lanes (vector bits / element bits) x 2 (a fused multiply-add
    is two FLOPs) x ``fma_units`` (FMA pipes per core: 2 on most recent x86 cores, 4 on Apple's
    performance cores - an assumption). Where each factor comes from:

    * Linux: cores from the affinity mask, clock from cpufreq or ``/proc/cpuinfo``, vector
      extensions (AVX-512, AVX2, NEON) from ``/proc/cpuinfo``'s flags;
    * Intel Mac: ``sysctl`` (``hw.cpufrequency_max``, ``machdep.cpu.features``);
    * Apple Silicon: no ``/proc/cpuinfo`` and no published clock: the performance cores from
      ``sysctl hw.perflevel0.physicalcpu``, 3.2 GHz assumed, NEON x 4 FMA pipes; and float32
      matmuls through Accelerate run on the AMX matrix unit, not the NEON pipes, so the float32
      peak is at least :data:`APPLE_AMX_FP32_GFLOPS` (``matrix_unit_gflops``).
    """
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"peak is estimated for float32 or float64, got {dtype}")
    apple = _is_apple_silicon()
    fma_units = (4 if apple else 2) if fma_units is None else fma_units
    _args.positive_int("fma_units", fma_units)
    if flags is None:
        flags = _mac_flags() if _is_mac() else cpu_flags()
    notes = []
    if cores is None:
        perf = _sysctl("hw.perflevel0.physicalcpu") if apple else None
        cores = int(perf) if perf and perf.isdigit() else cpu_cores()
        notes.append(f"{cores} performance cores (sysctl hw.perflevel0.physicalcpu; efficiency cores left out)" if perf
                     else f"{cores} cores usable by this process (hyper-threads add no FLOPs)")
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
    vector = cores * ghz * per_cycle
    matrix = APPLE_AMX_FP32_GFLOPS if apple and dtype == torch.float32 else 0.0
    if matrix:
        notes.append(f"Accelerate runs float32 matmuls on the AMX unit: about 1000-{matrix:.0f} GFLOP/s on M1-M3 "
                     "(public benchmarks, not measured here); the peak is the larger of the two")
    return PeakEstimate(cores, ghz, per_cycle, max(vector, matrix), tuple(notes), matrix)


def float32_matmul_settings(device=None) -> dict | None:
    """How "float32" matmuls really run on a CUDA ``device`` (None elsewhere).

    On Ampere and newer GPUs (compute capability >= 8.0) a float32 matmul may run in **TF32**:
    inputs rounded to 10 stored mantissa bits (fp32 has 23), products accumulated in fp32 - up to
    several times faster on the tensor cores, and about 3 decimal digits of precision. PyTorch's
    switch is ``torch.backends.cuda.matmul.allow_tf32`` (off by default for matmuls) or
    ``torch.set_float32_matmul_precision('high')`` (TF32 allowed; ``'highest'`` = true fp32;
    ``'medium'`` may use bf16). Returns ``{device, capability, tf32_capable, allow_tf32,
    float32_matmul_precision, cudnn_allow_tf32}`` for lesson 01's guarded cell.
    """
    dev = get_device(device)
    if dev.type != "cuda":
        return None
    major, minor = torch.cuda.get_device_capability(dev)
    return {"device": str(dev), "capability": f"{major}.{minor}", "tf32_capable": major >= 8,
            "allow_tf32": bool(torch.backends.cuda.matmul.allow_tf32),
            "float32_matmul_precision": torch.get_float32_matmul_precision(),
            "cudnn_allow_tf32": bool(torch.backends.cudnn.allow_tf32)}


# --- FLOP counting and thread scaling -------------------------------------------------------------


def thread_scaling(fn: Callable[[], object], threads: Sequence[int] | None = None, *, min_run_time: float = 0.2) -> list[dict]:
    """Median time of ``fn`` with each of ``threads`` intra-op threads (default 1..cores), and
    ``speedup = t(1 thread) / t(n threads)``. One thread is always the baseline: it is timed
    even when ``threads`` leaves it out (it then gets no row of its own)."""
    threads = list(range(1, cpu_cores() + 1)) if threads is None else list(threads)
    if not threads:
        raise ValueError("threads must not be empty")
    for n in threads:
        _args.positive_int("threads", n)
    seconds = {n: time_fn(fn, threads=n, min_run_time=min_run_time).median for n in dict.fromkeys([1, *threads])}
    return [{"threads": n, "seconds": seconds[n], "speedup": seconds[1] / seconds[n]} for n in threads]


# --- the roofline, one training step per device, and the synchronization pitfall ----------------


def attainable_gflops(intensity: float, peak_gflops: float, bandwidth_gbs: float) -> float:
    """The roofline model: ``min(peak, bandwidth x intensity)`` in GFLOP/s.

    A kernel doing ``intensity`` FLOPs per byte moved cannot run faster than memory can feed it
    (``bandwidth x intensity``) nor faster than the arithmetic units (``peak``). Below the ridge
    point ``peak / bandwidth`` it is memory-bound, above it compute-bound (``01_cpu_vs_gpu_tpu``).
    """
    for name, value in (("intensity", intensity), ("peak_gflops", peak_gflops), ("bandwidth_gbs", bandwidth_gbs)):
        _args.positive_float(name, value)
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
