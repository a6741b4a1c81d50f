"""Figures of the parallelism lessons.

Lesson ``03_data_parallelism``: all-reduce time against size with the fitted cost model, where a
data-parallel step's time goes at each world size, and a step's timeline of gradient buckets
against backward. Lesson ``04_model_parallelism``: Gantt charts of pipeline schedules, planned and
measured, and an explorer. :func:`schedule_view` is the pure part (stages, micro-batches,
schedule name -> slots and the numbers worth printing; tested headless); :func:`plot_gantt` draws
any list of :class:`labkit.parallel.schedule.Slot` (time units or measured seconds), one row per
stage, forwards and backwards in two colours (a lighter shade for odd model chunks of an
interleaved schedule), each bar labelled with its micro-batch; :func:`schedule_explorer` puts
sliders for ``p``, ``m`` and the virtual stages ``v`` on it (a static figure without ipywidgets). Each drawing function draws on ``ax`` (or a new figure) and returns it.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np

from labkit import _args
from labkit.parallel.schedule import (
    SCHEDULES,
    Slot,
    bubble_fraction,
    idle_fraction,
    make_schedule,
    peak_in_flight,
)
from labkit.plots import _axes
from labkit.widgets import explorer, widgets_available


def plot_allreduce(rows: Sequence[dict], model=None, *, ax=None, title: str = "All-reduce time against size"):
    """Measured all-reduce seconds against bytes (log-log), one line per (impl, world size),
    with ``model.predict`` (a :class:`labkit.parallel.cost.CostModel`) dashed when given."""
    rows = _args.rows("rows", rows, keys=("impl", "world_size", "bytes", "seconds"), non_empty=False)
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
    timings = _args.rows("timings", timings, non_empty=False,
                         keys=("compute", "optimizer", "comm", "naive_step", "ddp_step", "world_size", "threads"))
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
    _args.mapping("timeline", timeline, what="a timeline dict from step_timing")
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


# --- pipeline schedules (lesson 04) ---

COLOURS = {"F": "#4C72B0", "B": "#DD8452"}
LIGHT = {"F": "#9DB4DA", "B": "#EFC2A4"}  # the odd chunks of an interleaved schedule


def schedule_view(stages: int = 4, micro_batches: int = 8, schedule: str = "gpipe", *,
                  virtual_stages: int = 1, t_forward: float = 1.0, t_backward: float = 2.0) -> dict:
    """Everything the explorer shows for one setting: the timed slots, the bubble (simulated and
    by formula), the makespan and the peak micro-batches in flight per stage. ``virtual_stages``
    is used by the ``'interleaved'`` schedule only (the others have one chunk per stage)."""
    v = _args.positive_int("virtual_stages", virtual_stages)
    options = {"virtual_stages": v} if schedule == "interleaved" else {}
    slots = make_schedule(schedule, stages, micro_batches, t_forward=t_forward, t_backward=t_backward, **options)
    v = v if schedule == "interleaved" else 1
    return {"slots": slots, "stages": stages, "micro_batches": micro_batches, "schedule": schedule,
            "virtual_stages": v, "bubble": idle_fraction(slots), "formula": bubble_fraction(stages, micro_batches, v),
            "makespan": max(s.end for s in slots), "peak_in_flight": peak_in_flight(slots)}


def gantt_bars(slots: Sequence[Slot]) -> dict[int, list[tuple[float, float, str, str]]]:
    """Per stage, ``(start, duration, colour, label)`` bars in time order - what the chart draws."""
    slots = list(_args.iterable("slots", slots, "a list of Slot"))
    if not slots or not all(isinstance(s, Slot) for s in slots):
        raise ValueError("slots must be a non-empty list of Slot")
    bars: dict[int, list] = {}
    for s in sorted(slots, key=lambda s: (s.stage, s.start)):
        colour = (LIGHT if s.chunk % 2 else COLOURS)[s.kind]
        bars.setdefault(s.stage, []).append((s.start, s.duration, colour, f"{s.kind}{s.micro}"))
    return bars


def plot_gantt(slots: Sequence[Slot], *, ax=None, title: str = "", unit: str = "time units", labels: bool = True):
    """Gantt chart: stage 0 on top, time to the right, F blue and B orange (lighter on odd model
    chunks), idle left blank."""
    slots = list(_args.iterable("slots", slots, "a list of Slot"))
    bars = gantt_bars(slots)
    if ax is None:
        _, ax = plt.subplots(figsize=(9, 0.6 * len(bars) + 1.2))
    span = max(s.end for s in slots) - min(s.start for s in slots)
    for stage, items in bars.items():
        ax.broken_barh([(a, d) for a, d, _, _ in items], (stage - 0.4, 0.8), facecolors=[c for _, _, c, _ in items],
                       edgecolor="white", linewidth=0.5)
        if labels:
            for a, d, _, text in items:
                if d > span * 0.011 * len(text):  # only where the label fits
                    ax.text(a + d / 2, stage, text, ha="center", va="center", fontsize=7, color="white")
    ax.set_yticks(sorted(bars), [f"stage {s}" for s in sorted(bars)])
    ax.set_ylim(max(bars) + 0.6, min(bars) - 0.6)
    ax.set_xlabel(unit)
    ax.set_title(title or f"idle share {idle_fraction(slots):.0%}")
    keys = [(COLOURS, "F", "forward"), (COLOURS, "B", "backward")]
    if any(s.chunk % 2 for s in slots):
        keys += [(LIGHT, "F", "forward, odd chunk"), (LIGHT, "B", "backward, odd chunk")]
    ax.legend(handles=[plt.Rectangle((0, 0), 1, 1, color=c[k]) for c, k, _ in keys],
              labels=[text for _, _, text in keys], loc="lower right", fontsize=7, framealpha=0.8)
    return ax


def plot_planned_vs_measured(measured: Sequence[Slot], t_forward: float, t_backward: float,
                             schedule: str = "gpipe", *, axes=None):
    """Two Gantt charts on one time axis: the plan simulated with the measured median op times,
    and the measured run (seconds, shifted to start at 0). For ``'interleaved'`` the number of
    virtual stages is read from the slots' chunks and the times are those of one chunk's op."""
    measured = list(_args.iterable("measured", measured, "a list of Slot"))
    t_forward = _args.positive_float("t_forward", t_forward)
    t_backward = _args.positive_float("t_backward", t_backward)
    if not measured:
        raise ValueError("measured is empty")
    p = len({s.stage for s in measured})
    m = len({s.micro for s in measured})
    v = 1 + max(s.chunk for s in measured)
    options = {"virtual_stages": v} if schedule == "interleaved" else {}
    plan = make_schedule(schedule, p, m, t_forward=t_forward * v, t_backward=t_backward * v, **options)
    t0 = min(s.start for s in measured)
    run = [Slot(s.stage, s.kind, s.micro, s.start - t0, s.end - t0, s.chunk) for s in measured]
    if axes is None:
        _, axes = plt.subplots(2, 1, figsize=(9, 1.2 * p + 2.4), sharex=True)
    plot_gantt(plan, ax=axes[0], unit="seconds", labels=m <= 16,
               title=f"planned ({schedule}, p={p}, m={m}" + (f", v={v}" if options else "")
               + f"): idle {idle_fraction(plan):.1%}, formula {bubble_fraction(p, m, v if options else 1):.1%}")
    plot_gantt(run, ax=axes[1], unit="seconds", labels=m <= 16, title=f"measured: idle {idle_fraction(run):.1%}")
    axes[0].set_xlabel("")
    axes[0].figure.tight_layout()
    return axes


def _draw(stages: int, micro_batches: int, schedule: str, virtual_stages: int = 1):
    note = ""
    if schedule == "interleaved" and micro_batches % stages:  # Megatron's rule: m a multiple of p
        micro_batches = -(-micro_batches // stages) * stages
        note = " (m rounded up to a multiple of p)"
    view = schedule_view(stages, micro_batches, schedule, virtual_stages=virtual_stages)
    v = view["virtual_stages"]
    fig, ax = plt.subplots(figsize=(9, 0.6 * stages + 1.4))
    plot_gantt(view["slots"], ax=ax, labels=micro_batches * v <= 12,
               title=f"{schedule}: p={stages}, m={micro_batches}{note}" + (f", v={v}" if v > 1 else "")
                     + f" -> bubble {view['bubble']:.1%} (formula {view['formula']:.1%}); "
                     f"peak in flight {max(view['peak_in_flight'])}")
    plt.show()
    return fig


def schedule_explorer(stages: int = 4, micro_batches: int = 8, schedule: str = "gpipe", virtual_stages: int = 2, *,
                      interactive: bool | None = None):
    """Sliders for stages, micro-batches and virtual stages (used by ``'interleaved'``) and a
    schedule menu redrawing the Gantt chart (through :func:`labkit.widgets.explorer`; one static
    figure when widgets can't render). The interleaved schedule rounds ``m`` up to a multiple of ``p``."""
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {sorted(SCHEDULES)}, got {schedule!r}")
    schedule_view(stages, micro_batches, "gpipe", virtual_stages=virtual_stages)  # validates the numbers
    live = widgets_available() if interactive is None else interactive
    defaults = {"stages": stages, "micro_batches": micro_batches, "schedule": schedule,
                "virtual_stages": virtual_stages}
    controls = dict.fromkeys(defaults)
    if live:  # real widgets, so that they start at the defaults (explorer sets their values)
        import ipywidgets as W

        controls = {"stages": W.IntSlider(min=1, max=max(8, stages), description="stages"),
                    "micro_batches": W.IntSlider(min=1, max=max(32, micro_batches), description="micro-batches"),
                    "schedule": W.Dropdown(options=sorted(SCHEDULES), description="schedule"),
                    "virtual_stages": W.IntSlider(min=1, max=max(4, virtual_stages), description="virtual stages")}
    return explorer(_draw, controls, defaults, interactive=live)
