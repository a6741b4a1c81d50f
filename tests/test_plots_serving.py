"""labkit.plots.serving: the decode explorer's data against the roofline formula (worked example),
its figure, the static fallback, and the KV-cache plot."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pytest

from labkit.plots.serving import decode_curve, decode_explorer, draw_decode, plot_kv_speedup

KW = dict(params=1_000_000, kv_bytes_per_position=0, bandwidth_gbs=10.0, peak_gflops=100.0)


def test_decode_curve_worked_example():
    data = decode_curve(bits=32, context=1, max_batch=40, **KW)
    # 4 MB of fp32 weights at 10 GB/s: 2500 tokens/s at batch 1; ceiling 100 GFLOP/s / 2 MFLOP = 50,000
    assert data["roofline"][0] == pytest.approx(2500.0)
    assert data["compute_bound"] == pytest.approx(50_000.0)
    assert data["ridge_batch"] == pytest.approx(20.0)
    assert data["roofline"][19] == pytest.approx(50_000.0) and data["roofline"][39] == pytest.approx(50_000.0)
    assert data["memory_bound"][39] == pytest.approx(100_000.0)
    int4 = decode_curve(bits=4, context=1, max_batch=40, **KW)
    assert int4["roofline"][0] == pytest.approx(8 * 2500.0) and int4["ridge_batch"] == pytest.approx(2.5)


def test_kv_bytes_lower_the_memory_line():
    data = decode_curve(bits=32, context=100, max_batch=4, **{**KW, "kv_bytes_per_position": 10_000})
    assert data["memory_bound"][0] == pytest.approx(10e9 / (4_000_000 + 1_000_000))


def test_figures_draw_and_the_explorer_falls_back_to_a_static_figure():
    ax = draw_decode(decode_curve(bits=8, context=16, **KW), measured=[{"batch": 1, "tokens_per_s": 2000.0}])
    assert len(ax.lines) == 5  # roofline, memory line, ceiling, ridge, measured points
    plt.close("all")
    assert decode_explorer(**KW, interactive=False) is None  # draws with plt.show(), returns nothing
    ax = plot_kv_speedup([{"length": 8, "cached_ms": 1.0, "recompute_ms": 2.0},
                          {"length": 64, "cached_ms": 1.1, "recompute_ms": 9.0}])
    assert [list(line.get_ydata()) for line in ax.lines] == [[2.0, 9.0], [1.0, 1.1]]
    plt.close("all")


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="bits"):
        decode_curve(bits=3, context=1, **KW)
    with pytest.raises(ValueError, match="context"):
        decode_curve(bits=8, context=0, **KW)
    with pytest.raises(ValueError, match="data lacks"):
        draw_decode({"batches": [1]})
    with pytest.raises(ValueError, match="rows"):
        plot_kv_speedup([])


def test_the_explorer_has_a_slider_per_control():
    widget = decode_explorer(**KW, bits=8, context=16, interactive=True)
    bits, context = widget.children[:2]
    assert (bits.description, bits.value, context.description, context.value) == ("weight bits", 8, "context", 16)
    plt.close("all")
