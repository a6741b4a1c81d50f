"""Where a data-parallel step's time goes (lesson ``03_data_parallelism``).

:func:`step_timing` is a worker: on each rank it times, with the same fixed global batch split
over the ranks (strong scaling),

* ``compute`` - forward + backward of the local shard, no communication;
* ``optimizer`` - the SGD update;
* ``comm`` - averaging the gradients with one all-reduce per parameter (what
  :func:`labkit.parallel.data_parallel.average_gradients_` does);
* ``naive_step`` - all three in sequence (zero_grad, forward, backward, all-reduce, step);
* ``ddp_step`` - the same step through ``DistributedDataParallel`` (buckets, overlap);
* ``bucketed_step`` - the same through :class:`~labkit.parallel.data_parallel.BucketedDataParallel`;

and all-reduces of several sizes to fit the cost model (:mod:`labkit.parallel.cost`), all
interleaved by :func:`labkit.parallel.cost.time_collectives` (slowest rank, median of the
repetitions), so a passing load on a shared machine hits every figure alike. The prediction
``compute + optimizer + sum_tensors (2(p-1) alpha + 2(p-1)/p x bytes / bandwidth)``
(:func:`predict_naive_step`) is what the lesson checks against ``naive_step``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import nn

from labkit import _args
from labkit.data import load_arrays
from labkit.parallel.cost import (
    CostModel,
    sweep_functions,
    sweep_rows,
    time_collective,
    time_collectives,
)
from labkit.parallel.data_parallel import (
    BucketedDataParallel,
    average_gradients_,
    build_model,
    global_batch,
    shard_batch,
    wrap_ddp,
)


def predict_naive_step(row: dict, model: CostModel, *, stat: str = "median") -> float:
    """``compute + optimizer + sum over gradient tensors of model.predict(bytes, p)`` (seconds).

    ``stat='min'`` uses the best-of-repetitions times (``compute_min``, ``optimizer_min``) of a
    :func:`step_timing` row instead of the medians; fit ``model`` on ``row['sweep_min']`` then.
    """
    if not isinstance(model, CostModel):
        raise TypeError(f"model must be a CostModel, got {type(model).__name__}")
    if stat not in ("median", "min"):
        raise ValueError(f"stat must be 'median' or 'min', got {stat!r}")
    _args.mapping("row", row, what="a row from step_timing")
    suffix = "" if stat == "median" else "_min"
    missing = {"compute" + suffix, "optimizer" + suffix, "tensor_bytes", "world_size"} - set(row)
    if missing:
        raise ValueError(f"row lacks {sorted(missing)}: pass a row from step_timing")
    comm = sum(model.predict(b, row["world_size"]) for b in row["tensor_bytes"])
    return row["compute" + suffix] + row["optimizer" + suffix] + comm


def _timeline(step, log_events) -> dict:
    """One step with events relative to the start of backward."""
    step(lambda: None)  # warm-up (DDP rebuilds its buckets after the first step)
    del log_events[:]
    marks = {}
    step(lambda: marks.setdefault("backward_start", time.perf_counter()), marks)
    t0 = marks["backward_start"]
    return {"events": [{**e, "t": e["t"] - t0} for e in log_events],
            "backward_end": marks["backward_end"] - t0, "step_end": marks["step_end"] - t0}


def step_timing(*, batch_size: int = 240, hidden: Sequence[int] = (1024, 1024, 1024), repeats: int = 5,
                bucket_mb: float = 2.0, sizes_mb: Sequence[float] = (0.25, 1, 4, 16), seed: int = 0,
                thread_counts: Sequence[int] = (), data: tuple[torch.Tensor, torch.Tensor] | None = None) -> dict:
    """Worker: time one data-parallel SGD step and its parts on this world size (see the module doc).

    Each time is a median (``<name>_iqr`` its spread, ``<name>_min`` the best repetition);
    ``sweep`` / ``sweep_min`` are the all-reduce rows from medians / minima. ``thread_counts``
    additionally times the step with each number of intra-op threads (for the one-process
    baseline: 1 process x 1 thread vs x 2 threads). Also returns one step's timeline of bucket
    launches for DDP and :class:`BucketedDataParallel` (``timeline_ddp`` / ``timeline_ours``).
    """
    rank, p = dist.get_rank(), dist.get_world_size()
    if batch_size % p:
        raise ValueError(f"batch_size {batch_size} must split evenly over {p} ranks")
    data = data if data is not None else load_arrays("digits")
    x, y = global_batch(0, batch_size, data=data)
    x, y = shard_batch(x, rank, p), shard_batch(y, rank, p)
    model = build_model(seed=seed, hidden=hidden)
    out = {"world_size": p, "threads": torch.get_num_threads(), "local_batch": batch_size // p,
           "params": sum(q.numel() for q in model.parameters()),
           "tensor_bytes": [q.numel() * q.element_size() for q in model.parameters()]}
    out["grad_bytes"] = sum(out["tensor_bytes"])
    fns = _naive_phases(model, x, y)
    ddp, log = wrap_ddp(build_model(seed=seed, hidden=hidden), bucket_mb=bucket_mb)
    ours = BucketedDataParallel(build_model(seed=seed, hidden=hidden), bucket_mb=bucket_mb)
    fns["ddp_step"] = ddp_step = _wrapped_step(ddp, x, y)
    fns["bucketed_step"] = ours_step = _wrapped_step(ours, x, y, finish=ours.finish_gradient_sync)
    if p > 1:  # the all-reduce sweep runs interleaved with the steps: same load, same moment
        fns.update(sweep_functions(sizes_mb, ("gloo",)))
    timings = time_collectives(fns, repeats=repeats)
    for k in ("compute", "optimizer", "comm", "naive_step", "ddp_step", "bucketed_step"):
        out[k] = timings[k]["median"]
        out[k + "_iqr"] = timings[k]["iqr"]
        out[k + "_min"] = timings[k]["min"]
    out["sweep_min"] = sweep_rows({k: {**t, "median": t["min"]} for k, t in timings.items()}, p) if p > 1 else []
    out["sweep"] = sweep_rows(timings, p) if p > 1 else []
    out["timeline_ddp"] = _timeline(ddp_step, log["events"])
    out["timeline_ours"] = _timeline(ours_step, ours.events)
    ours.remove_hooks()
    out["by_threads"] = _by_threads(fns["naive_step"], thread_counts, out["naive_step"], repeats)
    return out


def _naive_phases(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict:
    """The naive step and its phases, each a function to time: ``compute`` (zero_grad, forward,
    backward), ``comm`` (one all-reduce per gradient tensor), ``optimizer`` and ``naive_step``.

    Not :func:`labkit.train.make_train_step`: that builder returns one closure for the whole step
    (and trains a copy of the model), while the lesson times the phases separately, with the
    all-reduce *between* backward and the update, all on the same model."""
    opt = torch.optim.SGD(model.parameters(), lr=0.01)

    def fwd_bwd():
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()

    def naive_step():
        fwd_bwd()
        average_gradients_(model)
        opt.step()

    return {"compute": fwd_bwd, "optimizer": opt.step, "comm": lambda: average_gradients_(model),
            "naive_step": naive_step}


def _wrapped_step(wrapped: nn.Module, x: torch.Tensor, y: torch.Tensor, *, finish=lambda: None):
    """``step(on_backward, marks)`` of a DDP-style wrapper whose all-reduces run inside backward;
    ``finish`` waits for any still in flight (``BucketedDataParallel.finish_gradient_sync``; DDP
    waits by itself at the end of backward). ``marks`` records ``backward_end`` and ``step_end``."""
    opt = torch.optim.SGD(wrapped.parameters(), lr=0.01)

    def step(on_backward=lambda: None, marks=None):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(wrapped(x), y)
        on_backward()
        loss.backward()
        _mark(marks, "backward_end")
        finish()
        opt.step()
        _mark(marks, "step_end")

    return step


def _by_threads(naive_step, thread_counts: Sequence[int], current_time: float, repeats: int) -> dict:
    """The naive step's median time with each intra-op thread count (the count it already ran
    with reuses ``current_time``)."""
    previous = torch.get_num_threads()
    times = {}
    try:
        for n in thread_counts:
            torch.set_num_threads(n)
            times[n] = current_time if n == previous else time_collective(naive_step, repeats=repeats)["median"]
    finally:
        torch.set_num_threads(previous)
    return times


def _mark(marks: dict | None, name: str) -> None:
    if marks is not None:
        marks[name] = time.perf_counter()
