"""Compilation: what ``torch.compile`` costs up front, what it saves per step, and when it pays.

Lesson ``02_one_device_efficiency``. ``torch.compile`` traces Python into a graph (Dynamo),
and Inductor turns the graph into fused kernels (C++/OpenMP on a CPU, Triton on a GPU). The
first call pays the compile time C; each later step is faster by ``eager - compiled``, so::

    break-even steps = C / (t_eager - t_compiled)          (never, if compiled is not faster)

Fusion is where much of the speed comes from on pointwise chains: eagerly, each operation
reads its inputs from memory and writes its result back; a fused kernel reads the inputs once
and writes the output once, keeping the intermediates in registers::

    bytes moved = sum over ops of (tensors read + tensors written) x numel x element size  (eager)
                = (distinct inputs + outputs) x numel x element size                     (fused)

A compiled graph is specialised to the shapes it saw. Under automatic dynamic shapes (the
default) Dynamo compiles the first call with static sizes; at the **first change** of a size,
i.e. the second distinct shape, it recompiles once with that dimension marked dynamic (a
symbolic size), and later sizes reuse that graph: :func:`recompile_trace` shows it.

XLA (JAX, and PyTorch on TPUs through torch_xla) works the same way, but compiles the whole
program, always: TPUs only run compiled graphs, and a new input shape means a new compilation.
"""

from __future__ import annotations

import copy
import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from labkit import _args
from labkit.devices import check_device, synchronize
from labkit.timing import compare
from labkit.train import make_train_step

# The fusion example: add a bias, GELU, scale, add the input back (a residual).
# (tensors read, tensors written) per eager op, counting only full-size tensors:
CHAIN_OPS = (("add bias", 1, 1), ("gelu", 1, 1), ("mul 0.5", 1, 1), ("add x", 2, 1))


