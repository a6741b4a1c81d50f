"""Compress one model end to end and account for every step (the capstone, ``08``).

The steps themselves come from the lessons - :func:`labkit.distill.distill` (07),
:class:`labkit.prune.ChannelPruner` (05), :func:`labkit.quantize.quantize_` (06),
:func:`labkit.export.export` (06). This module adds what only the pipeline needs:

* :func:`fold_batchnorm` - fold each BatchNorm into the convolution before it (exact in eval
  mode: ``W' = W * g / sqrt(var + eps)``, ``b' = (b - mean) * g / sqrt(var + eps) + beta``),
  one fewer layer to run and to store;
* :func:`compressed_size` - bytes after a general-purpose entropy coder (LZMA), the stand-in for
  the Huffman coding stage of Deep Compression (Han et al. 2016);
* :func:`onnx_with_int8_weights` - an exported float ONNX graph rewritten to store labkit's int8
  codes and per-channel scales, each weight rebuilt by a ``DequantizeLinear`` node;
  :func:`load_int8_weight_onnx` runs it with those nodes folded at load time; and
  :func:`strip_onnx_metadata` drops the exporter's per-node debug information (~10 kB);
* :func:`measure_steps` - one row per step (parameters, size, FLOPs, latency timed in
  interleaved rounds, accuracy), :func:`step_gains` (what each step bought over the previous
  one) and :func:`pareto_front`.
"""

from __future__ import annotations

import copy
import lzma
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from labkit import _args
from labkit.export import OnnxModule
from labkit.metrics import compare_latency, flops, size_on_disk, state_bytes
from labkit.models import count_parameters
from labkit.quantize import quantized_layers
from labkit.train import evaluate


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of ``model`` (in eval mode) with every ``Conv2d -> BatchNorm2d`` pair inside an
    ``nn.Sequential`` fused into one ``Conv2d``; the BatchNorm's slot becomes ``nn.Identity``.

    Outputs are unchanged in eval mode (up to float rounding). Uses PyTorch's
    ``torch.nn.utils.fusion.fuse_conv_bn_eval``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    folded = copy.deepcopy(model).eval()
    n = 0
    for seq in [m for m in folded.modules() if isinstance(m, nn.Sequential)]:
        names = list(seq._modules)
        for prev, cur in zip(names, names[1:]):
            conv, bn = seq._modules[prev], seq._modules[cur]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                if bn.running_mean is None:
                    raise ValueError(f"BatchNorm {cur!r} keeps no running statistics: nothing to fold")
                seq._modules[prev] = fuse_conv_bn_eval(conv, bn)
                seq._modules[cur] = nn.Identity()
                n += 1
    if n == 0:
        raise ValueError("model has no Conv2d -> BatchNorm2d pair inside an nn.Sequential to fold")
    return folded


def compressed_size(model_or_path, *, preset: int = 9) -> int:
    """Bytes of the model's file after LZMA compression (``torch.save`` bytes for a module or a
    state dict, the file's bytes for a path). Int8 codes and pruned zeros compress; random-looking
    float32 weights hardly do."""
    _args.integer("preset", preset, minimum=0, maximum=9)
    if isinstance(model_or_path, (str, os.PathLike)):
        data = _args.path("model_or_path", model_or_path, must_exist=True).read_bytes()
    elif isinstance(model_or_path, (nn.Module, dict)):
        data = state_bytes(model_or_path)
    else:
        raise TypeError(f"model_or_path must be an nn.Module, a state dict or a file path, got {type(model_or_path).__name__}")
    return len(lzma.compress(data, preset=preset))


# --- ONNX deployment -----------------------------------------------------------------------------


def strip_onnx_metadata(path: str | os.PathLike, out_path: str | os.PathLike | None = None) -> Path:
    """Drop doc strings and metadata (source stack traces the exporter attaches to every node);
    the graph and weights are untouched. Writes ``out_path`` (default: in place)."""
    import onnx

    src = _args.path("path", path, must_exist=True)
    if out_path is not None:
        _args.path("out_path", out_path, suffix=".onnx")
    m = onnx.load(str(src))
    m.doc_string = ""
    del m.metadata_props[:]
    graphs = [m.graph]
    while graphs:
        g = graphs.pop()
        g.doc_string = ""
        del g.metadata_props[:]
        for value in (*g.input, *g.output, *g.value_info):
            value.doc_string = ""
            del value.metadata_props[:]
        for node in g.node:
            node.doc_string = ""
            del node.metadata_props[:]
            graphs += [a.g for a in node.attribute if a.HasField("g")]
    dst = Path(out_path) if out_path is not None else src
    onnx.save(m, str(dst))
    return dst


