"""Memory of one training step: parameters, gradients, optimizer state, activations.

Lesson ``02_one_device_efficiency`` accounts for the bytes of a step::

    total ~ parameters + gradients + optimizer state + activations kept for backward
            P            P           SGD: 0, momentum: P, Adam: 2P      depends on batch x depth

Activations are measured *exactly* with ``torch.autograd.graph.saved_tensors_hooks``: every
tensor autograd saves for the backward pass goes through a pack hook, which records its
storage (deduplicated, since a ReLU's output and the next Linear's input are one storage;
parameters left out, as they exist anyway). The process's peak RSS is a poor measure on a CPU
(the allocator keeps freed memory, and the figure only ever rises), so it is offered as a
sampled high-water mark for comparison; on a GPU ``torch.cuda`` memory stats are exact.

Two ways to fit a bigger step into memory are here as well:

* :class:`CheckpointedSequential` keeps only each segment's input in the forward pass and
  recomputes the segment during backward (``torch.utils.checkpoint``, ``use_reentrant=False``):
  memory ~ depth/segments + segment length. The last segment is not recomputed (its
  activations are needed at once), so with ``s`` equal segments the extra work is
  ``(s-1)/s`` of a forward pass (:func:`recompute_fraction`) - with backward ~2x forward, a step
  costs ``1 + (s-1)/(3s)`` times as much: +17% at s = 2, approaching +33% only as ``s`` grows.
  So +33% is the *upper* estimate; selective recomputation (recompute only cheap ops such as
  activations and norms, keep the matmul outputs) costs less still.
* :func:`training_state_bytes` sizes the parameters, gradients and optimizer state per
  parameter, in fp32 or in mixed precision (16 bytes per parameter with Adam: the figure ZeRO
  and FSDP sizing start from).
* :func:`accumulation_step` splits a batch of N into k micro-batches and adds their gradients,
  each loss weighted by n_i / N, so the step equals one step on the whole batch (for models
  without batch statistics, such as BatchNorm).
"""

from __future__ import annotations

import os
import resource
import sys
import threading
import time
from collections.abc import Callable, Iterable

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from labkit import _args
from labkit.metrics import storage_key, tensor_bytes
from labkit.timing import compare


def parameter_bytes(model: nn.Module) -> int:
    """Bytes of the model's parameters."""
    _check_model(model)
    return tensor_bytes(model.parameters())


def gradient_bytes(model: nn.Module) -> int:
    """Bytes of the ``.grad`` tensors the model currently holds (0 before the first backward)."""
    _check_model(model)
    return tensor_bytes(p.grad for p in model.parameters() if p.grad is not None)


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of the tensors in ``optimizer.state`` (Adam: exp_avg, exp_avg_sq and a step count)."""
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
    return tensor_bytes(v for state in optimizer.state.values() for v in state.values() if isinstance(v, torch.Tensor))


def _check_model(model) -> None:
    _args.module("model", model)


def _check_step(model, optimizer, x, y, loss_fn) -> None:
    _check_model(model)
    _args.instance("optimizer", optimizer, torch.optim.Optimizer, "a torch.optim.Optimizer")
    _args.tensor("x", x, non_empty=True)
    _args.tensor("y", y)
    if len(x) != len(y):
        raise ValueError(f"x has {len(x)} rows but y has {len(y)}")
    if loss_fn is not None:
        _args.function("loss_fn", loss_fn)


class SavedTensorMeter:
    """Count what autograd keeps for backward inside a ``with`` block.

    ``with SavedTensorMeter(exclude=model.parameters()) as m: loss = model(x).sum()`` then
    ``m.activation_bytes`` is the bytes of distinct storages saved (parameters excluded) and
    ``m.parameter_bytes`` what was saved that belongs to ``exclude``. The meter keeps a
    reference to each storage until it is discarded, so no address is reused while counting.
    """

    def __init__(self, *, exclude: Iterable[torch.Tensor] = ()):
        self._excluded = {storage_key(t) for t in exclude}
        self._saved: dict[tuple[int, int], torch.UntypedStorage] = {}
        self._params: set[tuple[int, int]] = set()
        self._hooks = None

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        key = storage_key(t)
        if key in self._excluded:
            self._params.add(key)
        else:
            self._saved[key] = t.untyped_storage()
        return t

    def __enter__(self) -> SavedTensorMeter:
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._hooks.__exit__(*exc)

    @property
    def activation_bytes(self) -> int:
        return sum(k[1] for k in self._saved)

    @property
    def parameter_bytes(self) -> int:
        return sum(k[1] for k in self._params)

    @property
    def count(self) -> int:
        """Number of distinct non-parameter storages saved."""
        return len(self._saved)


def saved_activation_bytes(model: nn.Module, *inputs: torch.Tensor, loss_fn: Callable | None = None) -> int:
    """Bytes autograd keeps for the backward of ``model(*inputs)`` (and ``loss_fn`` of its
    output, if given), parameters excluded. Measured on one forward pass; nothing is updated."""
    _check_model(model)
    if not inputs:
        raise ValueError("give at least one input tensor")
    with SavedTensorMeter(exclude=model.parameters()) as meter:
        out = model(*inputs)
        if loss_fn is not None:
            loss_fn(out)
    return meter.activation_bytes


def training_memory(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, *,
                    loss_fn: Callable | None = None) -> dict[str, int]:
    """Take one training step and return the bytes of each part of it:
    ``parameters``, ``gradients``, ``optimizer_state``, ``activations`` (saved for backward)."""
    _check_step(model, optimizer, x, y, loss_fn)
    loss_fn = loss_fn or nn.functional.cross_entropy
    optimizer.zero_grad(set_to_none=True)
    with SavedTensorMeter(exclude=model.parameters()) as meter:
        loss = loss_fn(model(x), y)
    loss.backward()
    optimizer.step()
    return {"parameters": parameter_bytes(model), "gradients": gradient_bytes(model),
            "optimizer_state": optimizer_state_bytes(optimizer), "activations": meter.activation_bytes}


# --- process and device peaks ----------------------------------------------------------------------


def current_rss_bytes() -> int:
    """Resident memory of this process now (Linux: /proc/self/statm; elsewhere the peak)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return peak_rss_bytes()


