"""Export a model to ONNX, run it with ONNX Runtime, compare outputs, quantize it for deployment.

ONNX is a file format for a network's graph and weights that many runtimes execute; ONNX
Runtime (ORT) is Microsoft's, fast on CPUs, and its *dynamic quantization* (int8 weights,
activations quantized per batch, ``MatMulInteger`` / ``ConvInteger`` kernels) is the maintained
way to ship an int8 model to a CPU::

    path = export(model, model.example_inputs(8), "model.onnx")   # torch.onnx.export (dynamo)
    out = run_onnx(path, x)                                         # a torch tensor
    compare(model(x), out)                                          # max |diff|, same argmax?
    q = quantize_onnx(path, "model.int8.onnx")                      # ORT dynamic int8

:class:`OnnxModule` wraps an ORT session as an ``nn.Module``, so the course's evaluation and
timing helpers (``labkit.train.evaluate``, ``labkit.metrics.latency``) work on it unchanged.
Used by ``notebooks/06_quantization.ipynb`` and the capstone (``08``).
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from labkit import _args


@contextlib.contextmanager
def quiet_loggers(*names: str, level: int = logging.ERROR):
    """Raise third-party loggers to ``level`` for the duration of a block, then restore them
    (ONNX export and torchao's import log warnings about optional GPU / torchvision parts)."""
    loggers = [logging.getLogger(n) for n in names]
    old = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(level)
    try:
        yield
    finally:
        for lg, lvl in zip(loggers, old):
            lg.setLevel(lvl)


def _inputs(example_inputs, name: str = "example_inputs") -> tuple[torch.Tensor, ...]:
    return _args.tensors(name, example_inputs)


def export(model: nn.Module, example_inputs, path: str | os.PathLike, *, dynamic_batch: bool = True,
           opset: int | None = None) -> Path:
    """Export ``model`` (in eval mode, on the CPU) to one self-contained ONNX file at ``path``.

    Uses ``torch.onnx.export(dynamo=True)``, the maintained exporter (it traces the model with
    ``torch.export``). With ``dynamic_batch`` the first dimension of every input may vary at run
    time. Weights are stored inside the file (no ``.data`` side file), so its size is the
    model's size on disk.
    """
    _args.module("model", model)
    inputs = tuple(t.detach().cpu() for t in _inputs(example_inputs))
    path = _args.path("path", path, suffix=".onnx")
    _args.boolean("dynamic_batch", dynamic_batch)
    if opset is not None:
        _args.positive_int("opset", opset)
    path.parent.mkdir(parents=True, exist_ok=True)
    dynamic_shapes = None
    if dynamic_batch:
        # torch.export treats a size of 1 as a constant: trace with a batch of 2 instead
        inputs = tuple(t.repeat(2, *([1] * (t.dim() - 1))) if t.dim() and t.shape[0] == 1 else t for t in inputs)
        dynamic_shapes = tuple({0: torch.export.Dim("batch")} for _ in inputs)
    was_training = model.training
    model = model.eval().cpu()
    try:
        with quiet_loggers("torch.onnx"):  # "torchvision is not installed, skipping its ops": irrelevant here
            torch.onnx.export(model, inputs, str(path), dynamo=True, external_data=False, dynamic_shapes=dynamic_shapes,
                              input_names=[f"input{i}" for i in range(len(inputs))], opset_version=opset, verbose=False)
    finally:
        model.train(was_training)
    return path


def onnx_session(path: str | os.PathLike, *, threads: int | None = None, providers: list[str] | None = None):
    """An ``onnxruntime.InferenceSession`` on the CPU with ``threads`` intra-op threads
    (default: ``torch.get_num_threads()``, so ORT and PyTorch are timed on equal terms)."""
    import onnxruntime as ort

    p = _args.path("path", path, must_exist=True)
    if threads is not None:
        _args.positive_int("threads", threads)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or torch.get_num_threads()
    opts.log_severity_level = 3  # errors only
    return ort.InferenceSession(str(p), opts, providers=providers or ["CPUExecutionProvider"])


def run_onnx(model, inputs) -> torch.Tensor | tuple[torch.Tensor, ...]:
    """Run an ONNX file (path), session or :class:`OnnxModule` on ``inputs``; torch tensor(s) out."""
    if isinstance(model, OnnxModule):
        session = model.session
    elif isinstance(model, (str, os.PathLike)):
        session = onnx_session(model)
    elif hasattr(model, "run") and hasattr(model, "get_inputs"):
        session = model
    else:
        raise TypeError(f"model must be an ONNX path, an InferenceSession or an OnnxModule, got {type(model).__name__}")
    inputs = _inputs(inputs, "inputs")
    names = [i.name for i in session.get_inputs()]
    if len(names) != len(inputs):
        raise ValueError(f"the ONNX model takes {len(names)} input(s), got {len(inputs)}")
    feed = {n: t.detach().cpu().numpy() for n, t in zip(names, inputs)}
    outs = tuple(torch.from_numpy(np.asarray(o)) for o in session.run(None, feed))
    return outs[0] if len(outs) == 1 else outs


class OnnxModule(nn.Module):
    """An ONNX Runtime session behind an ``nn.Module`` interface (inference only, CPU tensors)."""

    def __init__(self, path: str | os.PathLike, *, threads: int | None = None):
        super().__init__()
        self.path = _args.path("path", path, must_exist=True)
        self.session = onnx_session(self.path, threads=threads)

    @property
    def size_bytes(self) -> int:
        """Size of the ONNX file on disk."""
        return self.path.stat().st_size

    def forward(self, *inputs):
        return run_onnx(self.session, inputs)

    def extra_repr(self) -> str:
        return f"{self.path.name}, {self.size_bytes / 1e6:.2f} MB"


def compare(reference: torch.Tensor, candidate: torch.Tensor, *, atol: float = 1e-4, rtol: float = 1e-3) -> dict:
    """How close two outputs are: max and mean ``|diff|``, ``allclose`` within (atol, rtol),
    and for logits (2-D) the fraction of rows whose argmax (predicted class) agrees."""
    _args.tensor("reference", reference)
    _args.tensor("candidate", candidate)
    atol, rtol = _args.non_negative_float("atol", atol), _args.non_negative_float("rtol", rtol)
    ref, cand = reference.detach().cpu().float(), candidate.detach().cpu().float()
    if ref.shape != cand.shape:
        raise ValueError(f"shapes differ: reference {tuple(ref.shape)} vs candidate {tuple(cand.shape)}")
    diff = (ref - cand).abs()
    out = {"max_abs_diff": float(diff.max()) if diff.numel() else 0.0,
           "mean_abs_diff": float(diff.mean()) if diff.numel() else 0.0,
           "allclose": bool(torch.allclose(cand, ref, atol=atol, rtol=rtol))}
    if ref.dim() == 2:
        out["same_argmax"] = float((ref.argmax(1) == cand.argmax(1)).float().mean())
    return out


def quantize_onnx(path: str | os.PathLike, out_path: str | os.PathLike, *, per_channel: bool = False,
                  weight_type: str = "int8") -> Path:
    """ONNX Runtime's dynamic quantization: int8 (or uint8) weights, activations quantized per
    batch at run time (``MatMulInteger`` / ``ConvInteger``). Returns ``out_path``.

    ORT's recommended pre-pass (shape inference, graph clean-up) runs first, into a temporary
    file; ``per_channel`` gives each output channel its own weight scale."""
    import tempfile

    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    types = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}
    src = _args.path("path", path, must_exist=True)
    dst = _args.path("out_path", out_path, suffix=".onnx")
    _args.boolean("per_channel", per_channel)
    _args.choice("weight_type", weight_type, sorted(types))
    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(src), str(pre))
        quantize_dynamic(str(pre), str(dst), per_channel=per_channel, weight_type=types[weight_type])
    return dst
