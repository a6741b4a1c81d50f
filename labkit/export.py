"""Export a model to ONNX, run it with ONNX Runtime, compare outputs, quantize it for deployment.

ONNX is a file format for a network's graph and weights that many runtimes execute; ONNX
Runtime (ORT) is Microsoft's, fast on CPUs, and its quantization tools are the maintained way to
ship an int8 model to a CPU. It has two:

* *dynamic* (:func:`quantize_onnx`): int8 weights; each activation's range is measured on every
  batch at run time (``DynamicQuantizeLinear``), then ``ConvInteger`` / ``MatMulInteger``, and the
  result goes back to float. No calibration data; ORT recommends it for RNNs and transformers.
* *static* (:func:`quantize_onnx_static`): activation ranges are fixed beforehand from
  calibration batches and written into the graph as ``QuantizeLinear`` / ``DequantizeLinear``
  pairs (the QDQ format); ORT then fuses ``DQ -> Conv -> Q`` into ``QLinearConv``, so the network
  computes in int8 from one layer to the next. ORT recommends it for CNNs.

:func:`runtime_ops` lists the operators ORT really runs after its graph optimizations, which is
how you check that a "quantized" model computes in int8::

    path = export(model, model.example_inputs(8), "model.onnx")   # torch.onnx.export (dynamo)
    out = run_onnx(path, x)                                         # a torch tensor
    compare(model(x), out)                                          # max |diff|, same argmax?
    q = quantize_onnx(path, "model.int8.onnx")                      # ORT dynamic int8
    s = quantize_onnx_static(path, "model.qdq.onnx", batches)       # ORT static int8 (QDQ)
    runtime_ops(s)                                                  # {'QLinearConv': 3, ...}

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
from labkit.devices import int8_saturation_risk


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
                  weight_type: str = "int8", reduce_range: bool | None = None) -> Path:
    """ONNX Runtime's dynamic quantization: int8 (or uint8) weights, activations quantized per
    batch at run time (``MatMulInteger`` / ``ConvInteger``). Returns ``out_path``.

    ``reduce_range`` quantizes weights to 7 bits; ``None`` turns it on where ORT's docs advise it,
    on x86 CPUs without VNNI whose u8 x s8 kernels can saturate
    (:func:`labkit.devices.int8_saturation_risk`).

    ORT's recommended pre-pass (shape inference, graph clean-up) runs first, into a temporary
    file; ``per_channel`` gives each output channel its own weight scale."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    types = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}
    _args.boolean("per_channel", per_channel)
    _args.choice("weight_type", weight_type, sorted(types))
    reduce = int8_saturation_risk() if reduce_range is None else _args.boolean("reduce_range", reduce_range)
    return _after_pre_process(path, out_path, lambda pre, dst: quantize_dynamic(
        pre, dst, per_channel=per_channel, weight_type=types[weight_type], reduce_range=reduce))


def _after_pre_process(path, out_path, quantize) -> Path:
    """Check the paths, run ORT's pre-pass into a temporary file, then ``quantize(pre, out)``."""
    import tempfile

    from onnxruntime.quantization.shape_inference import quant_pre_process

    src = _args.path("path", path, must_exist=True)
    dst = _args.path("out_path", out_path, suffix=".onnx")
    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(src), str(pre))
        quantize(str(pre), str(dst))
    return dst


class _CalibrationReader:
    """ORT's calibration-data-reader protocol (``get_next`` -> feed dict or ``None``) over batches."""

    def __init__(self, input_name: str, batches: list[np.ndarray]):
        self.input_name, self.batches, self.position = input_name, batches, 0

    def get_next(self):
        if self.position == len(self.batches):
            return None
        self.position += 1
        return {self.input_name: self.batches[self.position - 1]}

    def rewind(self):
        self.position = 0


def quantize_onnx_static(path: str | os.PathLike, out_path: str | os.PathLike, calibration, *,
                         per_channel: bool = True, method: str = "minmax") -> Path:
    """ONNX Runtime's static quantization in the QDQ format: int8 weights (per output channel by
    default) and uint8 activations whose scales come from ``calibration``, an iterable of input
    batches (tensors) for a one-input model. Returns ``out_path``.

    ``method``: ``"minmax"`` (the observed range), ``"entropy"`` or ``"percentile"`` (clip
    outliers). After ORT's graph optimizations the convolutions run as ``QLinearConv`` and the
    fully connected layers as ``QGemm`` (check with :func:`runtime_ops`). Used by ``08``."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    if method not in methods:
        raise ValueError(f"method must be one of {sorted(methods)}, got {method!r}")
    _args.path("path", path, must_exist=True)
    _args.path("out_path", out_path, suffix=".onnx")
    _args.boolean("per_channel", per_channel)
    if not isinstance(calibration, torch.Tensor):
        _args.iterable("calibration", calibration, what="a float tensor or an iterable of float tensors (input batches)")
    batches = [calibration] if isinstance(calibration, torch.Tensor) else list(calibration)
    if not batches or not all(isinstance(b, torch.Tensor) and b.is_floating_point() for b in batches):
        raise TypeError("calibration must be a float tensor or a non-empty iterable of float tensors (input batches)")
    inputs = onnx_session(path).get_inputs()
    if len(inputs) != 1:
        raise ValueError(f"quantize_onnx_static handles one-input models; this one takes {len(inputs)}")
    reader = _CalibrationReader(inputs[0].name, [b.detach().cpu().float().numpy() for b in batches])
    return _after_pre_process(path, out_path, lambda pre, dst: quantize_static(
        pre, dst, reader, quant_format=QuantFormat.QDQ, per_channel=per_channel, activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8, calibrate_method=methods[method]))


def runtime_ops(path: str | os.PathLike, *, session_options: dict[str, str] | None = None) -> dict[str, int]:
    """``{op type: count}`` of the graph ONNX Runtime actually runs for the file at ``path``, after
    its CPU graph optimizations (fusions such as ``DQ -> Conv -> Q`` into ``QLinearConv``).

    ``session_options``: extra session config entries (e.g. ``{"session.disable_quant_qdq": "1"}``).
    """
    import tempfile

    import onnx
    import onnxruntime as ort

    src = _args.path("path", path, must_exist=True)
    if session_options is not None:
        _args.mapping("session_options", session_options, what="a dict of session config entries (str -> str)")
    with tempfile.TemporaryDirectory() as tmp:
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        opts.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        for key, value in (session_options or {}).items():
            opts.add_session_config_entry(key, value)
        ort.InferenceSession(str(src), opts, providers=["CPUExecutionProvider"])
        graph = onnx.load(opts.optimized_model_filepath).graph
    counts: dict[str, int] = {}
    for node in graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts
