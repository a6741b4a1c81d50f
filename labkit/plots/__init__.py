"""Matplotlib figures the notebooks share: training curves, comparisons, sweeps, rooflines.

Each function draws on a given ``ax`` (or makes a new figure) and returns the ``Axes`` so a
notebook can add to it and tests can inspect what was drawn. Lesson-specific figures live in
submodules (``labkit.plots.<topic>``) next to these.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch

from labkit import _args


def _axes(ax=None, figsize=(6, 4)):
    if ax is None:
        _, ax = plt.subplots(figsize=figsize)
    return ax


def plot_history(history, keys: Sequence[str] | None = None, *, ax=None, title: str = ""):
    """Curves of a :class:`labkit.train.History` (or a dict of lists) against epoch."""
    metrics = getattr(history, "metrics", history)
    if not isinstance(metrics, Mapping) or not metrics:
        raise ValueError("history has no metrics to plot")
    keys = list(metrics) if keys is None else list(keys)
    missing = [k for k in keys if k not in metrics]
    if missing:
        raise ValueError(f"history has no metric(s) {missing}; it has {list(metrics)}")
    ax = _axes(ax)
    for k in keys:
        ax.plot(range(1, len(metrics[k]) + 1), metrics[k], marker="o", label=k)
    ax.set_xlabel("epoch")
    ax.set_title(title)
    ax.legend()
    return ax


def plot_bars(values: Mapping[str, float], *, ax=None, ylabel: str = "", title: str = "",
              errors: Mapping[str, float] | None = None, fmt: str = "{:.3g}"):
    """A labelled bar chart of ``{name: value}`` with optional error bars and value labels."""
    _args.mapping("values", values, what="a dict {name: value}")
    if errors is not None:
        _args.mapping("errors", errors, what="a dict {name: error}")
    if not values:
        raise ValueError("values is empty")
    ax = _axes(ax)
    names = list(values)
    errs = [errors.get(n, 0.0) for n in names] if errors else None
    bars = ax.bar(names, [values[n] for n in names], yerr=errs, capsize=4 if errs else 0)
    ax.bar_label(bars, labels=[fmt.format(values[n]) for n in names])
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.tick_params(axis="x", rotation=20)
    return ax


def plot_lines(x: Sequence[float], series: Mapping[str, Sequence[float]], *, ax=None, xlabel: str = "",
               ylabel: str = "", title: str = "", logx: bool = False, logy: bool = False):
    """Several named series against one x axis."""
    x = list(_args.iterable("x", x, "a list of x values"))
    _args.mapping("series", series, what="a dict {name: list of y values}")
    if not series:
        raise ValueError("series is empty")
    ax = _axes(ax)
    for name, ys in series.items():
        ys = list(_args.iterable(f"series[{name!r}]", ys, "a list of y values"))
        if len(ys) != len(x):
            raise ValueError(f"series {name!r} has {len(ys)} points but x has {len(x)}")
        ax.plot(x, ys, marker="o", label=name)
    if logx:
        ax.set_xscale("log", base=2)
    if logy:
        ax.set_yscale("log")
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.legend()
    return ax


def plot_roofline(peak_gflops: float, bandwidth_gbs: float, points: Sequence[Mapping] = (), *, ax=None,
                  title: str = "Roofline"):
    """The roofline ``min(peak, bandwidth x intensity)`` with measured kernels on it.

    ``points`` are dicts with ``intensity`` (FLOP/byte), ``gflops`` and an optional ``label``.
    """
    peak_gflops = _args.positive_float("peak_gflops", peak_gflops)
    bandwidth_gbs = _args.positive_float("bandwidth_gbs", bandwidth_gbs)
    points = _args.rows("points", points, keys=("intensity", "gflops"), non_empty=False)
    ax = _axes(ax)
    ridge = peak_gflops / bandwidth_gbs
    xs = np.logspace(-2, max(3, np.log10(ridge) + 1.5), 200)
    ax.loglog(xs, np.minimum(peak_gflops, bandwidth_gbs * xs), "k-", label="roofline")
    ax.axvline(ridge, color="grey", ls=":", lw=1)
    ax.annotate(f"ridge {ridge:.1f} FLOP/B", (ridge, peak_gflops / 3), fontsize=8, color="grey")
    for p in points:
        ax.loglog(p["intensity"], p["gflops"], "o")
        if p.get("label"):
            ax.annotate(p["label"], (p["intensity"], p["gflops"]), textcoords="offset points", xytext=(4, -10), fontsize=8)
    ax.set(xlabel="arithmetic intensity (FLOP / byte)", ylabel="GFLOP/s", title=title)
    return ax


def plot_images(images, labels: Sequence | None = None, *, ncols: int = 8, title: str = "", cmap: str = "gray_r"):
    """A grid of images ``(N, 1, H, W)`` or ``(N, H, W)`` with optional labels; returns the Figure.

    Used in ``00_welcome_and_setup`` to look at the bundled digits and MNIST images.
    """
    ncols = _args.positive_int("ncols", ncols)
    _args.instance("images", images, (torch.Tensor, np.ndarray), "a tensor or array shaped (N, H, W) or (N, 1, H, W)")
    if len(images) == 0:
        raise ValueError("images is empty")
    if getattr(images, "ndim", 0) not in (3, 4):
        raise ValueError(f"images must be shaped (N, H, W) or (N, 1, H, W), got {tuple(getattr(images, 'shape', ()))}")
    if labels is not None and len(labels) != len(images):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    n = len(images)
    rows = -(-n // ncols)
    fig, axes = plt.subplots(rows, min(ncols, n), figsize=(1.1 * min(ncols, n), 1.25 * rows), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            img = images[i]
            img = img.detach().cpu().numpy() if hasattr(img, "detach") else img  # torch -> numpy for imshow
            ax.imshow(img[0] if img.ndim == 3 else img, cmap=cmap)
            if labels is not None:
                ax.set_title(str(int(labels[i])), fontsize=9)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
