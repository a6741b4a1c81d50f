"""Gantt charts and the schedule explorer: the pure data function, and what gets drawn."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pytest

from labkit.parallel.schedule import Slot, gpipe, interleaved, one_f_one_b
from labkit.plots.parallel import (
    COLOURS,
    LIGHT,
    gantt_bars,
    plot_gantt,
    plot_planned_vs_measured,
    schedule_explorer,
    schedule_view,
)


def test_schedule_view_numbers():
    v = schedule_view(4, 8, "gpipe")
    assert v["bubble"] == pytest.approx(3 / 11) and v["formula"] == pytest.approx(3 / 11)
    assert v["makespan"] == 11 * 3 and v["peak_in_flight"] == [8] * 4 and len(v["slots"]) == 64
    w = schedule_view(4, 8, "1f1b")
    assert w["bubble"] == pytest.approx(v["bubble"]) and w["peak_in_flight"] == [4, 3, 2, 1]


def test_schedule_view_interleaved():
    v = schedule_view(4, 8, "interleaved", virtual_stages=2)
    assert v["bubble"] == pytest.approx(3 / (2 * 8 + 3)) and v["formula"] == pytest.approx(3 / 19)
    assert v["makespan"] == pytest.approx((8 + 3 / 2) * 3) and len(v["slots"]) == 4 * 2 * 8 * 2
    assert schedule_view(4, 8, "1f1b", virtual_stages=3)["virtual_stages"] == 1  # v only for interleaved


def test_gantt_bars_shade_odd_chunks():
    bars = gantt_bars(interleaved(2, 2, 2, t_forward=2, t_backward=4))
    assert bars[0][:4] == [(0, 1, COLOURS["F"], "F0"), (1, 1, COLOURS["F"], "F1"),
                           (2, 1, LIGHT["F"], "F0"), (3, 1, LIGHT["F"], "F1")]
    ax = plot_gantt(interleaved(2, 2, 2))
    assert "backward, odd chunk" in [t.get_text() for t in ax.get_legend().get_texts()]
    plt.close("all")


def test_gantt_bars_by_hand():
    bars = gantt_bars(gpipe(2, 1, t_forward=1, t_backward=1))
    assert bars == {0: [(0, 1, COLOURS["F"], "F0"), (3, 1, COLOURS["B"], "B0")],
                    1: [(1, 1, COLOURS["F"], "F0"), (2, 1, COLOURS["B"], "B0")]}
    with pytest.raises(ValueError, match="slots"):
        gantt_bars([])


def test_plot_gantt_draws_one_bar_per_op():
    ax = plot_gantt(one_f_one_b(3, 4))
    drawn = sum(len(c.get_paths()) for c in ax.collections)
    assert drawn == 3 * 2 * 4
    assert [t.get_text() for t in ax.get_yticklabels()] == ["stage 0", "stage 1", "stage 2"]
    assert "idle share" in ax.get_title()
    plt.close("all")


def test_planned_vs_measured_shares_the_time_axis():
    measured = [Slot(s.stage, s.kind, s.micro, 10 + 0.01 * s.start, 10 + 0.01 * s.end) for s in gpipe(2, 3)]
    top, bottom = plot_planned_vs_measured(measured, 0.01, 0.02)
    assert "formula 25.0%" in top.get_title() and "measured: idle 25.0%" in bottom.get_title()
    assert bottom.get_xlim()[0] < 0.01  # measured times shifted to start at 0
    with pytest.raises(ValueError, match="measured"):
        plot_planned_vs_measured([], 1, 2)
    measured = [Slot(s.stage, s.kind, s.micro, 5 + 0.01 * s.start, 5 + 0.01 * s.end, s.chunk)
                for s in interleaved(2, 4, 2, t_forward=2, t_backward=4)]  # each chunk op: 0.01 s F, 0.02 s B
    top, bottom = plot_planned_vs_measured(measured, 0.01, 0.02, "interleaved")
    assert f"v=2): idle {1 / 9:.1%}, formula {1 / 9:.1%}" in top.get_title()
    assert f"measured: idle {1 / 9:.1%}" in bottom.get_title()
    plt.close("all")


def test_explorer_static_and_interactive():
    fig = schedule_explorer(3, 5, "1f1b", interactive=False)
    assert "p=3, m=5" in fig.axes[0].get_title()
    box = schedule_explorer(3, 12, "1f1b", interactive=True)
    values = {c.description: c.value for c in box.children if hasattr(c, "value")}
    assert values == {"stages": 3, "micro-batches": 12, "schedule": "1f1b", "virtual stages": 2}  # the given values
    fig = schedule_explorer(4, 6, "interleaved", 2, interactive=False)  # m rounded up to 8 = 2p
    assert "p=4, m=8 (m rounded up to a multiple of p), v=2" in fig.axes[0].get_title()
    assert f"formula {3 / (2 * 8 + 3):.1%}" in fig.axes[0].get_title()
    with pytest.raises(ValueError, match="schedule"):
        schedule_explorer(schedule="zigzag")
    with pytest.raises(ValueError, match="virtual_stages"):
        schedule_explorer(4, 8, "interleaved", 0)
    with pytest.raises(ValueError, match="stages"):
        schedule_explorer(0, 4)
    plt.close("all")
