"""Figures of lesson ``02_one_device_efficiency``: where a step's time and memory go.

* :func:`plot_phase_split` - one horizontal bar split into the profile's phases
  (``labkit.efficiency.profiling.StepProfile.fractions()``);
* :func:`plot_memory_breakdown` - stacked bars of parameters / gradients / optimizer state /
  activations per configuration (rows from ``labkit.efficiency.memory.training_memory``);
* :func:`plot_tradeoff` - memory kept vs step time, one labelled point per setting
  (gradient checkpointing's segments);
* :func:`plot_throughput` - grouped bars of a loader's samples/s per dataset and setting
  (rows from ``labkit.efficiency.loading.loader_throughput`` with ``data`` and ``config`` keys added).

Each draws on ``ax`` (or a new figure) and returns the ``Axes``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from labkit import _args
from labkit.plots import _axes

MEMORY_PARTS = ("parameters", "gradients", "optimizer_state", "activations")


def plot_phase_split(fractions: Mapping[str, float], *, ax=None, title: str = "Where one training step's time goes"):
    """A 100% horizontal bar: each phase's share of the step's wall time, labelled in %."""
    _args.mapping("fractions", fractions, what="a dict {phase: share}")
    for name, share in fractions.items():
        _args.real(f"fractions[{name!r}]", share)
    if not fractions or any(v < 0 for v in fractions.values()):
        raise ValueError("fractions must be a non-empty mapping of phase -> share >= 0")
    ax = _axes(ax, figsize=(8, 2.2))
    left = 0.0
    for name, share in fractions.items():
        bar = ax.barh([0], [share * 100], left=left * 100, label=name)
        if share >= 0.06:
            ax.bar_label(bar, labels=[f"{name}\n{share:.0%}"], label_type="center", fontsize=8)
        left += share
    ax.set(xlim=(0, max(100, left * 100)), yticks=[], xlabel="% of the step's wall time", title=title)
    ax.legend(ncol=len(fractions), loc="upper center", bbox_to_anchor=(0.5, -0.45), fontsize=8, frameon=False)
    return ax


def plot_memory_breakdown(rows: Mapping[str, Mapping[str, float]], *, ax=None, unit: float = 1e6,
                          title: str = "Memory of one training step"):
    """Stacked bars, one per configuration: ``rows = {'Adam': {'parameters': bytes, ...}}``."""
    _args.mapping("rows", rows, what="a dict {configuration: {part: bytes}}")
    unit = _args.positive_float("unit", unit)
    if not rows:
        raise ValueError("rows is empty")
    for name, parts in rows.items():
        _args.mapping(f"rows[{name!r}]", parts)
        missing = set(MEMORY_PARTS) - set(parts)
        if missing:
            raise ValueError(f"row {name!r} lacks {sorted(missing)}")
    ax = _axes(ax)
    names = list(rows)
    bottom = [0.0] * len(names)
    for part in MEMORY_PARTS:
        heights = [rows[n][part] / unit for n in names]
        ax.bar(names, heights, bottom=bottom, label=part.replace("_", " "))
        bottom = [b + h for b, h in zip(bottom, heights)]
    ax.set(ylabel="MB" if unit == 1e6 else f"bytes / {unit:g}", title=title)
    ax.legend(fontsize=8)
    return ax


def plot_tradeoff(points: Sequence[Mapping], *, x: str = "time_ratio", y: str = "memory_ratio", label: str = "segments",
                  ax=None, title: str = "Gradient checkpointing: memory for time"):
    """One labelled point per setting, e.g. ``{'segments': 4, 'time_ratio': 1.3, 'memory_ratio': 0.4}``."""
    points = _args.rows("points", points, non_empty=False)
    if not points:
        raise ValueError("points is empty")
    for p in points:
        if not {x, y, label} <= set(p):
            raise ValueError(f"each point needs keys {x!r}, {y!r} and {label!r}; got {sorted(p)}")
    ax = _axes(ax)
    ax.fill_between([0, 1.5], 0, 0.5, color="tab:green", alpha=0.12, label="target: <= 50% memory, <= 1.5x time")
    ax.plot([1.0], [1.0], "s", color="grey", label="no checkpointing")
    ax.plot([p[x] for p in points], [p[y] for p in points], "o", color="tab:blue", label=f"checkpointed (number = {label})")
    for p in points:
        ax.annotate(str(p[label]), (p[x], p[y]), textcoords="offset points", xytext=(4, 4), fontsize=9)
    ax.set_xlim(0.8, max(2.0, max(p[x] for p in points) * 1.1))
    ax.set_ylim(0, 1.1)
    ax.set(xlabel="step time / plain step time", ylabel="saved activations / plain", title=title)
    ax.legend(fontsize=8, loc="upper right")
    return ax


def plot_throughput(rows: Sequence[Mapping], *, ax=None, value: str = "samples_per_s",
                    title: str = "DataLoader throughput"):
    """Grouped bars: one group per ``row['data']``, one bar per ``row['config']``."""
    rows = _args.rows("rows", rows, non_empty=False)
    if not rows:
        raise ValueError("rows is empty")
    for r in rows:
        if not {"data", "config", value} <= set(r):
            raise ValueError(f"each row needs keys 'data', 'config' and {value!r}; got {sorted(r)}")
    groups = list(dict.fromkeys(r["data"] for r in rows))
    configs = list(dict.fromkeys(r["config"] for r in rows))
    ax = _axes(ax, figsize=(8, 4))
    width = 0.8 / len(configs)
    for j, cfg in enumerate(configs):
        xs, ys = [], []
        for i, grp in enumerate(groups):
            match = [r[value] for r in rows if r["data"] == grp and r["config"] == cfg]
            if match:
                xs.append(i + (j - (len(configs) - 1) / 2) * width)
                ys.append(match[0])
        ax.bar(xs, ys, width=width, label=cfg)
    ax.set_xticks(range(len(groups)), groups)
    ax.set(ylabel=value.replace("_", " "), title=title)
    ax.legend(fontsize=8)
    return ax
