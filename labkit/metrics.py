"""Measures of a model: parameters, size on disk, FLOPs, latency - one row per model.

The compression lessons (05 pruning, 06 quantization, 07 distillation, 08 capstone) compare
models with :func:`model_report`; every figure is measured here, on this machine, at run time.
"""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from labkit import _args
from labkit.models import count_parameters
from labkit.timing import Timing, compare, time_fn

__all__ = ["count_parameters", "count_flops", "size_on_disk", "flops", "latency", "model_report", "compare_latency"]


def _check_model(model) -> None:
    _args.module("model", model)


def size_on_disk(model_or_state, *, path: str | os.PathLike | None = None) -> int:
    """Bytes of ``torch.save(state_dict)`` - what the model costs to store or ship.

    Given a path, the file is written there and its size returned; otherwise it is measured in
    memory. Quantized and sparse tensors are saved in their own (smaller) formats.
    """
    if path is not None:
        torch.save(_state(model_or_state), path)
        return Path(path).stat().st_size
    return len(state_bytes(model_or_state))


def _state(model_or_state) -> dict:
    state = model_or_state.state_dict() if isinstance(model_or_state, nn.Module) else model_or_state
    if not isinstance(state, dict):
        raise TypeError(f"model_or_state must be an nn.Module or a state dict, got {type(model_or_state).__name__}")
    return state


def state_bytes(model_or_state) -> bytes:
    """The bytes ``torch.save(state_dict)`` writes, kept in memory (what :func:`size_on_disk` counts)."""
    buf = io.BytesIO()
    torch.save(_state(model_or_state), buf)
    return buf.getvalue()


def file_size(path: str | os.PathLike) -> int:
    """Size of a file on disk in bytes (for exported ONNX models and the like)."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"no such file: {p}")
    return p.stat().st_size


def flops(model: nn.Module, inputs: tuple | torch.Tensor | None = None) -> int:
    """FLOPs of one forward pass on ``inputs`` (default: the model's ``example_inputs()``)."""
    _check_model(model)
    if inputs is None:
        if not hasattr(model, "example_inputs"):
            raise ValueError("pass inputs=: this model has no example_inputs()")
        inputs = model.example_inputs()
    with torch.no_grad():
        return count_flops(model, inputs)


def latency(model: nn.Module, inputs: tuple | torch.Tensor, *, device=None, threads: int | None = None,
            min_run_time: float = 0.3) -> Timing:
    """Median inference latency of ``model(*inputs)`` in eval mode under ``torch.inference_mode``."""
    run, dev = inference_call(model, inputs, device)
    return time_fn(run, device=dev, threads=threads, min_run_time=min_run_time, label=type(model).__name__)


def inference_call(model: nn.Module, inputs, device) -> tuple:
    """``(run, device)``: ``run()`` calls ``model(*inputs)`` in eval mode under inference_mode."""
    _check_model(model)
    inputs = _args.tensors("inputs", inputs)
    dev = torch.device(device) if device is not None else inputs[0].device
    model.eval()

    def run():
        with torch.inference_mode():
            model(*inputs)

    return run, dev


def model_report(name: str, model: nn.Module, inputs: tuple | torch.Tensor, *, accuracy: float | None = None,
                 device=None, threads: int | None = None, min_run_time: float = 0.3, count_ops: bool = True) -> dict:
    """One comparable row: parameters, size on disk (MB), FLOPs, latency (ms) and accuracy."""
    _args.text("name", name)
    _check_model(model)
    _args.tensors("inputs", inputs)
    if accuracy is not None:
        _args.fraction("accuracy", accuracy)
    row = {"model": name, "params": count_parameters(model), "size_mb": size_on_disk(model) / 1e6}
    if count_ops:
        try:
            row["mflops"] = flops(model, inputs) / 1e6
        except Exception:  # quantized kernels have no FLOP formula registered
            row["mflops"] = float("nan")
    t = latency(model, inputs, device=device, threads=threads, min_run_time=min_run_time)
    row["latency_ms"] = t.median * 1e3
    row["latency_iqr_ms"] = t.iqr * 1e3
    if accuracy is not None:
        row["accuracy"] = accuracy
    return row


def compare_latency(models: Mapping[str, nn.Module], inputs: tuple | torch.Tensor, *, rounds: int = 3, device=None,
                    threads: int | None = None, min_run_time: float = 0.3) -> dict[str, dict[str, float]]:
    """Latency of several models timed in alternating rounds: ``{name: {latency_ms, speedup}}``.

    Each round times every model once (:func:`labkit.timing.compare`, the way :func:`latency`
    calls it). A model's ``latency_ms`` is its median over the rounds and its ``speedup`` the
    median of the per-round ratios ``latency(first model) / latency(model)``: a burst of
    background load slows the models of one round alike, so the ratio survives a noisy machine
    better than two separate timings. Used by the compression lessons (``05_pruning`` onwards).
    """
    _args.mapping("models", models, non_empty=True, what="a dict {name: model}")
    _args.tensors("inputs", inputs)
    _args.positive_int("rounds", rounds)
    calls = {name: inference_call(model, inputs, device) for name, model in models.items()}
    times = compare({name: run for name, (run, _) in calls.items()}, rounds=rounds,
                    device={name: dev for name, (_, dev) in calls.items()}, threads=threads,
                    min_run_time=min_run_time, warmup=2)
    return {name: {"latency_ms": t["median"] * 1e3, "speedup": t["speedup"]} for name, t in times.items()}


def temp_path(suffix: str) -> Path:
    """A fresh path in the system's temp folder (for exports the notebook measures then drops)."""
    fd, name = tempfile.mkstemp(suffix=suffix)
    os.close(fd)
    return Path(name)


def count_flops(model: torch.nn.Module, inputs: tuple | torch.Tensor, *, backward: bool = False) -> int:
    """FLOPs of one forward (and backward, if asked) pass, counted by ``torch.utils.flop_counter``."""
    _check_model(model)
    inputs = _args.tensors("inputs", inputs)
    _args.boolean("backward", backward)
    counter = FlopCounterMode(display=False)
    with counter:
        out = model(*inputs)
        if backward:
            out.sum().backward()
    return int(counter.get_total_flops())


def storage_key(t: torch.Tensor) -> tuple[int, int]:
    """``(address, bytes)`` of the storage behind ``t``: views of one tensor share it."""
    s = t.untyped_storage()
    return (s.data_ptr(), s.nbytes())


def tensor_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes of the distinct storages behind ``tensors`` (views and repeats counted once)."""
    seen = {}
    for t in tensors:
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"expected tensors, got {type(t).__name__}")
        seen[storage_key(t)] = t.untyped_storage().nbytes()
    return sum(seen.values())