def peak_rss_bytes() -> int:
    """The process's lifetime peak resident memory (``getrusage``: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024


def measure_peak(fn: Callable[[], object], *, device=None, interval: float = 0.001) -> dict:
    """Run ``fn()`` and return how far memory rose above where it started, in bytes.

    On CUDA: ``torch.cuda.max_memory_allocated`` after resetting the peak (exact, per tensor).
    Elsewhere: the process's RSS sampled every ``interval`` seconds by a thread (the
    allocator's caching and the OS's paging blur it: compare with :class:`SavedTensorMeter`).
    """
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    if not interval > 0:
        raise ValueError(f"interval must be positive, got {interval!r}")
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        base = torch.cuda.memory_allocated(dev)
        fn()
        torch.cuda.synchronize(dev)
        return {"peak_bytes": torch.cuda.max_memory_allocated(dev) - base, "method": "torch.cuda.max_memory_allocated"}
    base, peak, done = current_rss_bytes(), [0], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], current_rss_bytes())
            time.sleep(interval)

    watcher = threading.Thread(target=sample, daemon=True)
    watcher.start()
    try:
        fn()
    finally:
        done.set()
        watcher.join()
    peak[0] = max(peak[0], current_rss_bytes())
    return {"peak_bytes": peak[0] - base, "method": "sampled process RSS"}


# --- trading compute for memory ------------------------------------------------------------------


class CheckpointedSequential(nn.Module):
    """Run ``sequential`` in ``segments`` pieces; keep only each piece's input for backward.

    All pieces but the last go through ``torch.utils.checkpoint.checkpoint(...,
    use_reentrant=False)``, exactly as ``torch.utils.checkpoint.checkpoint_sequential`` does, so
    gradients equal the plain model's. In eval mode or under ``no_grad`` it runs plainly.
    """

    def __init__(self, sequential: nn.Sequential, segments: int):
        super().__init__()
        if not isinstance(sequential, nn.Sequential):
            raise TypeError(f"sequential must be an nn.Sequential, got {type(sequential).__name__}")
        if isinstance(segments, bool) or not isinstance(segments, int) or not 1 <= segments <= len(sequential):
            raise ValueError(f"segments must be an int in 1..{len(sequential)} (the number of modules), got {segments!r}")
        self.sequential, self.segments = sequential, segments

    def boundaries(self) -> list[tuple[int, int]]:
        """``[(start, end), ...]`` module index ranges of the segments (as checkpoint_sequential)."""
        size, n = len(self.sequential) // self.segments, len(self.sequential)
        starts = list(range(0, size * (self.segments - 1), size))
        return [(s, s + size) for s in starts] + [(size * (self.segments - 1), n)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and torch.is_grad_enabled()):
            return self.sequential(x)
        parts = self.boundaries()
        for start, end in parts[:-1]:
            x = checkpoint(self._run, start, end, x, use_reentrant=False)
        return self._run(*parts[-1], x)

    def _run(self, start: int, end: int, x: torch.Tensor) -> torch.Tensor:
        for i in range(start, end):
            x = self.sequential[i](x)
        return x


def checkpoint_sweep(sequential: nn.Sequential, x: torch.Tensor, y: torch.Tensor, segments: Iterable[int], *,
                     loss_fn: Callable | None = None, rounds: int = 3, min_run_time: float = 0.3) -> dict:
    """Saved activation bytes and forward+backward time of ``sequential`` plain and with each
    number of checkpointed ``segments`` (timed in interleaved rounds, on ``x``'s device).

    Returns ``{'plain': {'bytes', 'seconds'}, 'points': [{'segments', 'bytes', 'seconds',
    'memory_ratio', 'time_ratio'}, ...]}``, ratios relative to the plain model.
    """
    _args.module("sequential", sequential, nn.Sequential)
    _args.tensor("x", x, non_empty=True)
    _args.tensor("y", y)
    segments = [_args.positive_int(f"segments[{i}]", s) for i, s in
                enumerate(_args.sequence("segments", list(_args.iterable("segments", segments)), non_empty=True))]
    loss_fn = loss_fn or nn.functional.cross_entropy
    models = {"plain": sequential, **{s: CheckpointedSequential(sequential, s) for s in segments}}

    def fwd_bwd(m):
        def run():
            loss_fn(m(x), y).backward()
            m.zero_grad(set_to_none=True)
        return run

    nbytes = {k: saved_activation_bytes(m, x) for k, m in models.items()}
    timed = compare({k: fwd_bwd(m) for k, m in models.items()}, rounds=rounds, device=x.device,
                    min_run_time=min_run_time / rounds)
    times = {k: t["median"] for k, t in timed.items()}
    plain = {"bytes": nbytes["plain"], "seconds": times["plain"]}
    points = [{"segments": s, "bytes": nbytes[s], "seconds": times[s], "memory_ratio": nbytes[s] / plain["bytes"],
               "time_ratio": times[s] / plain["seconds"]} for s in segments]
    return {"plain": plain, "points": points}


def accumulation_step(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, *,
                      micro_batches: int, loss_fn: Callable | None = None) -> float:
    """One optimizer step on the batch ``(x, y)``, computed as ``micro_batches`` smaller passes.

    ``loss = sum_i (n_i / N) * mean loss of micro-batch i`` equals the mean loss over all N, so
    the summed gradients and the step equal those of one pass over the whole batch, while only
    one micro-batch's activations are alive at a time. Returns the batch's mean loss.
    """
    _check_step(model, optimizer, x, y, loss_fn)
    _args.integer("micro_batches", micro_batches)
    if micro_batches <= 0:
        raise ValueError(f"micro_batches must be positive (the number of micro-batches to accumulate), got {micro_batches}")
    if len(x) != len(y):
        raise ValueError(f"x has {len(x)} rows but y has {len(y)}")
    if micro_batches > len(x):
        raise ValueError(f"micro_batches={micro_batches} is more than the batch's {len(x)} examples")
    loss_fn = loss_fn or nn.functional.cross_entropy
    optimizer.zero_grad(set_to_none=True)
    total = 0.0
    for xs, ys in zip(x.tensor_split(micro_batches), y.tensor_split(micro_batches)):
        loss = loss_fn(model(xs), ys) * (len(xs) / len(x))
        loss.backward()
        total += float(loss.detach())
    optimizer.step()
    return total


# --- formulas: recomputation and the bytes per parameter ------------------------------------------


def recompute_fraction(segments: int) -> float:
    """Extra forward work of checkpointing with ``segments`` equal segments: ``(s-1)/s`` of one
    forward pass (every segment but the last is run again during backward)."""
    _args.positive_int("segments", segments)
    return (segments - 1) / segments


def checkpoint_time_ratio(segments: int, *, backward_to_forward: float = 2.0) -> float:
    """Predicted (forward + backward) time with checkpointing over without, if time follows FLOPs:
    ``1 + (s-1)/s / (1 + backward_to_forward)`` - ``1 + (s-1)/(3s)`` for the usual backward of twice
    the forward's FLOPs, at most 4/3 (the "+33%" is this limit)."""
    _args.positive_float("backward_to_forward", backward_to_forward)
    return 1 + recompute_fraction(segments) / (1 + backward_to_forward)


_OPTIMIZER_STATE = {"sgd": 0, "momentum": 4, "adam": 8}  # fp32 bytes per parameter
_PRECISION = {"fp32": (4, 4, 0), "mixed": (2, 2, 4)}  # weights, gradients, fp32 master copy


def training_state_bytes(n_params: int, *, precision: str = "fp32", optimizer: str = "adam") -> dict[str, int]:
    """Bytes of the training state of ``n_params`` parameters (activations not included).

    ``precision='fp32'``: 4 (weights) + 4 (gradients) + optimizer state. ``'mixed'`` (bf16 or fp16
    training with fp32 master weights, the usual recipe): 2 (low-precision weights) + 2 (their
    gradients) + 4 (fp32 master weights) + optimizer state, kept in fp32: Adam's two moments are
    8, momentum 4, SGD 0. Mixed precision with Adam is the ZeRO paper's ``2 + 2 + 12 = 16`` bytes
    per parameter; fp32 Adam is also 16 (4 + 4 + 8): mixed precision saves activation memory and
    time, not state. Returns ``{weights, gradients, master_weights, optimizer_state, total}``.
    Used by lessons 02 and 03.
    """
    _args.non_negative_int("n_params", n_params)
    _args.choice("precision", precision, _PRECISION)
    _args.choice("optimizer", optimizer, _OPTIMIZER_STATE)
    weights, grads, master = (n_params * b for b in _PRECISION[precision])
    state = n_params * _OPTIMIZER_STATE[optimizer]
    return {"weights": weights, "gradients": grads, "master_weights": master, "optimizer_state": state,
            "total": weights + grads + master + state}
