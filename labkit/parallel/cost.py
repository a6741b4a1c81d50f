"""Timing collectives and the all-reduce cost model (lesson ``03_data_parallelism``).

The cost model of a ring all-reduce of ``N`` bytes on ``p`` ranks (Thakur et al., 2005; the
"alpha-beta" model)::

    time = alpha + N x 2 (p-1)/p / bandwidth

``alpha`` is the fixed start-up cost (latency, synchronisation, Python), ``bandwidth`` the
bytes per second one rank can push through the ring (its algorithm bandwidth), and
``2 (p-1)/p x N`` the bytes each rank sends (:func:`labkit.parallel.ring.ring_bytes_sent`).
:func:`fit_cost_model` finds ``alpha`` and ``bandwidth`` by least squares from measured
all-reduces (:func:`allreduce_sweep`), and lesson 03 checks the model against measured
data-parallel step times.

Why not :func:`labkit.timing.time_fn` here: its auto-ranging picks how many runs to time from
the local clock, so two ranks could pick different counts - and a collective that one rank
calls more often than the other hangs. :func:`time_collective` runs a fixed number of
repetitions, lines the ranks up with a barrier before each, and keeps the slowest rank's time
(a collective ends when its last participant does).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from labkit import _args
from labkit.parallel.ring import ring_all_reduce_


def time_collectives(fns: dict[str, Callable[[], object]], *, repeats: int = 5, warmup: int = 1,
                     group=None) -> dict[str, dict]:
    """Time several functions *interleaved*: each repetition runs every one of them once, in
    order, after a barrier. A load that comes and goes on a shared machine then hits all of them
    alike, so their ratios stay meaningful. Returns ``{name: {median, iqr, min, times}}`` in
    seconds; each time is the slowest rank's, so every rank returns the same numbers. Quote the
    median; the minimum (best of the repetitions) is the steadier estimate on a busy machine.
    """
    _args.mapping("fns", fns, non_empty=True, what="a dict of name -> callable")
    for name, fn in fns.items():
        _args.function(f"fns[{name!r}]", fn)
    _args.positive_int("repeats", repeats)
    _args.non_negative_int("warmup", warmup)
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times = torch.zeros(len(fns), repeats, dtype=torch.float64)
    for i in range(repeats):
        for k, fn in enumerate(fns.values()):
            dist.barrier(group=group)
            start = time.perf_counter()
            fn()
            times[k, i] = time.perf_counter() - start
    dist.all_reduce(times, op=dist.ReduceOp.MAX, group=group)
    q = torch.quantile(times, torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64), dim=1)
    return {name: {"median": float(q[1, k]), "iqr": float(q[2, k] - q[0, k]), "min": float(times[k].min()),
                   "times": times[k].tolist()} for k, name in enumerate(fns)}


def time_collective(fn: Callable[[], object], *, repeats: int = 5, warmup: int = 1, group=None) -> dict:
    """Median and quartiles (seconds) of ``fn()`` over ``repeats`` runs, on every rank alike.

    Each run starts after a barrier; its time is the maximum over the ranks (all-reduced), so
    every rank returns the same numbers. Call it on all ranks with the same arguments.
    """
    _args.function("fn", fn)
    return time_collectives({"fn": fn}, repeats=repeats, warmup=warmup, group=group)["fn"]


def ring_traffic(nbytes: float, world_size: int) -> float:
    """Bytes each rank sends in a ring all-reduce of ``nbytes``: ``2 (p-1)/p x nbytes``."""
    nbytes = _args.non_negative_float("nbytes", nbytes)
    _args.positive_int("world_size", world_size)
    return 2 * (world_size - 1) / world_size * nbytes


def sweep_functions(sizes_mb: Sequence[float], impls: Sequence[str] = ("gloo", "ring")) -> dict[str, Callable]:
    """``{'gloo 4.0': fn, 'ring 4.0': fn, ...}``: an all-reduce of a float32 tensor of each size
    (in MB) by each implementation, ready for :func:`time_collectives`. ``'gloo'`` is
    ``dist.all_reduce`` (the backend's own algorithm), ``'ring'`` is
    :func:`labkit.parallel.ring.ring_all_reduce_`."""
    for i, mb in enumerate(_args.sequence("sizes_mb", sizes_mb, non_empty=True, what="a list of sizes in MB")):
        _args.positive_float(f"sizes_mb[{i}]", mb)
    for i, impl in enumerate(_args.sequence("impls", impls, non_empty=True)):
        _args.choice(f"impls[{i}]", impl, ("gloo", "ring"))
    fns = {}
    for mb in sizes_mb:
        x = torch.zeros(max(1, int(mb * 2**20) // 4))  # zeros: sums stay finite however often it runs
        for impl in impls:
            fns[f"{impl} {float(mb)}"] = (lambda x=x: dist.all_reduce(x)) if impl == "gloo" else (lambda x=x: ring_all_reduce_(x))
    return fns


def sweep_rows(timings: dict[str, dict], world_size: int) -> list[dict]:
    """Rows ``{impl, world_size, bytes, traffic, seconds, iqr, busbw_gbs}`` from the timings of
    :func:`sweep_functions` (other keys are ignored). Bus bandwidth = traffic / time."""
    _args.mapping("timings", timings, what="a dict of name -> timing (from time_collectives)")
    _args.positive_int("world_size", world_size)
    rows = []
    for name, t in timings.items():
        impl, _, mb = name.partition(" ")
        if impl not in ("gloo", "ring"):
            continue
        nbytes = max(1, int(float(mb) * 2**20) // 4) * 4
        traffic = ring_traffic(nbytes, world_size)
        rows.append({"impl": impl, "world_size": world_size, "bytes": nbytes, "traffic": traffic, "seconds": t["median"],
                     "iqr": t["iqr"], "busbw_gbs": traffic / t["median"] / 1e9 if world_size > 1 else float("nan")})
    return rows


def allreduce_sweep(sizes_mb: Sequence[float] = (1, 4, 16, 64), *, impls: Sequence[str] = ("gloo", "ring"),
                    repeats: int = 5) -> list[dict]:
    """Worker: time all-reduces of float32 tensors of each size, implementations interleaved;
    one row per (impl, size) with the bytes, the ring traffic ``2(p-1)/p x bytes``, the median
    time and the bus bandwidth (traffic / time)."""
    timings = time_collectives(sweep_functions(sizes_mb, impls), repeats=repeats)
    return sweep_rows(timings, dist.get_world_size())


@dataclass(frozen=True)
class CostModel:
    """``time = alpha + 2 (p-1)/p x bytes / bandwidth`` (seconds, bytes/s), with fit quality."""

    alpha: float
    bandwidth: float
    r2: float = float("nan")
    points: int = 0

    def __post_init__(self):
        _args.fields(self)
        _args.non_negative_float("alpha", self.alpha)
        _args.positive_float("bandwidth", self.bandwidth)

    def predict(self, nbytes: float, world_size: int) -> float:
        """Predicted all-reduce seconds for ``nbytes`` on ``world_size`` ranks (0 for one rank)."""
        if _args.positive_int("world_size", world_size) == 1:
            return 0.0
        return self.alpha + ring_traffic(nbytes, world_size) / self.bandwidth

    def __str__(self) -> str:
        return (f"all-reduce time = {self.alpha * 1e3:.3f} ms + 2(p-1)/p x bytes / {self.bandwidth / 1e9:.2f} GB/s"
                f"  (R^2 = {self.r2:.3f}, {self.points} points)")


def fit_cost_model(rows: Sequence[dict], *, relative: bool = True) -> CostModel:
    """Least-squares fit of ``seconds = alpha + beta x traffic``; ``bandwidth = 1 / beta``.

    ``rows`` need ``seconds`` and either ``traffic`` or ``bytes`` and ``world_size`` (rows of
    :func:`allreduce_sweep`); rows of a single rank carry no traffic and are left out. With
    ``relative=True`` each row is weighted by ``1 / seconds``, so the fit minimises relative
    errors and a 64 MB message does not drown a 64 kB one. ``alpha`` is a time, so it is held
    at 0 when the free fit would make it negative.
    """
    for i, row in enumerate(_args.sequence("rows", rows, what="a list of dicts (rows of allreduce_sweep)")):
        _args.mapping(f"rows[{i}]", row)
        if "seconds" not in row or ("traffic" not in row and not {"bytes", "world_size"} <= row.keys()):
            raise ValueError(f"rows[{i}] needs 'seconds' and 'traffic' (or 'bytes' and 'world_size'), got {sorted(row)}")
    pts = [(r["traffic"] if "traffic" in r else ring_traffic(r["bytes"], r["world_size"]), r["seconds"])
           for r in rows if r.get("world_size", 2) > 1]
    if len(pts) < 2:
        raise ValueError(f"need at least 2 measurements from more than one rank to fit, got {len(pts)}")
    x = np.array([p[0] for p in pts], dtype=float)
    y = np.array([p[1] for p in pts], dtype=float)
    if np.ptp(x) == 0:
        raise ValueError("all measurements have the same traffic: sweep several sizes")
    if np.any(y <= 0):
        raise ValueError("measured times must be positive")
    w = 1 / y if relative else np.ones_like(y)
    (alpha, beta), *_ = np.linalg.lstsq(np.stack([w, w * x], axis=1), w * y, rcond=None)
    if alpha < 0:  # constrained: alpha = 0, beta by (weighted) least squares through the origin
        alpha, beta = 0.0, float(np.sum(w * w * x * y) / np.sum(w * w * x * x))
    if beta <= 0:
        raise ValueError(f"the fit found time falling with size (slope {beta:.3g}): the measurements are too noisy")
    resid = y - (alpha + beta * x)
    r2 = 1 - float(resid @ resid) / float(((y - y.mean()) ** 2).sum()) if np.ptp(y) > 0 else float("nan")
    return CostModel(float(alpha), float(1 / beta), r2, len(pts))
