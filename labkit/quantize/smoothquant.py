"""W8A8 and SmoothQuant (Xiao et al., 2022): when activations have outlier channels.

Quantizing activations to int8 with **one scale per tensor** (what fast int8 GEMMs want) fails
when a few channels are far larger than the rest: the step ``max|X| / 127.5`` is set by the
outliers and the ordinary channels round to a handful of levels. Large LLMs have such channels
after their LayerNorms. SmoothQuant divides channel ``j`` of the activation by ``s_j`` and
multiplies the weight's column ``j`` by it (:func:`labkit.quantize.migration.migrate_scale_`,
exact in float), choosing::

    s_j = max_t |X_tj| ^ α  /  max_n |W_nj| ^ (1 - α)          α in [0, 1] (0.5 by default)

so the activation's and the weight's per-channel ranges meet in the middle. :func:`smooth_` does it
for every (LayerNorm, Linear) pair of the course GPT, from calibration ranges;
:class:`W8A8Linear` fake-quantizes a Linear's weight (symmetric int8, per tensor) and its input
(symmetric int8, per tensor, with each batch's own range: dynamic), and :func:`w8a8_` swaps
every Linear for one. Used by lesson 06 §8.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from labkit import _args
from labkit.quantize.calibration import capture_inputs, channel_stats
from labkit.quantize.groupwise import linear_names
from labkit.quantize.maths import quantize_dequantize
from labkit.quantize.migration import layernorm_pairs, migrate_scale_


def smooth_scales(act_absmax: torch.Tensor, weight: torch.Tensor, alpha: float = 0.5) -> torch.Tensor:
    """``s_j = max|X_j|^α / max|W_j|^(1-α)`` (both clamped at 1e-5, as the reference code does)."""
    alpha = _args.fraction("alpha", alpha)
    _args.tensor("weight", weight, dtype="floating", ndim=2, finite=True, non_empty=True)
    _args.tensor("act_absmax", act_absmax, dtype="floating", shape=(weight.shape[1],), finite=True)
    w_absmax = weight.detach().abs().amax(0).float().clamp(min=1e-5)
    return act_absmax.float().clamp(min=1e-5).pow(alpha) / w_absmax.pow(1 - alpha)


@torch.no_grad()
def smooth_(model: nn.Module, batches, *, alpha: float = 0.5) -> dict[str, torch.Tensor]:
    """SmoothQuant every (LayerNorm, Linear) pair of ``model`` in place; returns the scales used."""
    _args.module("model", model)
    _args.iterable("batches", batches, "an iterable of input batches")
    alpha = _args.fraction("alpha", alpha)
    pairs = layernorm_pairs(model)
    modules = dict(model.named_modules())
    inputs = capture_inputs(model, batches, [lin for _, lin in pairs])
    scales = {}
    for ln, lin in pairs:
        linear = modules[lin]
        s = smooth_scales(channel_stats(inputs[lin], in_features=linear.in_features)["absmax"], linear.weight, alpha)
        migrate_scale_(modules[ln], linear, s)
        scales[lin] = s
    return scales


def act_ranges(model: nn.Module, batches, *, skip: tuple[str, ...] = ("head",)) -> dict[str, torch.Tensor]:
    """Per input channel ``max_t |x_tj|`` of every Linear's input on ``batches`` (the outlier picture)."""
    inputs = capture_inputs(model, batches, linear_names(model, skip=skip))
    return {name: channel_stats(x)["absmax"] for name, x in inputs.items()}


class W8A8Linear(nn.Module):
    """``y = Q8(x) Q8(W)^T + b``: int8 fake quantization of the weight and of the input, both
    symmetric and per tensor (the input with its own range on each call)."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        _args.module("linear", linear, nn.Linear)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        w = linear.weight.detach().float()
        self.register_buffer("weight", quantize_dequantize(w, bits=8, symmetric=True).to(linear.weight.dtype))
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_hat = quantize_dequantize(x.float(), bits=8, symmetric=True).to(x.dtype)
        return F.linear(x_hat, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, W8A8 per tensor"


def w8a8_(model: nn.Module, *, skip: tuple[str, ...] = ("head",)) -> nn.Module:
    """Swap every Linear of ``model`` (see :func:`~labkit.quantize.groupwise.linear_names`) for a
    :class:`W8A8Linear`, in place; returns ``model``."""
    _args.module("model", model)
    modules = dict(model.named_modules())
    for name in linear_names(model, skip=skip):
        parent, _, child = name.rpartition(".")
        setattr(modules[parent] if parent else model, child, W8A8Linear(modules[name]))
    return model
