"""Pruning over time: Zhu & Gupta's cubic schedule, sensitivity analysis, L1-regularised training.

Pruning 90% of a network in one shot destroys it; pruning a little at a time while it trains
lets the remaining weights take over. Zhu & Gupta ("To prune, or not to prune", 2017) raise the
sparsity from ``s_i`` to ``s_f`` over ``n`` pruning events ``t = t_0, t_0 + dt, ..., t_0 + n dt``::

    s_t = s_f + (s_i - s_f) * (1 - (t - t_0) / (n dt)) ** 3

fast at first (there are many redundant weights) and slowly near the end. :class:`GradualPruner`
runs that schedule inside ``labkit.train.fit`` as its ``after_step`` hook.

Sensitivity analysis prunes one layer at a time and measures accuracy: the layers whose accuracy
falls first deserve a smaller amount. L1 regularisation (``loss + lam * sum|w|``) pushes weights
towards zero during training; a proximal step (soft thresholding,
``w <- sign(w) * max(|w| - t, 0)``) makes them exactly zero. Used in ``notebooks/05_pruning.ipynb``;
tested in ``tests/test_prune_schedule.py``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Sequence

import torch
from torch import nn
from torch.nn.utils import parametrize

from labkit import _args
from labkit.prune.masks import (
    SCOPES,
    apply_masks_,
    check_amount,
    magnitude_prune_,
    prunable_layers,
)
from labkit.train import evaluate


def cubic_sparsity(step: int, *, final_sparsity: float, end_step: int, begin_step: int = 0,
                   initial_sparsity: float = 0.0) -> float:
    """Zhu & Gupta's target sparsity at ``step``: ``s_f + (s_i - s_f) (1 - p)^3`` with
    ``p = (step - begin_step) / (end_step - begin_step)`` clipped to [0, 1]."""
    step = _args.non_negative_int("step", step)
    begin_step = _args.non_negative_int("begin_step", begin_step)
    end_step = _args.non_negative_int("end_step", end_step)
    if end_step <= begin_step:
        raise ValueError(f"end_step ({end_step}) must be after begin_step ({begin_step})")
    s_f = check_amount(final_sparsity, "final_sparsity")
    s_i = check_amount(initial_sparsity, "initial_sparsity")
    if s_i > s_f:
        raise ValueError(f"initial_sparsity ({s_i}) must not exceed final_sparsity ({s_f})")
    progress = min(max((step - begin_step) / (end_step - begin_step), 0.0), 1.0)
    return s_f + (s_i - s_f) * (1.0 - progress) ** 3


class GradualPruner:
    """Gradual magnitude pruning during training: pass it as ``fit(..., after_step=pruner)``.

    Every ``frequency`` optimizer steps between ``begin_step`` and ``end_step`` it prunes the
    model to :func:`cubic_sparsity` of the current step (global or layer-wise magnitude). Masks
    of ones are attached when it is built (each layer keeps its weight ``Parameter`` object, now
    ``parametrizations.weight.original``, so an existing optimizer still updates it); ``history``
    keeps ``(step, sparsity)`` of each pruning event.
    """

    def __init__(self, model: nn.Module, *, final_sparsity: float, end_step: int, begin_step: int = 0,
                 frequency: int = 10, initial_sparsity: float = 0.0, scope: str = "global",
                 layers: Iterable[str] | None = None):
        _args.module("model", model)
        _args.choice("scope", scope, SCOPES)
        self.frequency = _args.positive_int("frequency", frequency)
        cubic_sparsity(begin_step, final_sparsity=final_sparsity, end_step=end_step, begin_step=begin_step,
                       initial_sparsity=initial_sparsity)  # validates the schedule's arguments
        self.final_sparsity, self.initial_sparsity = float(final_sparsity), float(initial_sparsity)
        self.begin_step, self.end_step, self.scope = begin_step, end_step, scope
        self.layers = list(prunable_layers(model, layers))
        apply_masks_(model, {n: torch.ones_like(m.weight, dtype=torch.bool)
                             for n, m in prunable_layers(model, self.layers).items()})
        self.step = 0
        self.history: list[tuple[int, float]] = []

    def target(self, step: int) -> float:
        return cubic_sparsity(step, final_sparsity=self.final_sparsity, end_step=self.end_step,
                              begin_step=self.begin_step, initial_sparsity=self.initial_sparsity)

    def __call__(self, model: nn.Module) -> None:
        self.step += 1
        t = self.step
        due = (t - self.begin_step) % self.frequency == 0 or t == self.end_step
        if self.begin_step <= t <= self.end_step and due:
            sparsity = self.target(t)
            magnitude_prune_(model, sparsity, scope=self.scope, layers=self.layers)
            self.history.append((t, sparsity))


def sensitivity_analysis(model: nn.Module, loader: Iterable, *, amounts: Sequence[float] = (0.3, 0.5, 0.7, 0.9),
                         layers: Iterable[str] | None = None, metric: Callable[[nn.Module], float] | None = None,
                         device=None) -> dict[str, list[float]]:
    """Accuracy after pruning *one* layer at a time by each amount: ``{layer: [acc per amount]}``.

    ``model`` is left untouched (each trial prunes a copy). ``metric(model) -> float`` replaces
    the default, accuracy on ``loader``. The baseline (nothing pruned) is under the key ``""``.
    """
    _args.module("model", model)
    if metric is None:  # the default metric reads the loader; a custom one may not need it
        _args.iterable("loader", loader, "an iterable of (x, y) batches (a DataLoader)")
    amounts = [check_amount(a, f"amounts[{i}]") for i, a in
               enumerate(_args.sequence("amounts", amounts, non_empty=True, what="a list of fractions"))]
    if metric is not None:
        _args.function("metric", metric)
    names = list(prunable_layers(model, layers))
    score = metric or (lambda m: evaluate(m, loader, device=device)["accuracy"])
    result = {"": [score(model)] * len(amounts)}
    for name in names:
        result[name] = []
        for a in amounts:
            trial = copy.deepcopy(model)
            magnitude_prune_(trial, a, layers=[name])
            result[name].append(score(trial))
    return result


def l1_penalty(model: nn.Module, *, layers: Iterable[str] | None = None) -> torch.Tensor:
    """``sum |w|`` over the weights of the prunable layers (differentiable)."""
    return sum(m.weight.abs().sum() for m in prunable_layers(model, layers).values())


def l1_regularized(model: nn.Module, strength: float, *, loss_fn: Callable | None = None,
                   layers: Iterable[str] | None = None) -> Callable:
    """A ``loss_fn(out, y)`` for ``fit``: ``loss_fn(out, y) + strength * sum |w|``."""
    strength = _args.non_negative_float("strength", strength)
    if loss_fn is not None:
        _args.function("loss_fn", loss_fn)
    prunable_layers(model, layers)
    base = loss_fn or nn.functional.cross_entropy

    def loss(out, y):
        return base(out, y) + strength * l1_penalty(model, layers=layers)

    return loss


@torch.no_grad()
def soft_threshold_(model: nn.Module, threshold: float, *, layers: Iterable[str] | None = None) -> nn.Module:
    """The proximal step of L1: ``w <- sign(w) * max(|w| - threshold, 0)`` on every prunable weight.

    Called after each optimizer step (``after_step=lambda m: soft_threshold_(m, lr * lam)``) it
    turns L1's pull towards zero into exact zeros (ISTA).
    """
    threshold = _args.non_negative_float("threshold", threshold)
    for m in prunable_layers(model, layers).values():
        w = m.parametrizations.weight.original if parametrize.is_parametrized(m, "weight") else m.weight
        w.copy_(w.sign() * (w.abs() - threshold).clamp_min(0))
    return model
