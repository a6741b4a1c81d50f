"""Figures of lesson ``03_data_parallelism``: all-reduce time against size with the fitted cost
model, where a data-parallel step's time goes at each world size, and a step's timeline of
gradient buckets against backward. Each function draws on ``ax`` (or a new figure) and returns it.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np


def _axes(ax, figsize=(6, 4)):
    if ax is None:
        _, ax = plt.subplots(figsize=figsize)
    return ax


def plot_allreduce(rows: Sequence[dict], model=None, *, ax=None, title: str = "All-reduce time against size"):
    """Measured all-reduce seconds against bytes (log-log), one line per (impl, world size),
    with ``model.predict`` (a :class:`labkit.parallel.cost.CostModel`) dashed when given."""
    if not rows:
        raise ValueError("rows is empty: pass the rows of allreduce_sweep")
    ax = _axes(ax)
    keys = sorted({(r["impl"], r["world_size"]) for r in rows})
    for impl, p in keys:
        sel = sorted((r for r in rows if r["impl"] == impl and r["world_size"] == p), key=lambda r: r["bytes"])
        xs = np.array([r["bytes"] for r in sel]) / 2**20
        line, = ax.loglog(xs, [r["seconds"] * 1e3 for r in sel], "o-", label=f"{impl}, p={p}")
        if model is not None:
            ax.loglog(xs, [model.predict(r["bytes"], p) * 1e3 for r in sel], "--", color=line.get_color(), alpha=0.7,
                      label=f"model, p={p}")
    ax.set(xlabel="message size (MB)", ylabel="time (ms)", title=title)
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_formatter(plt.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return ax


def plot_step_breakdown(timings: Sequence[dict], predicted: Sequence[float] | None = None, *, ax=None,
                        title: str = "One data-parallel step (same global batch)"):
    """Stacked bars of compute / optimizer / communication per world size (rows of
    ``step_timing``), with the measured naive and DDP steps and the model's prediction marked."""
    if not timings:
        raise ValueError("timings is empty: pass the rows of step_timing")
    ax = _axes(ax, (8, 4))
    xs = np.arange(len(timings))
    bottom = np.zeros(len(timings))
    for key, colour in (("compute", "tab:blue"), ("optimizer", "tab:green"), ("comm", "tab:red")):
        vals = np.array([t[key] * 1e3 for t in timings])
        ax.bar(xs, vals, bottom=bottom, color=colour, width=0.5, label=f"{key} (measured alone)")
        bottom += vals
    ax.plot(xs, [t["naive_step"] * 1e3 for t in timings], "k_", ms=30, mew=2, label="naive step (measured)")
    ax.plot(xs, [t["ddp_step"] * 1e3 for t in timings], "m^", ms=8, label="DDP step (measured)")
    if predicted is not None:
        if len(predicted) != len(timings):
            raise ValueError(f"{len(predicted)} predictions for {len(timings)} timings")
        ax.plot(xs, [v * 1e3 for v in predicted], "yo", mec="k", ms=8, label="cost model")
    ax.set_xticks(xs, [f"{t['world_size']} x {t['threads']}" for t in timings])
    ax.set(xlabel="processes x threads each", ylabel="time per step (ms)", title=title)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    return ax


def plot_timeline(timeline: dict, *, ax=None, title: str = "When gradient buckets are sent"):
    """One step from the start of backward: the backward span, each bucket's all-reduce launch,
    and the end of the step (a timeline from ``step_timing``)."""
    if "events" not in timeline or "backward_end" not in timeline:
        raise ValueError("timeline needs 'events' and 'backward_end' (from step_timing)")
    ax = _axes(ax, (8, 2.5))
    ax.barh(1, timeline["backward_end"] * 1e3, left=0, color="tab:blue", alpha=0.5, label="backward (until it returns)")
    launches = [e for e in timeline["events"] if e["event"] == "launch"]
    for k, e in enumerate(launches):  # labels staggered so that close launches stay readable
        ax.plot(e["t"] * 1e3, 0, "rv", ms=10)
        ax.annotate(f"bucket {e['bucket']}: {e['bytes'] / 2**20:.1f} MB", (e["t"] * 1e3, 0), textcoords="offset points",
                    xytext=(0, -14 - 11 * (k % 3)), ha="center", fontsize=7)
    ax.axvline(timeline["step_end"] * 1e3, color="k", ls=":", label="step done")
    ax.set_yticks([0, 1], ["all-reduce\nlaunched", "backward"])
    ax.set_ylim(-1.2, 1.6)
    ax.set_xlim(0, timeline["step_end"] * 1e3 * 1.05)
    ax.set(xlabel="ms since backward started", title=title)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    return ax
