"""labkit.plots.distill: the similarity matrix (hand-worked) and what each figure draws."""

from __future__ import annotations

import pytest
import torch

from labkit.plots.distill import (
    class_similarity,
    plot_pareto,
    plot_similarity,
    plot_soft_targets,
    plot_sweep,
)


def test_class_similarity_hand_worked():
    # class 0 images: all doubt goes to class 2; class 1: split evenly between 0 and 2
    logits = torch.log(torch.tensor([[0.8, 0.0, 0.2], [0.6, 0.0, 0.4], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6]]) + 1e-12)
    labels = torch.tensor([0, 0, 1, 2])
    s = class_similarity(logits, labels)
    assert torch.allclose(s[0], torch.tensor([0.0, 0.0, 1.0]), atol=1e-6)
    assert torch.allclose(s[1], torch.tensor([0.5, 0.0, 0.5]), atol=1e-6)
    assert torch.allclose(s[2], torch.tensor([0.5, 0.5, 0.0]), atol=1e-6)
    assert torch.allclose(s.diagonal(), torch.zeros(3))


def test_class_similarity_bad_input():
    with pytest.raises(ValueError, match="logits"):
        class_similarity(torch.zeros(3), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="labels"):
        class_similarity(torch.zeros(3, 2), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="temperature"):
        class_similarity(torch.zeros(3, 2), torch.zeros(3, dtype=torch.long), temperature=0)


def test_plot_similarity_and_soft_targets():
    ax = plot_similarity(torch.eye(4).roll(1, 1))
    assert ax.images and len(ax.texts) == 4  # one label per row, on its largest cell
    with pytest.raises(ValueError, match="square"):
        plot_similarity(torch.zeros(2, 3))
    ax = plot_soft_targets({1.0: torch.tensor([0.9, 0.1]), 4.0: torch.tensor([0.6, 0.4])})
    assert len(ax.patches) == 4 and ax.get_yscale() == "log"
    with pytest.raises(ValueError, match="empty"):
        plot_soft_targets({})
    with pytest.raises(ValueError, match="same number"):
        plot_soft_targets({1.0: torch.tensor([0.5, 0.5]), 2.0: torch.tensor([1.0, 0.0, 0.0])})


def test_plot_sweep_places_values():
    results = {(1, 0.5): 0.9, (4, 0.5): 0.92, (1, 1.0): 0.93, (4, 1.0): 0.95}
    ax = plot_sweep(results)
    texts = {t.get_text() for t in ax.texts}
    assert texts == {"90.0%", "92.0%", "93.0%", "95.0%"}
    grid = ax.images[0].get_array()
    assert grid[1, 1] == pytest.approx(0.95) and grid[0, 0] == pytest.approx(0.9)  # rows: alpha, cols: T
    with pytest.raises(ValueError, match="empty"):
        plot_sweep({})


def test_plot_pareto():
    rows = [{"step": "a", "latency_ms": 10.0, "accuracy": 0.97}, {"step": "b", "latency_ms": 2.0, "accuracy": 0.96},
            {"step": "c", "latency_ms": 5.0, "accuracy": 0.9}]
    ax = plot_pareto(rows, x="latency_ms", front=["a", "b"])
    assert [t.get_text() for t in ax.texts] == ["1", "2", "3"]
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["1  a", "2  b", "3  c", "Pareto front"]
    assert ax.get_xscale() == "log"
    red = [line for line in ax.lines if line.get_linestyle() == "-"]
    assert len(red) == 1 and list(red[0].get_xdata()) == [2.0, 10.0]  # the front joins b and a, by x
    with pytest.raises(ValueError, match="needs"):
        plot_pareto([{"step": "a"}], x="latency_ms")
    with pytest.raises(ValueError, match="empty"):
        plot_pareto([], x="latency_ms")
