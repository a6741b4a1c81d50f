"""labkit.plots.prune: each figure draws what it is given, and rejects what it cannot draw."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pytest
import torch

from labkit.plots.prune import plot_accuracy_vs_sparsity, plot_sensitivity, plot_weight_histogram


def test_weight_histogram_counts_every_weight_and_labels_zeros(gen):
    dense = torch.randn(1000, generator=gen)
    pruned = dense * (dense.abs() > 1.0)
    ax = plot_weight_histogram({"dense": dense, "pruned": pruned}, bins=20)
    assert len(ax.patches) == 2  # one filled step outline per tensor
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    zeros = float((pruned == 0).float().mean())
    assert labels == ["dense (0% zeros)", f"pruned ({zeros:.0%} zeros)"]
    assert ax.get_yscale() == "log"
    plt.close("all")
    with pytest.raises(ValueError, match="empty"):
        plot_weight_histogram({})


def test_sensitivity_and_accuracy_curves():
    result = {"": [0.9, 0.9], "conv": [0.88, 0.5], "fc": [0.9, 0.85]}
    ax = plot_sensitivity(result, [0.5, 0.9])
    assert len(ax.lines) == 3  # baseline + 2 layers
    assert list(ax.lines[1].get_ydata()) == [0.88, 0.5]
    with pytest.raises(ValueError, match="amounts"):
        plot_sensitivity(result, [0.5])
    ax = plot_accuracy_vs_sparsity({"one-shot": [(0.9, 0.5), (0.5, 0.9)]}, baseline=0.95)
    assert list(ax.lines[0].get_xdata()) == [0.5, 0.9]  # sorted by sparsity
    assert len(ax.lines) == 2
    plt.close("all")
    with pytest.raises(ValueError, match="empty"):
        plot_accuracy_vs_sparsity({})
