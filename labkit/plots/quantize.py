"""Figures of lesson ``06_quantization``: the quantization grid explorer, error and SQNR against
bits, granularities compared, and int8 runtimes against fp32.

The explorer follows :mod:`labkit.widgets`: :func:`grid_data` is a pure function of the
controls (tested headless), :func:`draw_grid` turns its result into a figure, and
:func:`quant_explorer` wires sliders to them - or draws one static figure where widgets
cannot render (nbval, a PDF, GitHub's viewer).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import torch

from labkit import _args
from labkit.plots import _axes
from labkit.quantize.maths import (
    check_bits,
    dequantize,
    qparams_from_minmax,
    qrange,
    quantize,
    sqnr_db,
)
from labkit.widgets import explorer


def grid_data(x: torch.Tensor, *, bits: int = 4, lo: float = -1.0, hi: float = 1.0, symmetric: bool = False) -> dict:
    """Quantize the values ``x`` onto a ``bits``-bit grid covering ``[lo, hi]`` (min-max maths).

    Returns the grid's levels, ``x`` and ``x_hat`` sorted by ``x``, the error ``x - x_hat``,
    scale, zero-point, the fraction of values clipped, MSE and SQNR - everything the figure shows.
    """
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.numel() == 0:
        raise TypeError("x must be a non-empty floating-point tensor")
    check_bits(bits)
    if not lo < hi:
        raise ValueError(f"lo must be below hi, got lo={lo}, hi={hi}")
    scale, zp = qparams_from_minmax(lo, hi, bits=bits, symmetric=symmetric)
    qmin, qmax = qrange(bits, signed=symmetric)
    xs = x.detach().float().reshape(-1).sort().values
    x_hat = dequantize(quantize(xs, scale, zp, bits=bits, signed=symmetric), scale, zp)
    levels = dequantize(torch.arange(qmin, qmax + 1, dtype=torch.int32), scale, zp)
    covered = (float(levels[0]) - float(scale) / 2, float(levels[-1]) + float(scale) / 2)
    clipped = ((xs < covered[0]) | (xs > covered[1])).float().mean()
    err = xs - x_hat
    return {"x": xs, "x_hat": x_hat, "error": err, "levels": levels, "scale": float(scale), "zero_point": int(zp),
            "bits": bits, "symmetric": symmetric, "clipped": float(clipped), "mse": float((err**2).mean()),
            "sqnr_db": sqnr_db(xs, x_hat), "covered": covered}


def draw_grid(data: Mapping, *, fig=None):
    """Left: the values' histogram under the grid's levels. Right: error against value, with
    the ``+-scale/2`` band that rounding stays within (clipped values fall outside it)."""
    _args.mapping("data", data, what="the dict grid_data() returns")
    for key in ("x", "x_hat", "error", "levels", "scale"):
        if key not in data:
            raise ValueError(f"data lacks {key!r}: pass the result of grid_data()")
    fig = fig or plt.figure(figsize=(10, 3.6))
    ax1, ax2 = fig.subplots(1, 2)
    x, levels, s = data["x"], data["levels"], data["scale"]
    ax1.hist(x.numpy(), bins=80, color="#9ab", label="values")
    if len(levels) <= 64:
        for v in levels.tolist():
            ax1.axvline(v, color="#c33", lw=0.8, alpha=0.8)
    else:
        ax1.axvspan(float(levels[0]), float(levels[-1]), color="#c33", alpha=0.12)
    ax1.set(title=f"{data['bits']}-bit grid: {len(levels)} levels, scale {s:.3g}, zero-point {data['zero_point']}",
            xlabel="value", ylabel="count")
    ax2.plot(x.numpy(), data["error"].numpy(), ".", ms=2, color="#345")
    ax2.axhspan(-s / 2, s / 2, color="#3a3", alpha=0.15, label="|error| <= scale/2")
    ax2.set(title=f"MSE {data['mse']:.2e}, SQNR {data['sqnr_db']:.1f} dB, clipped {data['clipped']:.1%}",
            xlabel="value", ylabel="x - dequant(quant(x))")
    ax2.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    return fig


def quant_explorer(x: torch.Tensor, *, bits: int = 4, lo: float | None = None, hi: float | None = None,
                   symmetric: bool = False, interactive: bool | None = None):
    """Sliders for bits and the range ``[lo, hi]`` (default: min-max of ``x``) redrawing
    :func:`draw_grid`; one static figure when widgets are unavailable. Returns the widget or None."""
    _args.tensor("x", x, dtype="floating", non_empty=True)
    lo = float(x.min()) if lo is None else lo
    hi = float(x.max()) if hi is None else hi
    grid_data(x, bits=bits, lo=lo, hi=hi, symmetric=symmetric)  # validate before building sliders
    span = max(abs(lo), abs(hi), 1e-6) * 1.5

    def show(bits, lo, hi, symmetric):
        if lo >= hi:
            print("lo must be below hi")
            return
        draw_grid(grid_data(x, bits=bits, lo=lo, hi=hi, symmetric=symmetric))
        plt.show()

    try:
        import ipywidgets as W

        step = span / 100
        controls = {"bits": W.IntSlider(min=1, max=8, step=1, description="bits"),
                    "lo": W.FloatSlider(min=-span, max=span, step=step, description="lo"),
                    "hi": W.FloatSlider(min=-span, max=span, step=step, description="hi"),
                    "symmetric": W.Checkbox(description="symmetric")}
    except ImportError:  # no widgets: explorer draws the static figure and never reads these
        controls = dict.fromkeys(("bits", "lo", "hi", "symmetric"))
    return explorer(show, controls, {"bits": bits, "lo": lo, "hi": hi, "symmetric": symmetric}, interactive=interactive)


def plot_error_vs_bits(curves: Mapping[str, Sequence[Mapping]], *, points: Sequence[Mapping] = (), axes=None):
    """SQNR (dB) and MSE against bits for one or more :func:`~labkit.quantize.error_vs_bits` results,
    with the textbook ``+6.02 dB per bit`` slope drawn through the first curve's 8-bit point.

    ``points``: float formats to mark at their bit width, rows of
    :func:`labkit.quantize.formats.format_points` (fp8 e4m3 / e5m2, NF4)."""
    _args.mapping("curves", curves, what="a dict {label: error_vs_bits rows}")
    if not curves:
        raise ValueError("curves is empty")
    for label, rows in curves.items():
        _args.rows(f"curves[{label!r}]", rows, keys=("bits", "sqnr_db", "mse"))
    points = _args.rows("points", points, keys=("format", "bits", "sqnr_db", "mse"), non_empty=False)
    if axes is None:
        _, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    ax1, ax2 = axes
    for label, rows in curves.items():
        bits = [r["bits"] for r in rows]
        ax1.plot(bits, [r["sqnr_db"] for r in rows], marker="o", label=label)
        ax2.semilogy(bits, [r["mse"] for r in rows], marker="o", label=label)
    first = next(iter(curves.values()))
    b_last, s_last = first[-1]["bits"], first[-1]["sqnr_db"]
    bs = [r["bits"] for r in first]
    ax1.plot(bs, [s_last + 6.02 * (b - b_last) for b in bs], "k:", lw=1, label="6.02 dB / bit")
    for p, marker in zip(points, "*DPXs^v"):
        ax1.plot([p["bits"]], [p["sqnr_db"]], marker, ms=9, ls="none", label=p["format"])
        ax2.semilogy([p["bits"]], [p["mse"]], marker, ms=9, ls="none", label=p["format"])
    ax1.set(xlabel="bits", ylabel="SQNR (dB, higher is better)", title="signal-to-quantization-noise")
    ax2.set(xlabel="bits", ylabel="mean squared error", title="error")
    ax1.legend(fontsize=8)
    ax2.legend(fontsize=8)
    return axes


def plot_grouped(table: Mapping[str, Mapping[str, float]], *, ax=None, ylabel: str = "", title: str = "",
                 fmt: str = "{:.1f}"):
    """Bars grouped by outer key (e.g. bits) with one bar per inner key (e.g. granularity)."""
    _args.mapping("table", table, what="a dict {group: {series: value}}")
    for group, inner in table.items():
        _args.mapping(f"table[{group!r}]", inner)
    if not table or not all(table.values()):
        raise ValueError("table is empty")
    ax = _axes(ax, figsize=(7, 3.6))
    groups = list(table)
    series = list(next(iter(table.values())))
    width = 0.8 / len(series)
    for i, name in enumerate(series):
        xs = [g + i * width - 0.4 + width / 2 for g in range(len(groups))]
        bars = ax.bar(xs, [table[g][name] for g in groups], width, label=name)
        ax.bar_label(bars, labels=[fmt.format(table[g][name]) for g in groups], fontsize=8)
    ax.set_xticks(range(len(groups)), groups)
    ax.set(ylabel=ylabel, title=title)
    ax.legend(fontsize=8)
    return ax


def plot_runtimes(rows: Sequence[Mapping], *, axes=None):
    """Speed-up (log scale) and size reduction of each runtime against fp32, as horizontal bars
    (rows of :func:`labkit.quantize.runtimes.measure_runtimes`)."""
    rows = _args.rows("rows", rows, keys=("runtime", "speedup", "size_ratio"), non_empty=False)
    if not rows:
        raise ValueError("rows is empty")
    if axes is None:
        _, axes = plt.subplots(1, 2, figsize=(11, 0.45 * len(rows) + 1.5))
    names = [r["runtime"] for r in rows][::-1]
    for ax, key, title in ((axes[0], "speedup", "latency: x faster than fp32 (log scale)"),
                           (axes[1], "size_ratio", "size on disk: x smaller than fp32")):
        values = [r[key] for r in rows][::-1]
        colours = ["#3a7" if v > 1.05 else "#c44" if v < 0.95 else "#888" for v in values]
        if key == "speedup":  # bars grow from 1x, right when faster, left when slower
            bars = ax.barh(names, [v - 1 for v in values], left=1, color=colours)
        else:
            bars = ax.barh(names, values, color=colours)
        ax.bar_label(bars, labels=[f"{v:.2f}x" for v in values], padding=3, fontsize=8)
        ax.axvline(1, color="k", lw=0.8)
        ax.set_title(title)
        ax.margins(x=0.2)
    axes[0].set_xscale("log")
    axes[1].tick_params(labelleft=False)
    axes[0].figure.tight_layout()
    return axes
