"""Figures of lesson ``05_pruning``: weight histograms, sensitivity curves, accuracy vs sparsity.

Each function draws on a given ``ax`` (or a new figure) and returns the ``Axes``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from labkit import _args
from labkit.plots import _axes


def plot_weight_histogram(weights: Mapping[str, torch.Tensor], *, ax=None, bins: int = 80, title: str = "",
                          log: bool = True):
    """Overlaid histograms of several weight tensors, ``{label: tensor}`` (zeros included).

    A magnitude-pruned tensor shows a spike at 0 and a gap around it; an L1-trained one a spike
    at 0 and tails that shrank.
    """
    _args.mapping("weights", weights, what="a dict {label: weight tensor}")
    bins = _args.positive_int("bins", bins)
    if not weights:
        raise ValueError("weights is empty")
    ax = _axes(ax)
    values = {k: _args.tensor(f"weights[{k!r}]", v, non_empty=True).detach().flatten().float().cpu()
              for k, v in weights.items()}
    lo = min(float(v.min()) for v in values.values())
    hi = max(float(v.max()) for v in values.values())
    edges = torch.linspace(lo, hi, bins + 1).numpy()
    for label, v in values.items():
        ax.hist(v.numpy(), bins=edges, histtype="stepfilled", alpha=0.45, label=f"{label} ({(v == 0).float().mean():.0%} zeros)")
    if log:
        ax.set_yscale("log")
    ax.set(xlabel="weight value", ylabel="count" + (" (log)" if log else ""), title=title)
    ax.legend(fontsize=8)
    return ax


def plot_sensitivity(result: Mapping[str, Sequence[float]], amounts: Sequence[float], *, ax=None,
                     title: str = "Sensitivity: prune one layer at a time"):
    """Accuracy against the amount pruned, one line per layer (``sensitivity_analysis``'s result).

    The baseline (key ``""``) is drawn as a dashed line.
    """
    _args.mapping("result", result, what="a dict {layer: accuracies} (sensitivity_analysis's result)")
    amounts = _args.sequence("amounts", amounts)
    if not result:
        raise ValueError("result is empty")
    ax = _axes(ax)
    for name, accs in result.items():
        if len(accs) != len(amounts):
            raise ValueError(f"layer {name!r} has {len(accs)} values but there are {len(amounts)} amounts")
        if name == "":
            ax.axhline(accs[0], color="grey", ls="--", lw=1, label="not pruned")
        else:
            ax.plot(amounts, accs, marker="o", label=name)
    ax.set(xlabel="fraction of the layer's weights pruned", ylabel="accuracy", title=title)
    ax.legend(fontsize=8)
    return ax


def plot_accuracy_vs_sparsity(curves: Mapping[str, Sequence[tuple[float, float]]], *, baseline: float | None = None,
                              ax=None, title: str = "Accuracy vs sparsity"):
    """One line per method, each a list of ``(sparsity, accuracy)`` points."""
    _args.mapping("curves", curves, what="a dict {method: [(sparsity, accuracy), ...]}")
    if baseline is not None:
        baseline = _args.real("baseline", baseline)
    if not curves:
        raise ValueError("curves is empty")
    ax = _axes(ax)
    for name, points in curves.items():
        _args.sequence(f"curves[{name!r}]", points, non_empty=True, what="a list of (sparsity, accuracy) pairs")
        xs, ys = zip(*sorted(points))
        ax.plot(xs, ys, marker="o", label=name)
    if baseline is not None:
        ax.axhline(baseline, color="grey", ls="--", lw=1, label="dense model")
    ax.set(xlabel="sparsity (fraction of weights that are zero)", ylabel="accuracy", title=title)
    ax.legend(fontsize=8)
    return ax
