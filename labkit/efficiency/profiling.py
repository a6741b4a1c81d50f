"""Profile first: where one training step's time goes, measured by ``torch.profiler``.

Lesson ``02_one_device_efficiency`` starts here. A training step has four phases, each wrapped
in ``torch.profiler.record_function`` so that they appear as named ranges in the profile and
in the trace (open it in https://ui.perfetto.dev or chrome://tracing)::

    step:data       next batch from the loader, copied to the device
    step:forward    model(x) and the loss
    step:backward   loss.backward()
    step:optimizer  optimizer.step() and zero_grad()

The *coverage* of a profile is how much of the measured wall time those ranges explain::

    coverage = sum over steps and phases of the range's duration / wall time of those steps

A coverage near 1 means nothing hides between the phases (Python glue, logging, a stray
``.item()``); the lesson asks for at least 0.9. On a GPU each phase ends with a synchronize, so
that the CPU-side range measures the device's work and not only its launch.

On a GPU the operator table is sorted by *device* time (:func:`sort_key`): the CPU time of a
CUDA op is only its launch. And the per-phase synchronizations that make the phase times honest
also serialize the CPU and the GPU, hiding the overlap a real step has: so on CUDA the trace
written for the trace view comes from a second profiled run without them (one synchronize per
step only).

Comparing two ways of doing the same step (checkpointed or not, compiled or not) on a busy
machine is fairer when they are timed in turns: :func:`labkit.timing.compare` does that for
the lesson's other modules.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile, record_function

from labkit import _args
from labkit.devices import get_device, synchronize

PHASES = ("data", "forward", "backward", "optimizer")
PREFIX = "step:"


class BatchStream:
    """Endless batches from ``loader``: restarts it when an epoch ends (never yields nothing)."""

    def __init__(self, loader: Iterable):
        self.loader = _args.iterable("loader", loader, "iterable (a DataLoader)")
        self._it: Iterator | None = None

    def next(self):
        for _ in range(2):
            if self._it is None:
                self._it = iter(self.loader)
            try:
                return next(self._it)
            except StopIteration:
                self._it = None
        raise ValueError("loader yielded no batches")


def annotated_step(model: nn.Module, batches: BatchStream, optimizer: torch.optim.Optimizer, *,
                   loss_fn: Callable | None = None, device=None, sync_phases: bool = True) -> torch.Tensor:
    """One training step with its four phases marked by ``record_function`` (see module doc).

    ``sync_phases=True`` synchronizes the device after each phase (honest phase times);
    ``False`` only after the step (an undisturbed trace). Returns the (detached) loss. Outside a
    profiler the ranges cost almost nothing.
    """
    _args.module("model", model)
    _args.instance("batches", batches, BatchStream, "a labkit.efficiency.profiling.BatchStream")
    _args.instance("optimizer", optimizer, torch.optim.Optimizer, "a torch.optim.Optimizer")
    if loss_fn is not None:
        _args.function("loss_fn", loss_fn)
    _args.boolean("sync_phases", sync_phases)
    dev = torch.device("cpu") if device is None else get_device(device)
    loss_fn = loss_fn or nn.functional.cross_entropy

    def phase_end():
        if sync_phases:
            synchronize(dev)

    with record_function(PREFIX + "data"):
        x, y = batches.next()
        x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
        phase_end()
    with record_function(PREFIX + "forward"):
        loss = loss_fn(model(x), y)
        phase_end()
    with record_function(PREFIX + "backward"):
        loss.backward()
        phase_end()
    with record_function(PREFIX + "optimizer"):
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        phase_end()
    if not sync_phases:
        synchronize(dev)
    return loss.detach()


@dataclass(frozen=True)
class StepProfile:
    """Result of :func:`profile_training`: seconds per step for each phase, and the evidence."""

    phases: dict[str, float]  # mean seconds per step of each phase
    wall: float  # mean wall-clock seconds per step (time.perf_counter around the profiled steps)
    steps: int
    table: str = field(repr=False)  # torch's key_averages() table, by self CPU (GPU: device) time
    top_ops: tuple[dict, ...] = field(repr=False)  # the busiest operators: name, self_ms, calls
    trace_path: Path | None = None

    def __post_init__(self):
        _args.fields(self)

    @property
    def coverage(self) -> float:
        """Share of the wall time that the named phases account for (target >= 0.9)."""
        return sum(self.phases.values()) / self.wall if self.wall > 0 else 0.0

    def fractions(self) -> dict[str, float]:
        """Each phase's share of the wall time, plus ``other`` (what no phase explains)."""
        out = {k: v / self.wall for k, v in self.phases.items()}
        out["other"] = max(0.0, 1.0 - sum(out.values()))
        return out

    def __str__(self) -> str:
        lines = [f"{self.steps} steps, {self.wall * 1e3:.2f} ms per step; phases cover {self.coverage:.1%} of it"]
        for name, frac in self.fractions().items():
            ms = self.phases.get(name, self.wall * frac) * 1e3
            lines.append(f"  {name:<10} {ms:8.2f} ms  {frac:6.1%}")
        return "\n".join(lines)


