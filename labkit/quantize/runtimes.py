"""Real int8 inference on this machine: three runtimes measured against fp32.

labkit's own quantized layers (:mod:`labkit.quantize.modules`) store integers but compute in
float, so they shrink the file without speeding anything up. Speed needs int8 *kernels*
(VNNI / AVX-512 / AMX on x86, dot-product instructions on ARM). Three ways to reach them:

* ``torch_int8`` - ``torch.ao.quantization.quantize_dynamic``: int8 weights, activations
  quantized per batch, fbgemm / oneDNN kernels (the ``x86`` engine). The ``torch.ao``
  namespace is deprecated in favour of torchao, but in torch 2.13 it is still PyTorch's fast
  int8 path on a CPU;
* ``onnx_int8`` - ``torch.onnx.export`` then ONNX Runtime's dynamic quantization (the
  maintained deployment path; :mod:`labkit.export`);
* ``torchao_int8_dynamic`` / ``torchao_int8_weight_only`` - torchao's
  ``Int8DynamicActivationInt8WeightConfig`` / ``Int8WeightOnlyConfig``, written for GPUs
  and for ``torch.compile``, which fuses their quantize / matmul / rescale steps; run eagerly
  they pay for each step separately. The ``..._compiled`` variants (:data:`COMPILED_RUNTIMES`,
  not built by default: compiling takes tens of seconds) wrap them in ``torch.compile``.

Compare speed-ups *inside one runtime* (PyTorch int8 against PyTorch fp32, ONNX Runtime int8
against ONNX Runtime fp32): a ratio across runtimes mixes the number format with the engine.

:func:`build_runtimes` prepares any of :data:`RUNTIMES` from one float model;
:func:`measure_runtimes` times them in interleaved rounds (speed-ups are per-round ratios,
so a noisy machine slows both sides of a ratio alike), sizes them on disk and checks their
outputs (and accuracy) against fp32. Used by ``notebooks/06_quantization.ipynb`` and ``08``.
"""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from labkit import _args, timing
from labkit.devices import check_device
from labkit.export import OnnxModule, compare, export, quantize_onnx, quiet_loggers
from labkit.metrics import inference_call, size_on_disk
from labkit.quantize.api import DynamicActivationConfig, quantize_
from labkit.train import evaluate

RUNTIMES = ("fp32", "torch_int8", "onnx_fp32", "onnx_int8", "torchao_int8_dynamic", "torchao_int8_weight_only",
            "labkit_int8")
COMPILED_RUNTIMES = ("torchao_int8_dynamic_compiled", "torchao_int8_weight_only_compiled")


@dataclass(frozen=True)
class Runtime:
    """A ready-to-run model and what it costs on disk."""

    name: str
    module: nn.Module
    size_bytes: int
    device: str = "cpu"
    note: str = ""

    def __post_init__(self):
        _args.fields(self)


def _float_copy(model: nn.Module) -> nn.Module:
    _args.module("model", model)
    if not any(isinstance(m, nn.Linear) for m in model.modules()):
        raise ValueError("model has nothing to quantize: no nn.Linear layer")
    return copy.deepcopy(model).eval().cpu()


