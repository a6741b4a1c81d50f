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

from labkit.devices import get_device, synchronize

PHASES = ("data", "forward", "backward", "optimizer")
PREFIX = "step:"


def _check_int(name: str, value, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")


class BatchStream:
    """Endless batches from ``loader``: restarts it when an epoch ends (never yields nothing)."""

    def __init__(self, loader: Iterable):
        if not hasattr(loader, "__iter__"):
            raise TypeError(f"loader must be iterable (a DataLoader), got {type(loader).__name__}")
        self.loader = loader
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
                   loss_fn: Callable | None = None, device=None) -> torch.Tensor:
    """One training step with its four phases marked by ``record_function`` (see module doc).

    Returns the (detached) loss. Outside a profiler the ranges cost almost nothing.
    """
    dev = torch.device("cpu") if device is None else get_device(device)
    loss_fn = loss_fn or nn.functional.cross_entropy
    with record_function(PREFIX + "data"):
        x, y = batches.next()
        x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
        synchronize(dev)
    with record_function(PREFIX + "forward"):
        loss = loss_fn(model(x), y)
        synchronize(dev)
    with record_function(PREFIX + "backward"):
        loss.backward()
        synchronize(dev)
    with record_function(PREFIX + "optimizer"):
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        synchronize(dev)
    return loss.detach()


@dataclass(frozen=True)
class StepProfile:
    """Result of :func:`profile_training`: seconds per step for each phase, and the evidence."""

    phases: dict[str, float]  # mean seconds per step of each phase
    wall: float  # mean wall-clock seconds per step (time.perf_counter around the profiled steps)
    steps: int
    table: str = field(repr=False)  # torch's key_averages() table, by self CPU time
    top_ops: tuple[dict, ...] = field(repr=False)  # the busiest operators: name, self_ms, calls
    trace_path: Path | None = None

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
    _check_int("steps", steps, 1)
    totals = {p: 0.0 for p in phases}
    for ev in events:
        if ev.name.startswith(PREFIX) and ev.name[len(PREFIX):] in totals:
            totals[ev.name[len(PREFIX):]] += ev.time_range.elapsed_us() * 1e-6
    return {p: t / steps for p, t in totals.items()}


def top_operators(prof, n: int = 8) -> tuple[dict, ...]:
    """The ``n`` operators with the most self CPU time (our phase ranges left out)."""
    _check_int("n", n, 1)
    rows = [e for e in prof.key_averages() if not e.key.startswith(PREFIX) and e.key != "ProfilerStep*"]
    rows.sort(key=lambda e: e.self_cpu_time_total, reverse=True)
    return tuple({"name": e.key, "self_ms": e.self_cpu_time_total / 1e3, "calls": e.count} for e in rows[:n])


def profile_training(model: nn.Module, loader: Iterable, optimizer: torch.optim.Optimizer, *,
                     loss_fn: Callable | None = None, steps: int = 5, warmup: int = 2, device=None,
                     trace_path: str | Path | None = None, row_limit: int = 12) -> StepProfile:
    """Profile ``steps`` training steps of ``model`` (after ``warmup`` unprofiled ones).

    Returns a :class:`StepProfile` with the mean time of each phase, the wall time per step,
    the operator table and, if ``trace_path`` is given, the Chrome/Perfetto trace written there.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
    _check_int("steps", steps, 1)
    _check_int("warmup", warmup, 0)
    _check_int("row_limit", row_limit, 1)
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
        prof.export_chrome_trace(str(path))
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=row_limit)
    return StepProfile(phase_times(prof.events(), steps=steps), wall, steps, table, top_operators(prof), path)
