"""What each Linear of a model sees: its inputs on a few calibration batches, caught by forward hooks.

GPTQ, AWQ and SmoothQuant all start from the same pass: run a handful of batches of real text
through the float model and record, for every ``nn.Linear``, the rows ``X`` (``(tokens, K)``) that
reach it. From them:

* :func:`hessian` - ``H = 2 X^T X`` (``(K, K)``), the curvature of the layer's squared output
  error ``||X W^T - X W_hat^T||^2`` with respect to each weight row (GPTQ);
* :func:`layer_error` - the objective GPTQ and AWQ lower: ``mean_t ||x_t W^T - x_t W_hat^T||^2``;
* :func:`channel_stats` - per input channel ``max_t |X[t, j]|`` (SmoothQuant) and
  ``mean_t |X[t, j]|`` (AWQ's activation salience).

The hooks are removed when :func:`capture_inputs` returns, also on error. The inputs are those of
the *float* model: GPTQ's reference code instead feeds each layer the outputs of the already
quantized earlier layers. One pass is simpler; the two have not been compared here. Used by
lesson 06 §7-§8.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from labkit import _args


@torch.no_grad()
def capture_inputs(model: nn.Module, batches: Iterable, names: Iterable[str]) -> dict[str, torch.Tensor]:
    """Run ``model`` on each batch (a tensor, or a tuple whose first item is the input) and return
    ``{name: X}`` with ``X`` the float32 inputs of the Linear ``name``, flattened to ``(rows, K)``."""
    _args.module("model", model)
    modules = dict(model.named_modules())
    names = list(_args.iterable("names", names))
    seen: dict[str, list[torch.Tensor]] = {}
    hooks = []
    for name in names:
        layer = modules.get(name)
        if not isinstance(layer, nn.Linear):
            raise ValueError(f"names: {name!r} is not an nn.Linear of the model")
        seen[name] = []
        hooks.append(layer.register_forward_hook(
            lambda _m, args, _out, name=name: seen[name].append(args[0].detach().float().reshape(-1, args[0].shape[-1]))))
    was_training = model.training
    model.eval()
    try:
        count = 0
        for batch in _args.iterable("batches", batches):
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            model(x)
            count += 1
        if count == 0:
            raise ValueError("batches is empty: nothing to calibrate on")
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return {name: torch.cat(xs) for name, xs in seen.items()}


def _check_inputs(x, in_features: int | None = None) -> torch.Tensor:
    _args.tensor("x", x, dtype="floating", ndim=2, finite=True, non_empty=True)
    if in_features is not None and x.shape[1] != in_features:
        raise ValueError(f"calibration inputs x have width {x.shape[1]}, the layer takes {in_features}")
    return x


def hessian(x: torch.Tensor, *, in_features: int | None = None) -> torch.Tensor:
    """``H = 2 X^T X / rows`` in float64 (the mean over rows: the scale does not change GPTQ's result)."""
    x = _check_inputs(x, in_features).double()
    return 2 * x.T @ x / x.shape[0]


def channel_stats(x: torch.Tensor, *, in_features: int | None = None) -> dict[str, torch.Tensor]:
    """Per input channel ``{"absmax": max_t |X_tj|, "absmean": mean_t |X_tj|}`` (float32, ``(K,)``)."""
    a = _check_inputs(x, in_features).abs()
    return {"absmax": a.amax(0), "absmean": a.mean(0)}


def layer_error(weight: torch.Tensor, w_hat: torch.Tensor, x: torch.Tensor) -> float:
    """GPTQ's objective: ``mean_t ||x_t W^T - x_t W_hat^T||^2`` over the calibration rows ``x``."""
    _args.tensor("weight", weight, dtype="floating", ndim=2)
    _args.tensor("w_hat", w_hat, dtype="floating", shape=tuple(weight.shape))
    _args.tensor("x", x, dtype="floating", shape=(None, weight.shape[1]))
    d = x.detach().double() @ (weight.detach().double() - w_hat.detach().double()).T
    return float((d**2).sum(1).mean())