def torch_int8(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every ``nn.Linear`` swapped for PyTorch's dynamic int8 Linear.

    Weights: int8, one scale per tensor; activations: quantized per batch, uint8 with a 7-bit
    range on x86 (``reduce_range``), so the int8 x int8 products cannot overflow the kernels'
    16-bit intermediate sums.
    """
    return torch.ao.quantization.quantize_dynamic(_float_copy(model), {nn.Linear}, dtype=torch.qint8)


def torchao_int8(model: nn.Module, *, weight_only: bool = False, device=None, compile: bool = False) -> nn.Module:
    """A copy of ``model`` quantized by torchao: int8 dynamic activations and int8 weights, or
    int8 weights only (activations stay float), on ``device`` (default: the CPU); wrapped in
    ``torch.compile`` if ``compile`` (the first call then compiles: tens of seconds)."""
    _args.boolean("compile", compile)
    with quiet_loggers("torchao", "torch.utils._pytree"):  # its CUDA-only extensions fail to load on a CPU: expected
        from torchao.quantization import (
            Int8DynamicActivationInt8WeightConfig,
            Int8WeightOnlyConfig,
            quantize_,
        )

    m = _float_copy(model).to(torch.device(device) if device is not None else "cpu")
    quantize_(m, Int8WeightOnlyConfig() if weight_only else Int8DynamicActivationInt8WeightConfig())
    return torch.compile(m) if compile else m


def build_runtimes(model: nn.Module, example_inputs, *, names: Sequence[str] = RUNTIMES,
                   workdir: str | Path | None = None, device=None) -> dict[str, Runtime]:
    """Build the runtimes ``names`` from the float ``model`` (which is left untouched).

    ``device`` (default: the CPU) is where ``fp32`` and the torchao runtimes run - give a GPU to
    see what torchao was written for; the other int8 paths are CPU-only. ONNX files go to
    ``workdir`` (default: a fresh temporary folder that stays for the session).
    """
    fp32 = _float_copy(model)
    inputs = _args.tensors("example_inputs", example_inputs)
    for i, n in enumerate(_args.sequence("names", names, non_empty=True)):
        _args.choice(f"names[{i}]", n, RUNTIMES + COMPILED_RUNTIMES)
    dev = str(check_device(device)) if device is not None else "cpu"
    workdir = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="labkit_runtimes_"))
    out: dict[str, Runtime] = {}
    onnx_fp32 = None
    for name in names:
        if name == "fp32":
            m = copy.deepcopy(fp32).to(dev)
            out[name] = Runtime(name, m, size_on_disk(m), device=dev, note=f"torch fp32 (eager) on {dev}")
        elif name == "torch_int8":
            m = torch_int8(fp32)
            out[name] = Runtime(name, m, size_on_disk(m),
                                note=f"torch.ao quantize_dynamic, {torch.backends.quantized.engine} engine (deprecated API)")
        elif name in ("onnx_fp32", "onnx_int8"):
            if onnx_fp32 is None:
                onnx_fp32 = export(fp32, inputs, workdir / "model_fp32.onnx")
            path = onnx_fp32 if name == "onnx_fp32" else quantize_onnx(onnx_fp32, workdir / "model_int8.onnx")
            m = OnnxModule(path)
            out[name] = Runtime(name, m, m.size_bytes, note="ONNX Runtime, CPU" + (", dynamic int8" if name == "onnx_int8" else ""))
        elif name.startswith("torchao"):
            compiled = name.endswith("_compiled")
            m = torchao_int8(fp32, weight_only="weight_only" in name, device=dev, compile=compiled)
            size = size_on_disk(m._orig_mod if compiled else m)
            out[name] = Runtime(name, m, size, device=dev, note=f"torchao on {dev}" + (", torch.compile" if compiled else ", eager"))
        else:  # labkit_int8
            m = quantize_(copy.deepcopy(fp32), DynamicActivationConfig())
            out[name] = Runtime(name, m, size_on_disk(m), note="labkit int8 storage, float compute (a simulation)")
    return out


def measure_runtimes(runtimes: Mapping[str, Runtime], inputs, *, data: Iterable | None = None, rounds: int = 3,
                     min_run_time: float = 0.2, reference: str = "fp32") -> list[dict]:
    """One row per runtime: size (MB and ``x smaller`` than the reference), median latency (ms),
    speed-up over the reference, max ``|output - reference output|`` and, given ``data`` (a
    loader), accuracy. Latencies are taken in ``rounds`` interleaved rounds; the speed-up is the
    median of the per-round ratios."""
    _args.mapping("runtimes", runtimes, non_empty=True, what="a dict of name -> Runtime (from build_runtimes)")
    for name, r in runtimes.items():
        _args.instance(f"runtimes[{name!r}]", r, Runtime)
    inputs = _args.tensors("inputs", inputs)
    if reference not in runtimes:
        raise ValueError(f"reference {reference!r} is not among the runtimes {list(runtimes)}")
    _args.positive_int("rounds", rounds)
    _args.positive_float("min_run_time", min_run_time)
    if data is not None:
        _args.iterable("data", data, "an iterable of (x, y) batches")
    on = {n: tuple(t.to(r.device) for t in inputs) for n, r in runtimes.items()}
    calls = {n: inference_call(r.module, on[n], r.device) for n, r in runtimes.items()}
    times = timing.compare({n: run for n, (run, _) in calls.items()}, rounds=rounds,
                    device={n: dev for n, (_, dev) in calls.items()}, min_run_time=min_run_time, warmup=2,
                    reference=reference)
    with torch.inference_mode():
        ref_out = runtimes[reference].module(*on[reference]).cpu()
    ref = runtimes[reference]
    rows = []
    for n, r in runtimes.items():
        with torch.inference_mode():
            diff = compare(ref_out, r.module(*on[n]).cpu())["max_abs_diff"]
        row = {"runtime": n, "size_mb": r.size_bytes / 1e6, "size_ratio": ref.size_bytes / r.size_bytes,
               "latency_ms": times[n]["median"] * 1e3, "speedup": times[n]["speedup"],
               "max_abs_diff": diff, "device": r.device, "note": r.note}
        if data is not None:
            row["accuracy"] = evaluate(r.module, data, device=r.device)["accuracy"]
        rows.append(row)
    return rows


def format_rows(rows: Sequence[Mapping], columns: Sequence[str] = ("runtime", "size_mb", "size_ratio", "latency_ms",
                                                                    "speedup", "max_abs_diff", "accuracy")) -> str:
    """A plain-text table of :func:`measure_runtimes` rows (missing columns left out)."""
    _args.rows("rows", rows)
    _args.sequence("columns", columns, of=str)
    cols = [c for c in columns if any(c in r for r in rows)]
    cells = [[c for c in cols]] + [[_fmt(r.get(c, "")) for c in cols] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cols))]
    return "\n".join("  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(row, widths)))
                     for row in cells)


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v)
