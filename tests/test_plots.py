"""labkit.plots and labkit.widgets: figures hold the data given; explorers fall back to static figures."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pytest

from labkit import plots as P
from labkit import widgets as W
from labkit.train import History


def teardown_function():
    plt.close("all")


def test_history_curves():
    h = History()
    for v in (1.0, 0.5, 0.25):
        h.log(train_loss=v, val_acc=1 - v)
    ax = P.plot_history(h, ["train_loss"])
    assert list(ax.lines[0].get_ydata()) == [1.0, 0.5, 0.25]
    with pytest.raises(ValueError, match="no metric"):
        P.plot_history(h, ["nope"])
    with pytest.raises(ValueError):
        P.plot_history({})


def test_bars_and_lines():
    ax = P.plot_bars({"fp32": 2.0, "int8": 1.0}, errors={"fp32": 0.1})
    assert [p.get_height() for p in ax.patches] == [2.0, 1.0]
    ax = P.plot_lines([1, 2, 4], {"a": [1, 2, 3]}, logx=True)
    assert list(ax.lines[0].get_xdata()) == [1, 2, 4] and ax.get_xscale() == "log"
    with pytest.raises(ValueError, match="points"):
        P.plot_lines([1, 2], {"a": [1]})
    with pytest.raises(ValueError):
        P.plot_bars({})


def test_roofline_shape():
    ax = P.plot_roofline(100.0, 10.0, [{"intensity": 0.125, "gflops": 1.0, "label": "add"}])
    roof = ax.lines[0]
    xs, ys = np.asarray(roof.get_xdata()), np.asarray(roof.get_ydata())
    assert np.allclose(ys, np.minimum(100.0, 10.0 * xs))
    assert ax.lines[-1].get_xdata()[0] == 0.125
    with pytest.raises(ValueError):
        P.plot_roofline(0, 1)


def test_explorer_static_fallback_and_live(monkeypatch):
    drawn = []

    def draw(bits):
        drawn.append(bits)
        return bits * 2

    monkeypatch.setenv(W.STATIC_ENV, "1")
    assert not W.widgets_available()
    assert W.explorer(draw, {"bits": (1, 8, 1)}, {"bits": 4}) == 8 and drawn == [4]
    import ipywidgets

    box = W.explorer(draw, {"bits": ipywidgets.IntSlider(min=1, max=8)}, {"bits": 3}, interactive=True)
    assert isinstance(box, ipywidgets.interactive) and drawn[-1] == 3
    box.children[0].value = 6  # moving the slider redraws
    assert drawn[-1] == 6
    with pytest.raises(ValueError, match="same arguments"):
        W.explorer(draw, {"bits": (1, 8)}, {})
    with pytest.raises(TypeError):
        W.explorer(5, {}, {})