def onnx_with_int8_weights(float_path: str | os.PathLike, quantized: nn.Module, out_path: str | os.PathLike) -> Path:
    """Rewrite an exported float ONNX file so each weight of a labkit-quantized layer is stored
    as its int8 codes and per-channel scales, rebuilt at run time by ``DequantizeLinear``
    (``w = scale * code``, axis 0). ``quantized`` is the model after ``quantize_`` with 8-bit
    symmetric per-channel or per-tensor weights; ``float_path`` is an export of the same model
    before quantization (initializers named ``<layer>.weight``). ORT then computes in float with
    exactly labkit's dequantized weights: the file shrinks, the outputs match labkit's."""
    import onnx
    from onnx import helper, numpy_helper

    src = _args.path("float_path", float_path, must_exist=True)
    _args.module("quantized", quantized)
    _args.path("out_path", out_path, suffix=".onnx")
    layers = dict(quantized_layers(quantized))
    if not layers:
        raise ValueError("quantized must be a model with labkit-quantized layers (run labkit.quantize.quantize_ first)")
    m = onnx.load(str(src))
    inits = {i.name: i for i in m.graph.initializer}
    new_nodes = []
    for name, layer in layers.items():
        spec = getattr(layer, "spec", None)
        if spec is None or spec.bits != 8 or not spec.symmetric or spec.granularity not in ("per_channel", "per_tensor"):
            raise ValueError(f"layer {name!r}: only 8-bit symmetric per-channel / per-tensor weights can be stored, got {spec}")
        key = f"{name}.weight"
        if key not in inits:
            raise ValueError(f"the ONNX file has no initializer {key!r}: export the same model before quantization")
        old = inits[key]
        if tuple(old.dims) != tuple(layer.weight_shape):
            raise ValueError(f"{key}: ONNX shape {tuple(old.dims)} differs from the layer's {layer.weight_shape}")
        codes = layer.weight_int().reshape(layer.weight_shape).to(torch.int8).numpy()
        scale = layer.weight_scale.detach().float().reshape(-1).numpy()
        m.graph.initializer.remove(old)
        m.graph.initializer.extend([numpy_helper.from_array(codes, f"{key}_int8"),
                                    numpy_helper.from_array(scale, f"{key}_scale")])
        kwargs = {"axis": 0} if scale.size > 1 else {}
        new_nodes.append(helper.make_node("DequantizeLinear", [f"{key}_int8", f"{key}_scale"], [key],
                                          name=f"{key}_dequantize", **kwargs))
    nodes = list(m.graph.node)
    del m.graph.node[:]
    m.graph.node.extend(new_nodes + nodes)  # the weights must exist before the layers that read them
    onnx.checker.check_model(m)
    dst = Path(out_path)
    if dst.suffix != ".onnx":
        raise ValueError(f"out_path must end in .onnx, got {dst}")
    onnx.save(m, str(dst))
    return dst


def load_int8_weight_onnx(path: str | os.PathLike, *, threads: int | None = None):
    """An :class:`labkit.export.OnnxModule` for a file from :func:`onnx_with_int8_weights` whose
    ONNX Runtime session folds the constant ``DequantizeLinear`` nodes once, at load time.

    By default ORT keeps ``DequantizeLinear`` nodes (it wants to fuse them into integer kernels),
    so the float weights are rebuilt on every call and the convolutions cannot use weights
    pre-packed for the CPU's vector layout (NCHWc). The session option ``session.disable_quant_qdq``
    lets ORT treat them as constants: the file keeps int8, the memory holds float, and the model
    runs as fast as the float export. The outputs are the same.
    """
    import onnxruntime as ort

    _args.path("path", path, must_exist=True)
    module = OnnxModule(path, threads=threads)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or torch.get_num_threads()
    opts.log_severity_level = 3
    opts.add_session_config_entry("session.disable_quant_qdq", "1")
    module.session = ort.InferenceSession(str(module.path), opts, providers=["CPUExecutionProvider"])
    return module