def pointwise_chain(x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``gelu(x + bias) * 0.5 + x``: four pointwise ops that Inductor fuses into one kernel."""
    _args.tensor("x", x, dtype="floating")
    _args.tensor("bias", bias, dtype="floating")
    return nn.functional.gelu(x + bias) * 0.5 + x


def traffic_bytes(numel: int, element_size: int = 4, *, ops: Sequence[tuple] = CHAIN_OPS, fused: bool = False,
                  inputs: int = 1, outputs: int = 1) -> int:
    """Bytes a chain of pointwise ``ops`` moves through memory, eagerly or fused (module doc)."""
    for name, v in (("numel", numel), ("element_size", element_size), ("inputs", inputs), ("outputs", outputs)):
        _args.positive_int(name, v)
    _args.boolean("fused", fused)
    if fused:
        return (inputs + outputs) * numel * element_size
    return sum(reads + writes for _, reads, writes in ops) * numel * element_size


def break_even_steps(compile_seconds: float, eager_step: float, compiled_step: float) -> float:
    """Steps after which compiling has paid for itself: ``C / (eager - compiled)``; ``inf`` if
    the compiled step is not faster."""
    for name, v in (("compile_seconds", compile_seconds), ("eager_step", eager_step), ("compiled_step", compiled_step)):
        _args.non_negative_float(name, v)
    saved = eager_step - compiled_step
    return compile_seconds / saved if saved > 0 else math.inf


@dataclass(frozen=True)
class CompileReport:
    """Compile time and per-step times (seconds) of one function, eager vs compiled."""

    label: str
    compile_seconds: float
    eager: float
    compiled: float
    error: str = ""  # why compilation failed, if it did (then the times are eager only)

    def __post_init__(self):
        _args.fields(self)

    @property
    def ok(self) -> bool:
        return not self.error

    @property
    def speedup(self) -> float:
        return self.eager / self.compiled if self.ok and self.compiled > 0 else math.nan

    @property
    def break_even(self) -> float:
        return break_even_steps(self.compile_seconds, self.eager, self.compiled) if self.ok else math.inf

    def __str__(self) -> str:
        if not self.ok:
            return f"{self.label}: torch.compile failed here ({self.error}); eager step {self.eager * 1e3:.2f} ms"
        be = "never" if math.isinf(self.break_even) else f"{self.break_even:,.0f} steps"
        return (f"{self.label}: compile {self.compile_seconds:.1f} s; step {self.eager * 1e3:.2f} ms eager -> "
                f"{self.compiled * 1e3:.2f} ms compiled ({self.speedup:.2f}x); pays back after {be}")


def compare_compiled(eager_fn: Callable[[], object], compiled_fn: Callable[[], object], *, label: str = "",
                     device=None, min_run_time: float = 0.3, rounds: int = 3) -> CompileReport:
    """Time ``compiled_fn``'s first call (which compiles), then both functions' steady steps.

    ``compile_seconds = first call - one compiled step``. Steady steps are timed in ``rounds``
    interleaved rounds (``labkit.timing.compare``). If compiling raises (no C++
    compiler, an unsupported operation), the error is caught and reported in the result.
    """
    _args.function("eager_fn", eager_fn)
    _args.function("compiled_fn", compiled_fn)
    _args.text("label", label, non_empty=False)
    _args.positive_float("min_run_time", min_run_time)
    _args.positive_int("rounds", rounds)
    dev = check_device(device) if device is not None else torch.device("cpu")
    start = time.perf_counter()
    try:
        compiled_fn()
        synchronize(dev)
    except Exception as err:  # e.g. torch._inductor.exc.InvalidCxxCompiler, BackendCompilerFailed
        last = str(err).strip().splitlines()
        eager = compare({"eager": eager_fn}, rounds=1, device=dev, min_run_time=min_run_time)["eager"]["median"]
        return CompileReport(label, math.nan, eager, math.nan, f"{type(err).__name__}: {last[0] if last else ''}"[:300])
    first = time.perf_counter() - start
    t = compare({"eager": eager_fn, "compiled": compiled_fn}, rounds=rounds, device=dev, min_run_time=min_run_time / rounds)
    eager, compiled = t["eager"]["median"], t["compiled"]["median"]
    return CompileReport(label, max(first - compiled, 0.0), eager, compiled)


def compile_training_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, loss_fn: Callable | None = None,
                          lr: float = 1e-2, mode: str | None = None, min_run_time: float = 0.3,
                          rounds: int = 3) -> CompileReport:
    """Compare a training step (forward, backward, SGD step) of ``model`` eager vs
    ``torch.compile(model)`` (forward and backward both compiled). A deep copy is compiled,
    so ``model`` itself stays eager."""
    _args.module("model", model)  # everything is checked before torch.compile starts its workers
    _args.tensor("x", x)
    _args.tensor("y", y)
    if loss_fn is not None:
        _args.function("loss_fn", loss_fn)
    _args.positive_float("lr", lr)
    _args.choice("mode", mode, (None, "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"))
    _args.positive_float("min_run_time", min_run_time)
    _args.positive_int("rounds", rounds)
    compiled = torch.compile(copy.deepcopy(model), mode=mode)
    eager_step, compiled_step = (make_train_step(m, x, y, loss_fn=loss_fn or nn.functional.cross_entropy, lr=lr,
                                                 device=x.device, copy_model=False) for m in (model, compiled))
    return compare_compiled(eager_step, compiled_step,
                            label=f"{type(model).__name__} training step", device=x.device, min_run_time=min_run_time,
                            rounds=rounds)


def inductor_cache_dir() -> Path | None:
    """Where Inductor caches compiled kernels on disk (a second run of a notebook compiles
    faster because of it), or None if this torch does not say."""
    try:
        from torch._inductor.runtime.cache_dir_utils import cache_dir
    except ImportError:
        return None
    return Path(cache_dir())


def generated_kernels(fn: Callable, *args) -> tuple[list[str], str]:
    """Compile ``fn``, run it on ``args`` and return ``(kernel names, generated source)``.

    Kernel names such as ``cpp_fused_add_gelu_mul_0`` list the operations fused into each."""
    _args.function("fn", fn)
    from torch._inductor.utils import run_and_get_code

    _, sources = run_and_get_code(torch.compile(fn), *args)
    code = "\n".join(sources)
    names = sorted(set(re.findall(r"\b((?:cpp|triton)_\w*fused\w*)\b", code)))
    return names, code


def kernel_excerpt(code: str, name: str, lines: int = 30) -> str:
    """The first ``lines`` lines of kernel ``name`` in Inductor's generated ``code``."""
    _args.text("code", code)
    _args.text("name", name)
    _args.positive_int("lines", lines)
    start = code.find(f"{name} = ")
    if start < 0:
        raise ValueError(f"no kernel named {name!r} in the generated code")
    return "\n".join(code[start:].splitlines()[:lines])


def recompile_trace(fn: Callable[[torch.Tensor], object], sizes: Sequence[int]) -> list[dict]:
    """Call ``torch.compile(fn)`` on 1-D inputs of each of ``sizes`` and report, per call, whether
    Dynamo compiled a new graph and that graph's inputs: a tensor's shape, or ``'symbolic size'``
    where a size became a graph input (the dimension is dynamic). Uses a recording backend that
    runs the graph eagerly (no Inductor), so it is cheap; Dynamo's caches are reset before and
    after, so earlier compilations do not blur the count. Returns ``[{size, compiled, inputs}]``.
    """
    _args.function("fn", fn)
    sizes = [_args.positive_int(f"sizes[{i}]", n)
             for i, n in enumerate(_args.sequence("sizes", sizes, non_empty=True, what="a list of sizes"))]
    graphs: list[list[str]] = []

    def recording_backend(gm, example_inputs):
        values = [n.meta.get("example_value") for n in gm.graph.nodes if n.op == "placeholder"]
        graphs.append([str(tuple(v.shape)) if isinstance(v, torch.Tensor) else "symbolic size" for v in values])
        return gm.forward

    torch._dynamo.reset()
    compiled = torch.compile(fn, backend=recording_backend)
    rows = []
    for n in sizes:
        before = len(graphs)
        compiled(torch.zeros(n))
        rows.append({"size": n, "compiled": len(graphs) > before, "inputs": graphs[-1] if len(graphs) > before else []})
    torch._dynamo.reset()
    return rows