def phase_times(events, phases: Iterable[str] = PHASES, *, steps: int = 1) -> dict[str, float]:
    """Mean seconds per step of each ``step:<phase>`` range in a profiler's ``events()``."""
    _args.iterable("events", events, "a profiler's events()")
    steps = _args.positive_int("steps", steps)
    totals = {p: 0.0 for p in phases}
    for ev in events:
        if ev.name.startswith(PREFIX) and ev.name[len(PREFIX):] in totals:
            totals[ev.name[len(PREFIX):]] += ev.time_range.elapsed_us() * 1e-6
    return {p: t / steps for p, t in totals.items()}


def sort_key(device) -> str:
    """The profiler column to rank operators by: ``self_device_time_total`` on a CUDA device (a
    kernel's CPU time is only its launch), else ``self_cpu_time_total``."""
    return "self_device_time_total" if torch.device(device).type == "cuda" else "self_cpu_time_total"


def top_operators(prof, n: int = 8, *, sort_by: str = "self_cpu_time_total") -> tuple[dict, ...]:
    """The ``n`` operators with the most self time in column ``sort_by`` (see :func:`sort_key`;
    our phase ranges left out)."""
    if not callable(getattr(prof, "key_averages", None)):  # duck-typed: anything with torch's key_averages()
        raise TypeError(f"prof must be a torch.profiler.profile (after its with-block), got {type(prof).__name__}")
    n = _args.positive_int("n", n)
    _args.text("sort_by", sort_by)
    rows = [e for e in prof.key_averages() if not e.key.startswith(PREFIX) and e.key != "ProfilerStep*"]
    rows.sort(key=lambda e: getattr(e, sort_by), reverse=True)
    return tuple({"name": e.key, "self_ms": getattr(e, sort_by) / 1e3, "calls": e.count} for e in rows[:n])


def profile_training(model: nn.Module, loader: Iterable, optimizer: torch.optim.Optimizer, *,
                     loss_fn: Callable | None = None, steps: int = 5, warmup: int = 2, device=None,
                     trace_path: str | Path | None = None, row_limit: int = 12) -> StepProfile:
    """Profile ``steps`` training steps of ``model`` (after ``warmup`` unprofiled ones).

    Returns a :class:`StepProfile` with the mean time of each phase, the wall time per step,
    the operator table and, if ``trace_path`` is given, the Chrome/Perfetto trace written there.
    """
    _args.module("model", model)
    _args.instance("optimizer", optimizer, torch.optim.Optimizer, "a torch.optim.Optimizer")
    steps = _args.positive_int("steps", steps)
    warmup = _args.non_negative_int("warmup", warmup)
    row_limit = _args.positive_int("row_limit", row_limit)
    dev = get_device(device) if device is not None else next(model.parameters()).device
    batches = BatchStream(loader)
    model.train()
    for _ in range(warmup):  # first calls allocate, pick kernels, start workers: not typical
        annotated_step(model, batches, optimizer, loss_fn=loss_fn, device=dev)
    activities = [ProfilerActivity.CPU]
    if dev.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    with profile(activities=activities) as prof:
        start = time.perf_counter()
        for _ in range(steps):
            annotated_step(model, batches, optimizer, loss_fn=loss_fn, device=dev)
        wall = (time.perf_counter() - start) / steps
    path = None
    if trace_path is not None:
        path = Path(trace_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        _trace_profile(prof, model, batches, optimizer, loss_fn, dev, steps, activities).export_chrome_trace(str(path))
    key = sort_key(dev)
    table = prof.key_averages().table(sort_by=key, row_limit=row_limit)
    return StepProfile(phase_times(prof.events(), steps=steps), wall, steps, table,
                       top_operators(prof, sort_by=key), path)


def _trace_profile(prof, model, batches, optimizer, loss_fn, dev, steps, activities):
    """The profile to write as a trace: ``prof`` itself on a CPU; on CUDA a fresh run of
    ``steps`` steps without per-phase synchronization, so the trace shows the real overlap."""
    if dev.type != "cuda":
        return prof
    with profile(activities=activities) as trace:
        for _ in range(steps):
            annotated_step(model, batches, optimizer, loss_fn=loss_fn, device=dev, sync_phases=False)
    return trace