# --- accounting ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    """One model of the pipeline. Its size is ``size_on_disk(model)`` (``torch.save`` of the
    state dict) or, given ``path`` (an exported file), that file's size. ``reference`` is the
    float model whose parameter count and FLOPs describe this one (quantized layers keep their
    weights as buffers, and an ONNX Runtime session has no FLOP counter)."""

    name: str
    model: nn.Module
    path: str | os.PathLike | None = None
    reference: nn.Module | None = None
    note: str = ""

    def __post_init__(self):
        _args.text("name", self.name)
        _args.module("model", self.model)
        if self.reference is not None:
            _args.module("reference", self.reference)
        if self.path is not None:
            _args.path("path", self.path, must_exist=True)
        _args.text("note", self.note, non_empty=False)

    def size_bytes(self) -> int:
        return Path(self.path).stat().st_size if self.path is not None else size_on_disk(self.model)

    def lzma_bytes(self) -> int:
        return compressed_size(self.path if self.path is not None else self.model)


def measure_steps(steps: Sequence[Step], inputs, *, data: Iterable | None = None, rounds: int = 3,
                  threads: int | None = None, min_run_time: float = 0.2) -> list[dict]:
    """One row per step: ``params``, ``size_kb``, ``x_smaller`` (than the first step),
    ``lzma_kb``, ``mflops`` (per image), ``latency_ms`` and ``speedup`` (median of per-round
    ratios to the first step, :func:`labkit.metrics.compare_latency`) and ``accuracy`` on
    ``data``. Timing is on the CPU, for the whole batch ``inputs``."""
    _args.sequence("steps", steps, of=Step, non_empty=True, what="a list of labkit.compress.Step")
    names = [s.name for s in steps]
    if len(set(names)) != len(names):
        raise ValueError(f"step names must be unique, got {names}")
    inputs = _args.tensors("inputs", inputs)
    if data is not None:
        _args.iterable("data", data, "an iterable of (x, y) batches")
    one = tuple(t[:1] for t in inputs)
    times = compare_latency({s.name: s.model for s in steps}, inputs, rounds=rounds, threads=threads,
                            min_run_time=min_run_time)
    rows = []
    for s in steps:
        ref = s.reference if s.reference is not None else s.model
        row = {"step": s.name, "params": count_parameters(ref), "size_kb": s.size_bytes() / 1e3,
               "lzma_kb": s.lzma_bytes() / 1e3,
               "mflops": flops(ref, one) / 1e6, **times[s.name], "note": s.note}
        if data is not None:
            row["accuracy"] = evaluate(s.model, data, device="cpu")["accuracy"]
        rows.append(row)
    base = rows[0]["size_kb"]
    for r in rows:
        r["x_smaller"] = base / r["size_kb"]
    return rows


def step_gains(rows: Sequence[Mapping]) -> list[dict]:
    """What each step bought over the one before: size and latency factors (>1 = better) and
    the accuracy change in points."""
    _args.rows("rows", rows, keys=("step", "size_kb", "latency_ms", "mflops"))
    if len(rows) < 2:
        raise ValueError(f"rows: need at least two rows to compare steps, got {len(rows)}")
    out = []
    for prev, cur in zip(rows, rows[1:]):
        g = {"step": cur["step"], "smaller_x": prev["size_kb"] / cur["size_kb"],
             "faster_x": prev["latency_ms"] / cur["latency_ms"], "fewer_flops_x": prev["mflops"] / cur["mflops"]}
        if "accuracy" in cur and "accuracy" in prev:
            g["accuracy_pts"] = 100 * (cur["accuracy"] - prev["accuracy"])
        out.append(g)
    return out


def pareto_front(rows: Sequence[Mapping], *, x: str, y: str = "accuracy") -> list[str]:
    """Steps no other step beats on both ``x`` (lower is better) and ``y`` (higher is better)."""
    _args.text("x", x)
    _args.text("y", y)
    _args.rows("rows", rows, keys=("step", x, y))
    front = []
    for r in rows:
        dominated = any(o[x] <= r[x] and o[y] >= r[y] and (o[x] < r[x] or o[y] > r[y]) for o in rows)
        if not dominated:
            front.append(r["step"])
    return front


def format_table(rows: Sequence[Mapping], columns: Sequence[str] = ("step", "params", "size_kb", "x_smaller", "lzma_kb",
                                                                     "mflops", "latency_ms", "speedup", "accuracy")) -> str:
    """A plain-text table of :func:`measure_steps` rows."""
    _args.rows("rows", rows)
    _args.sequence("columns", columns, of=str)
    cols = [c for c in columns if any(c in r for r in rows)]

    def fmt(v):
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
        return str(v)

    cells = [list(cols)] + [[fmt(r.get(c, "")) for c in cols] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cols))]
    return "\n".join("  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(row, widths)))
                     for row in cells)
