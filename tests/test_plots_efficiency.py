"""labkit.plots.efficiency (lesson 02 figures): the drawn data is the data given; bad rows are refused."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pytest

from labkit.plots.efficiency import (
    plot_memory_breakdown,
    plot_phase_split,
    plot_throughput,
    plot_tradeoff,
)


@pytest.fixture(autouse=True)
def _close():
    yield
    plt.close("all")


def test_phase_split_widths_are_the_shares():
    ax = plot_phase_split({"data": 0.1, "forward": 0.3, "backward": 0.5, "other": 0.1})
    widths = [p.get_width() for p in ax.patches]
    lefts = [p.get_x() for p in ax.patches]
    assert widths == pytest.approx([10, 30, 50, 10])
    assert lefts == pytest.approx([0, 10, 40, 90])
    with pytest.raises(ValueError, match="fractions"):
        plot_phase_split({})
    with pytest.raises(ValueError, match="fractions"):
        plot_phase_split({"a": -0.1})


def test_memory_breakdown_stacks_parts():
    rows = {"SGD": {"parameters": 4e6, "gradients": 4e6, "optimizer_state": 0, "activations": 2e6},
            "Adam": {"parameters": 4e6, "gradients": 4e6, "optimizer_state": 8e6, "activations": 2e6}}
    ax = plot_memory_breakdown(rows)
    tops = {}
    for p in ax.patches:
        tops[round(p.get_x() + p.get_width() / 2)] = max(tops.get(round(p.get_x() + p.get_width() / 2), 0),
                                                        p.get_y() + p.get_height())
    assert sorted(tops.values()) == pytest.approx([10, 18])
    with pytest.raises(ValueError, match="lacks"):
        plot_memory_breakdown({"SGD": {"parameters": 1}})
    with pytest.raises(ValueError, match="empty"):
        plot_memory_breakdown({})


def test_tradeoff_points():
    pts = [{"segments": 2, "time_ratio": 1.2, "memory_ratio": 0.6}, {"segments": 4, "time_ratio": 1.3, "memory_ratio": 0.3}]
    ax = plot_tradeoff(pts)
    line = next(ln for ln in ax.get_lines() if ln.get_label().startswith("checkpointed"))
    xs, ys = line.get_data()
    assert list(xs) == [1.2, 1.3] and list(ys) == [0.6, 0.3]
    assert [t.get_text() for t in ax.texts] == ["2", "4"]
    with pytest.raises(ValueError, match="keys"):
        plot_tradeoff([{"segments": 2}])


def test_throughput_groups():
    rows = [{"data": "mem", "config": "0 workers", "samples_per_s": 100.0},
            {"data": "mem", "config": "2 workers", "samples_per_s": 50.0},
            {"data": "disk", "config": "0 workers", "samples_per_s": 80.0}]
    ax = plot_throughput(rows)
    heights = sorted(p.get_height() for p in ax.patches)
    assert heights == [50.0, 80.0, 100.0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["mem", "disk"]
    with pytest.raises(ValueError, match="keys"):
        plot_throughput([{"data": "mem"}])
    with pytest.raises(ValueError, match="empty"):
        plot_throughput([])
