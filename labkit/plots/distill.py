"""Figures of lessons ``07_distillation`` and ``08_compression_capstone``.

* :func:`class_similarity` / :func:`plot_similarity` - the teacher's average soft target per
  true class: which digits it thinks look alike ("dark knowledge");
* :func:`plot_soft_targets` - one image's class probabilities at several temperatures;
* :func:`plot_sweep` - a metric over a grid of temperature x alpha;
* :func:`plot_pareto` - accuracy against a cost (latency, size), the Pareto front joined.

Each function draws on a given ``ax`` (or a new figure) and returns the ``Axes``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F

from labkit import _args
from labkit.plots import _axes


def class_similarity(logits: torch.Tensor, labels: torch.Tensor, *, temperature: float = 1.0) -> torch.Tensor:
    """``S[c, k]`` = mean of ``softmax(logits / T)[k]`` over the images of true class ``c``, with
    the diagonal (the class itself) removed and each row renormalised to sum to 1: where the
    teacher puts the probability it does *not* give the right answer."""
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2:
        raise ValueError("logits must be a tensor shaped (N, classes)")
    if not isinstance(labels, torch.Tensor) or labels.shape != (logits.shape[0],):
        raise ValueError(f"labels must be shaped ({logits.shape[0]},) to match logits")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    c = logits.shape[1]
    p = F.softmax(logits.float() / temperature, dim=1)
    s = torch.zeros(c, c)
    for k in range(c):
        rows = p[labels == k]
        if len(rows):
            s[k] = rows.mean(0)
    s.fill_diagonal_(0)
    return s / s.sum(1, keepdim=True).clamp_min(1e-12)


def plot_similarity(similarity: torch.Tensor, *, ax=None, title: str = "Where the teacher's doubt goes"):
    """A heat map of :func:`class_similarity` (rows: true digit, columns: other digits)."""
    s = _args.tensor("similarity", similarity).float()
    if s.ndim != 2 or s.shape[0] != s.shape[1]:
        raise ValueError(f"similarity must be a square matrix, got shape {tuple(s.shape)}")
    ax = _axes(ax, figsize=(5, 4.5))
    im = ax.imshow(s.numpy(), cmap="Blues")
    n = s.shape[0]
    ax.set_xticks(range(n))
    ax.set_yticks(range(n))
    for i in range(n):
        j = int(s[i].argmax())
        ax.text(j, i, f"{s[i, j]:.2f}", ha="center", va="center", fontsize=7, color="white")
    ax.set(xlabel="probability given to class", ylabel="true class", title=title)
    ax.figure.colorbar(im, ax=ax, fraction=0.046)
    return ax


def plot_soft_targets(probs: Mapping[float, torch.Tensor], *, ax=None, title: str = "", class_names: Sequence[str] | None = None):
    """Grouped bars: one image's class probabilities, one colour per temperature ``{T: probs}``."""
    _args.mapping("probs", probs, what="a dict {temperature: probabilities}")
    if not probs:
        raise ValueError("probs is empty")
    ax = _axes(ax)
    ts = list(probs)
    n = len(torch.as_tensor(probs[ts[0]]).flatten())
    width = 0.8 / len(ts)
    for i, t in enumerate(ts):
        p = torch.as_tensor(probs[t]).flatten().float()
        if len(p) != n:
            raise ValueError("every temperature needs the same number of classes")
        ax.bar([k + (i - (len(ts) - 1) / 2) * width for k in range(n)], p.numpy(), width=width, label=f"T = {t:g}")
    ax.set_xticks(range(n))
    if class_names is not None:
        ax.set_xticklabels(class_names)
    ax.set_yscale("log")
    ax.set(xlabel="class", ylabel="probability (log)", title=title)
    ax.legend(fontsize=8)
    return ax


def plot_sweep(results: Mapping[tuple[float, float], float], *, ax=None, title: str = "", fmt: str = "{:.1%}"):
    """Heat map of ``{(temperature, alpha): value}`` with the values written in the cells."""
    _args.mapping("results", results, what="a dict {(temperature, alpha): value}")
    if not results:
        raise ValueError("results is empty")
    temps = sorted({t for t, _ in results})
    alphas = sorted({a for _, a in results})
    grid = torch.full((len(alphas), len(temps)), float("nan"))
    for (t, a), v in results.items():
        grid[alphas.index(a), temps.index(t)] = float(v)
    ax = _axes(ax, figsize=(1.2 * len(temps) + 2, 0.8 * len(alphas) + 1.5))
    im = ax.imshow(grid.numpy(), cmap="viridis", aspect="auto", origin="lower")
    lo, hi = float(grid.nan_to_num(float("inf")).min()), float(grid.nan_to_num(float("-inf")).max())
    for i in range(len(alphas)):
        for j in range(len(temps)):
            if grid[i, j] == grid[i, j]:
                bright = hi > lo and (float(grid[i, j]) - lo) / (hi - lo) > 0.6  # viridis is light at the top
                ax.text(j, i, fmt.format(float(grid[i, j])), ha="center", va="center", fontsize=8,
                        color="black" if bright else "white")
    ax.set_xticks(range(len(temps)), [f"{t:g}" for t in temps])
    ax.set_yticks(range(len(alphas)), [f"{a:g}" for a in alphas])
    ax.set(xlabel="temperature T", ylabel="alpha (weight of the soft term)", title=title)
    ax.figure.colorbar(im, ax=ax, fraction=0.046)
    return ax


def plot_pareto(rows: Sequence[Mapping], *, x: str, y: str = "accuracy", front: Sequence[str] = (), ax=None,
                logx: bool = True, title: str = "", xlabel: str = "", legend: bool = True):
    """Every step as a numbered point of ``y`` against ``x`` (the legend maps numbers to
    ``row['step']``; many steps share an accuracy, so names on the points would collide); the
    steps named in ``front`` (e.g. :func:`labkit.compress.pareto_front`) in red, joined by a line."""
    from matplotlib.lines import Line2D
    from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

    rows = _args.rows("rows", rows, non_empty=False)
    _args.text("x", x)
    _args.text("y", y)
    if not rows:
        raise ValueError("rows is empty")
    missing = [k for k in (x, y, "step") if any(k not in r for r in rows)]
    if missing:
        raise ValueError(f"every row needs {missing}")
    ax = _axes(ax)
    handles = []
    for i, r in enumerate(rows, start=1):
        on = r["step"] in front
        ax.plot(r[x], r[y], "o", color="C3" if on else "C0", ms=7 if on else 5)
        ax.annotate(str(i), (r[x], r[y]), textcoords="offset points", xytext=(4, 4 if i % 2 else -11), fontsize=8)
        handles.append(Line2D([], [], ls="", marker="o", color="C3" if on else "C0", label=f"{i}  {r['step']}"))
    pts = sorted((r[x], r[y]) for r in rows if r["step"] in front)
    if len(pts) > 1:
        ax.plot(*zip(*pts), "-", color="C3", lw=1)
        handles.append(Line2D([], [], color="C3", lw=1, label="Pareto front"))
    if logx:
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
    if legend:
        ax.legend(handles=handles, fontsize=8, loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False)
    ax.set(xlabel=xlabel or x, ylabel=y, title=title)
    ax.grid(alpha=0.3)
    return ax
