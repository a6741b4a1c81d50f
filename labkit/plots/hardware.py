"""Figures of lesson ``01_cpu_vs_gpu_tpu``: matmul speed over sizes, and thread scaling.

Each takes the rows that :mod:`labkit.hardware` returns (``matmul_sweep``, ``thread_scaling``),
draws on ``ax`` (or a new figure) and returns the ``Axes``. The roofline itself is
:func:`labkit.plots.plot_roofline`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from labkit import _args
from labkit.plots import _axes


def _series(rows: Sequence[Mapping], key: str) -> dict[str, tuple[list[int], list[float]]]:
    """Group matmul rows by (device, dtype): ``{'cpu float32': ([n...], [value...])}``."""
    rows = _args.rows("rows", rows, non_empty=False)
    if not rows:
        raise ValueError("rows is empty: pass the output of labkit.hardware.matmul_sweep")
    out: dict[str, tuple[list[int], list[float]]] = {}
    for r in rows:
        missing = {"n", "dtype", "device", key} - set(r)
        if missing:
            raise ValueError(f"each row needs keys n, dtype, device and {key}; a row lacks {sorted(missing)}")
        xs, ys = out.setdefault(f"{r['device']} {r['dtype']}", ([], []))
        xs.append(r["n"])
        ys.append(r[key])
    return out


def _positive_peak(peak_gflops) -> float:
    value = _args.real("peak_gflops", peak_gflops)
    if value <= 0:
        raise ValueError(f"peak_gflops must be positive, got {peak_gflops}")
    return value


def plot_matmul_sweep(rows: Sequence[Mapping], *, peak_gflops: float | None = None, ax=None,
                      title: str = "Matmul speed grows with size"):
    """Achieved GFLOP/s against matrix size ``n``, one line per device and dtype.

    With ``peak_gflops`` a dashed line marks the theoretical peak: big matmuls climb toward it,
    small ones stay far below (each call pays a fixed overhead that 2 n^3 FLOPs cannot hide).
    """
    ax = _axes(ax)
    for name, (xs, ys) in _series(rows, "gflops").items():
        ax.plot(xs, ys, marker="o", label=name)
    if peak_gflops is not None:
        _positive_peak(peak_gflops)
        ax.axhline(peak_gflops, color="k", ls="--", lw=1, label=f"peak estimate {peak_gflops:.0f}")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set(xlabel="n (n x n @ n x n)", ylabel="GFLOP/s", title=title)
    ax.legend(fontsize=8)
    return ax


def plot_matmul_times(rows: Sequence[Mapping], *, peak_gflops: float, ax=None,
                      title: str = "Small matmuls are overhead-bound"):
    """Measured seconds per matmul against ``n``, beside the ideal ``2 n^3 / peak``.

    Where the measured line flattens above the ideal one, the call's fixed cost (Python,
    dispatch, thread start-up) dominates; where the two run parallel, arithmetic does.
    """
    peak_gflops = _positive_peak(peak_gflops)
    ax = _axes(ax)
    sizes: set[int] = set()
    for name, (xs, ys) in _series(rows, "seconds").items():
        ax.plot(xs, [y * 1e6 for y in ys], marker="o", label=f"measured {name}")
        sizes.update(xs)
    ns = sorted(sizes)
    ax.plot(ns, [2 * n**3 / (peak_gflops * 1e9) * 1e6 for n in ns], "k--", label="ideal 2n^3 / peak")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set(xlabel="n", ylabel="microseconds per matmul", title=title)
    ax.legend(fontsize=8)
    return ax


def plot_thread_scaling(rows: Sequence[Mapping], *, ax=None, title: str = "Thread scaling"):
    """Speed-up over one thread against the thread count, beside the ideal (``speedup = threads``)."""
    rows = _args.rows("rows", rows, non_empty=False)
    if not rows:
        raise ValueError("rows is empty: pass the output of labkit.hardware.thread_scaling")
    if any({"threads", "speedup"} - set(r) for r in rows):
        raise ValueError("each row needs keys threads and speedup")
    ax = _axes(ax)
    ts = [r["threads"] for r in rows]
    ax.plot(ts, [r["speedup"] for r in rows], marker="o", label="measured")
    ax.plot(ts, ts, "k--", label="ideal")
    ax.set_xticks(ts)
    ax.set(xlabel="threads", ylabel="speed-up over 1 thread", title=title)
    ax.legend()
    return ax
