"""labkit.plots.hardware (lesson 01 figures) and labkit.plots.plot_images (lesson 00):
the drawn data must be the data given, and bad rows must be refused."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

from labkit.plots import plot_images
from labkit.plots.hardware import plot_matmul_sweep, plot_matmul_times, plot_thread_scaling

ROWS = [
    {"n": 64, "dtype": "float32", "device": "cpu", "gflops": 10.0, "seconds": 2 * 64**3 / 10e9},
    {"n": 512, "dtype": "float32", "device": "cpu", "gflops": 80.0, "seconds": 2 * 512**3 / 80e9},
    {"n": 64, "dtype": "bfloat16", "device": "cpu", "gflops": 5.0, "seconds": 2 * 64**3 / 5e9},
    {"n": 512, "dtype": "bfloat16", "device": "cpu", "gflops": 150.0, "seconds": 2 * 512**3 / 150e9},
]


@pytest.fixture(autouse=True)
def _close():
    yield
    plt.close("all")


def _line(ax, label):
    return next(line for line in ax.get_lines() if line.get_label() == label)


def test_matmul_sweep_draws_one_line_per_dtype_and_the_peak():
    ax = plot_matmul_sweep(ROWS, peak_gflops=200.0)
    fp32 = _line(ax, "cpu float32")
    assert list(fp32.get_xdata()) == [64, 512] and list(fp32.get_ydata()) == [10.0, 80.0]
    assert list(_line(ax, "cpu bfloat16").get_ydata()) == [5.0, 150.0]
    peak = _line(ax, "peak estimate 200")
    assert set(peak.get_ydata()) == {200.0}
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"


def test_matmul_times_has_the_ideal_line():
    ax = plot_matmul_times(ROWS, peak_gflops=100.0)
    ideal = _line(ax, "ideal 2n^3 / peak")
    np.testing.assert_allclose(ideal.get_ydata(), [2 * 64**3 / 100e9 * 1e6, 2 * 512**3 / 100e9 * 1e6])
    np.testing.assert_allclose(_line(ax, "measured cpu float32").get_ydata(), [r["seconds"] * 1e6 for r in ROWS[:2]])


def test_thread_scaling_plot():
    rows = [{"threads": 1, "seconds": 1.0, "speedup": 1.0}, {"threads": 2, "seconds": 0.6, "speedup": 1 / 0.6}]
    ax = plot_thread_scaling(rows)
    assert list(_line(ax, "measured").get_ydata()) == [1.0, pytest.approx(1 / 0.6)]
    assert list(_line(ax, "ideal").get_ydata()) == [1, 2]


@pytest.mark.parametrize("call, match", [
    (lambda: plot_matmul_sweep([]), "rows is empty"),
    (lambda: plot_matmul_sweep([{"n": 4, "gflops": 1.0}]), "lacks"),
    (lambda: plot_matmul_sweep(ROWS, peak_gflops=-1.0), "peak_gflops must be positive"),
    (lambda: plot_matmul_times(ROWS, peak_gflops=0.0), "peak_gflops must be positive"),
    (lambda: plot_thread_scaling([]), "rows is empty"),
    (lambda: plot_thread_scaling([{"threads": 1}]), "speedup"),
])
def test_bad_rows_are_refused(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_plot_images_grid_and_labels():
    images = torch.arange(10 * 8 * 8, dtype=torch.float32).reshape(10, 1, 8, 8)
    fig = plot_images(images, labels=torch.arange(10), ncols=4, title="digits")
    axes = fig.get_axes()
    assert len(axes) == 12  # 3 rows x 4 columns, the last two blank
    assert [ax.get_title() for ax in axes[:10]] == [str(i) for i in range(10)]
    np.testing.assert_array_equal(axes[3].get_images()[0].get_array(), images[3, 0].numpy())
    assert not axes[11].get_images()
    assert fig._suptitle.get_text() == "digits"
    plot_images(images[:, 0], ncols=20)  # (N, H, W) works too


@pytest.mark.parametrize("kwargs, match", [
    ({"ncols": 0}, "ncols"),
    ({"images": torch.zeros(0, 1, 8, 8)}, "empty"),
    ({"images": torch.zeros(4, 8)}, "shaped"),
    ({"labels": [1, 2]}, "4 images but 2 labels"),
])
def test_plot_images_bad_input(kwargs, match):
    args = {"images": torch.zeros(4, 1, 8, 8), **kwargs}
    with pytest.raises(ValueError, match=match):
        plot_images(args.pop("images"), **args)
