"""Timing done right: every time in the course goes through this module.

:func:`time_fn` is built on ``torch.utils.benchmark.Timer`` (warm-up, a fixed thread count,
blocked auto-ranging) and synchronizes the device after *every* call, because on a GPU or TPU a
kernel launch returns long before the work is done. So a time is the **latency of one call**,
launch to finished work: consecutive calls never overlap, and the per-call sync costs a few
microseconds on a GPU. The throughput of a stream of calls queued back to back can be higher
(the launches of call ``k+1`` hide behind the kernels of call ``k``); to measure that, time a
function that makes many calls and divide. It reports the median and the
inter-quartile range, never a single run: these machines are noisy.

:func:`compare` times several functions in interleaved rounds (round ``r`` times each once),
so a burst of background load slows every candidate of that round alike; it returns each one's
median over the rounds and its speed-up over a reference as the median of the per-round ratios
``t_reference / t``. Used from lesson ``01_cpu_vs_gpu_tpu`` on (``labkit.efficiency``,
``labkit.metrics.compare_latency``, ``labkit.quantize.runtimes``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from statistics import median

import torch
from torch.utils import benchmark

from labkit import _args
from labkit.devices import check_device, cpu_threads, synchronize


@dataclass(frozen=True)
class Timing:
    """Result of :func:`time_fn`; all times in seconds."""

    label: str
    median: float
    iqr: float  # inter-quartile range: the spread
    mean: float
    runs: int  # measured blocks
    threads: int
    times: tuple[float, ...] = field(repr=False, default=())

    def __post_init__(self):
        _args.fields(self)

    @property
    def spread(self) -> float:
        """IQR relative to the median (0.05 = 5 %)."""
        return self.iqr / self.median if self.median > 0 else math.inf

    def __str__(self) -> str:
        return f"{self.label}: median {self.median * 1e3:.3f} ms (IQR {self.iqr * 1e3:.3f} ms, {self.runs} runs, {self.threads} threads)"



def time_fn(
    fn: Callable[[], object],
    *,
    device: str | torch.device | None = "cpu",
    label: str = "",
    warmup: int = 2,
    min_run_time: float = 0.2,
    threads: int | None = None,
) -> Timing:
    """Time ``fn()`` and return a :class:`Timing` (median and spread over measured blocks).

    ``device`` is where ``fn`` runs: it is synchronized after every call, so the time is one
    call's latency - the work and not only its launch, with no overlap between calls (see the
    module doc). ``threads`` defaults to ``torch.get_num_threads()``.
    """
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    _args.positive_float("min_run_time", min_run_time)
    if not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"warmup must be an int >= 0, got {warmup!r}")
    dev = check_device(device) if device is not None else torch.device("cpu")
    threads = torch.get_num_threads() if threads is None else threads
    _args.positive_int("threads", threads)

    def run():
        fn()
        synchronize(dev)

    with cpu_threads(threads):
        for _ in range(warmup):
            run()
        timer = benchmark.Timer(stmt="run()", globals={"run": run}, num_threads=threads, label=label)
        m = timer.blocked_autorange(min_run_time=min_run_time)
    times = tuple(m.times)
    if len(times) >= 4:
        q = torch.tensor(times, dtype=torch.float64).quantile(torch.tensor([0.25, 0.75], dtype=torch.float64))
        iqr = float(q[1] - q[0])
    else:
        iqr = m.iqr
    return Timing(label, m.median, iqr, m.mean, len(times), threads, times)


def compare(fns: Mapping[str, Callable[[], object]], *, rounds: int = 3,
            device: str | torch.device | Mapping[str, str | torch.device] | None = "cpu", min_run_time: float = 0.1,
            warmup: int = 1, threads: int | None = None, reference: str | None = None) -> dict[str, dict[str, float]]:
    """Time each function in ``fns`` in ``rounds`` interleaved rounds with :func:`time_fn`.

    Round ``r`` times every function once (``min_run_time`` each; ``warmup`` untimed calls in the
    first round only). ``device`` is where they run: one device for all, or ``{name: device}``.
    Returns ``{name: {"median": s, "speedup": x, "rounds": [s, ...]}}``: the median over the
    rounds of the per-round medians (seconds), and the median of the per-round ratios
    ``t_reference / t_name`` (``reference`` defaults to the first name), which survives a noisy
    machine better than the ratio of two separate timings.
    """
    if not isinstance(fns, Mapping) or not fns or not all(callable(f) for f in fns.values()):
        raise TypeError("fns must be a non-empty dict of name -> callable taking no arguments")
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise ValueError(f"rounds must be a positive int, got {rounds!r}")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"warmup must be an int >= 0, got {warmup!r}")
    reference = next(iter(fns)) if reference is None else reference
    if reference not in fns:
        raise ValueError(f"reference {reference!r} is not among {list(fns)}")
    devices = device if isinstance(device, Mapping) else dict.fromkeys(fns, device)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for r in range(rounds):
        for name, fn in fns.items():
            t = time_fn(fn, device=devices[name], min_run_time=min_run_time, warmup=warmup if r == 0 else 0,
                        threads=threads, label=str(name))
            times[name].append(t.median)
    base = times[reference]
    return {name: {"median": median(ts), "speedup": median(b / t for b, t in zip(base, ts)), "rounds": ts}
            for name, ts in times.items()}
