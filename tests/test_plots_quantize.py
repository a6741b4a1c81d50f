"""labkit.plots.quantize: the explorer's pure data function (headless), and that each figure draws."""

import matplotlib.pyplot as plt
import pytest
import torch

from labkit.plots.quantize import (
    draw_grid,
    grid_data,
    plot_error_vs_bits,
    plot_grouped,
    plot_runtimes,
    quant_explorer,
)
from labkit.quantize import error_vs_bits
from labkit.quantize.formats import format_points


def test_grid_data_levels_and_error(gen):
    x = torch.randn(2000, generator=gen)
    d = grid_data(x, bits=3, lo=-1.0, hi=1.0)
    assert len(d["levels"]) == 8 and d["scale"] == pytest.approx(2 / 7)
    inside = (d["x"] >= d["covered"][0]) & (d["x"] <= d["covered"][1])
    assert bool((d["error"][inside].abs() <= d["scale"] / 2 + 1e-6).all())
    assert d["clipped"] == pytest.approx(float((~inside).float().mean()))
    assert 0.2 < d["clipped"] < 0.45  # about 32% of a standard normal lies outside [-1, 1]
    assert d["mse"] == pytest.approx(float((d["error"] ** 2).mean()))
    wide = grid_data(x, bits=3, lo=float(x.min()), hi=float(x.max()))
    assert wide["clipped"] == 0.0 and wide["scale"] > d["scale"]
    assert grid_data(x, bits=8, lo=-1, hi=1)["sqnr_db"] > d["sqnr_db"]


def test_symmetric_grid_is_centred(gen):
    d = grid_data(torch.randn(100, generator=gen), bits=4, lo=-1.0, hi=2.0, symmetric=True)
    assert d["zero_point"] == 0 and float(d["levels"][0]) == pytest.approx(-8 * d["scale"])


def test_figures_draw(gen):
    x = torch.randn(500, generator=gen)
    fig = draw_grid(grid_data(x, bits=2, lo=-2, hi=2))
    assert len(fig.axes) == 2 and "2-bit grid: 4 levels" in fig.axes[0].get_title()
    assert len(fig.axes[0].lines) == 4  # one line per level
    axes = plot_error_vs_bits({"per tensor": error_vs_bits(x, (2, 4, 8))})
    assert len(axes[0].lines) == 2 and len(axes[1].lines) == 1
    axes = plot_error_vs_bits({"per tensor": error_vs_bits(x, (2, 4, 8))}, points=format_points(x, nf4_block_size=50))
    assert [line.get_label() for line in axes[0].lines][2:] == ["fp8 e4m3", "fp8 e5m2", "NF4"]
    assert len(axes[1].lines) == 4
    ax = plot_grouped({"4-bit": {"a": 1.0, "b": 2.0}, "8-bit": {"a": 3.0, "b": 4.0}}, ylabel="dB")
    assert len(ax.patches) == 4
    rows = [{"runtime": "fp32", "speedup": 1.0, "size_ratio": 1.0}, {"runtime": "int8", "speedup": 2.5, "size_ratio": 4.0}]
    axes = plot_runtimes(rows)
    assert [p.get_width() for p in axes[1].patches] == [4.0, 1.0]  # bars drawn top-down: first row on top
    assert axes[0].get_xscale() == "log"
    assert [(p.get_x(), p.get_x() + p.get_width()) for p in axes[0].patches] == [(1.0, 2.5), (1.0, 1.0)]
    plt.close("all")


def test_explorer_static_and_interactive(gen):
    x = torch.randn(300, generator=gen)
    assert quant_explorer(x, bits=3, interactive=False) is None
    w = quant_explorer(x, bits=3, lo=-1.0, hi=1.0, interactive=True)
    values = {c.description: c.value for c in w.children[:-1]}
    assert values == {"bits": 3, "lo": -1.0, "hi": 1.0, "symmetric": False}
    plt.close("all")


def test_bad_input(gen):
    x = torch.randn(10, generator=gen)
    with pytest.raises(ValueError, match="lo must be below hi"):
        grid_data(x, lo=1.0, hi=-1.0)
    with pytest.raises(ValueError, match="bits must be an int between 1 and 16"):
        grid_data(x, bits=0)
    with pytest.raises(TypeError, match="non-empty floating-point"):
        grid_data(torch.ones(3, dtype=torch.int64))
    with pytest.raises(ValueError, match="data lacks"):
        draw_grid({"x": x})
    with pytest.raises(ValueError, match="curves is empty"):
        plot_error_vs_bits({})
    with pytest.raises(ValueError, match="table is empty"):
        plot_grouped({})
    with pytest.raises(ValueError, match="rows is empty"):
        plot_runtimes([])
