"""Group-wise weight-only quantization, the way open LLMs ship in 3-4 bits (round to nearest, RTN).

A Linear weight ``W`` of shape ``(N, K)`` is cut along its inputs into groups of ``g`` consecutive
columns; each row's group gets its own min-max grid of ``2**b`` levels (lesson 06's maths in
:mod:`labkit.quantize.maths`), with the scale stored in **fp16**, as GPTQ / AWQ checkpoints do::

    s = fp16((max - min) / (2**b - 1))      z = clamp(-round(min / s), 0, 2**b - 1)   (asymmetric)
    s = fp16(max|w| / ((2**b - 1) / 2))     z = 0, signed codes                        (symmetric)
    q = clamp(round(w / s + z), qmin, qmax)         w_hat = s (q - z)

The grid stretches to include 0, as everywhere in labkit. **Bits per weight, honestly counted**:
each group of ``g`` weights carries one fp16 scale (and a ``b``-bit zero-point if asymmetric)::

    bits/weight = b + 16 / g  (+ b / g)            e.g. 4-bit, g = 128, symmetric: 4 + 16/128 = 4.125

:func:`rtn_weight` quantizes one matrix; :func:`quantize_linears_` applies any weight quantizer
(RTN here, GPTQ and AWQ in their own modules) to every ``nn.Linear`` of a model - not to the
embedding or the output head unless asked. Used by lesson 06 §7 (``notebooks/06_quantization.ipynb``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from labkit import _args
from labkit.quantize.maths import check_bits, qparams_from_minmax, qrange, round_scaled

_FP16_TINY = 2.0**-24  # the smallest positive fp16 (subnormal): a scale never rounds to 0


def check_group(group_size, in_features: int) -> int:
    """``group_size`` as an int dividing ``in_features`` (the Linear's input width), or a clear error."""
    in_features = _args.positive_int("in_features", in_features)
    g = _args.positive_int("group_size", group_size)
    if in_features % g:
        raise ValueError(f"group_size {g} must divide the input dimension ({in_features})")
    return g


def group_qparams(lo: torch.Tensor, hi: torch.Tensor, *, bits: int, symmetric: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale (rounded to fp16, kept as float32) and integer zero-point of the groups whose minima
    and maxima are ``lo`` and ``hi``; the zero-point is recomputed from the rounded scale."""
    _args.tensor("lo", lo, dtype="floating")
    _args.tensor("hi", hi, dtype="floating", shape=tuple(lo.shape))
    _args.boolean("symmetric", symmetric)
    scale, _ = qparams_from_minmax(lo, hi, bits=bits, symmetric=symmetric)
    scale = scale.half().float().clamp(min=_FP16_TINY)
    qmin, qmax = qrange(bits, signed=symmetric)
    if symmetric:
        return scale, torch.zeros_like(scale, dtype=torch.int32)
    zero = (qmin - torch.round(lo.float().clamp(max=0.0) / scale)).clamp(qmin, qmax)
    return scale, zero.to(torch.int32)


def fake_quant_columns(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, *, bits: int,
                       symmetric: bool) -> torch.Tensor:
    """``s (clamp(round(w / s + z), qmin, qmax) - z)`` elementwise (``scale``/``zero`` broadcast to ``w``)."""
    _args.tensor("w", w, dtype="floating")
    _args.tensor("scale", scale, dtype="floating")
    _args.tensor("zero", zero)
    _args.boolean("symmetric", symmetric)
    qmin, qmax = qrange(bits, signed=symmetric)
    q = round_scaled(w.float(), scale, zero).clamp(qmin, qmax)
    return (q - zero) * scale


def rtn_weight(weight: torch.Tensor, *, bits: int = 4, group_size: int = 128, symmetric: bool = False) -> torch.Tensor:
    """Round-to-nearest, group-wise fake quantization of a ``(N, K)`` weight: ``W_hat`` (float32).

    Groups are ``group_size`` consecutive inputs of one row; ``group_size`` must divide ``K``.
    """
    _args.tensor("weight", weight, dtype="floating", ndim=2, finite=True, non_empty=True)
    bits = check_bits(bits)
    _args.boolean("symmetric", symmetric)
    n, k = weight.shape
    g = check_group(group_size, k)
    groups = weight.detach().float().reshape(n, k // g, g)
    scale, zero = group_qparams(groups.amin(-1), groups.amax(-1), bits=bits, symmetric=symmetric)
    return fake_quant_columns(groups, scale[..., None], zero[..., None], bits=bits, symmetric=symmetric).reshape(n, k)


def bits_per_weight(bits: int, group_size: int, *, symmetric: bool = False, scale_bits: int = 16) -> float:
    """Storage cost per weight, scales included: ``b + scale_bits / g`` (+ ``b / g`` for the
    zero-points of an asymmetric grid). ``bits_per_weight(4, 128, symmetric=True) == 4.125``."""
    bits = check_bits(bits)
    g = _args.positive_int("group_size", group_size)
    _args.boolean("symmetric", symmetric)
    scale_bits = _args.positive_int("scale_bits", scale_bits)
    return bits + scale_bits / g + (0 if symmetric else bits / g)


def linear_names(model: nn.Module, *, skip: tuple[str, ...] = ("head",)) -> list[str]:
    """Names of the ``nn.Linear`` layers of ``model``, leaving out those named in ``skip``
    (the output head by default; an ``nn.Embedding`` is never a Linear)."""
    _args.module("model", model)
    _args.sequence("skip", skip, of=str)
    return [n for n, m in model.named_modules() if type(m) is nn.Linear and n.split(".")[-1] not in skip
            and n not in skip]


@torch.no_grad()
def quantize_linears_(model: nn.Module, quantizer: Callable[[str, nn.Linear], torch.Tensor], *,
                      skip: tuple[str, ...] = ("head",)) -> nn.Module:
    """Replace, in place, the weight of every Linear of ``model`` (see :func:`linear_names`) by
    ``quantizer(name, linear)`` - a fake-quantized float weight of the same shape. Returns ``model``.

    ``quantize_linears_(m, lambda name, lin: rtn_weight(lin.weight, bits=3, group_size=64))`` is RTN.
    """
    _args.module("model", model)
    _args.function("quantizer", quantizer)
    modules = dict(model.named_modules())
    for name in linear_names(model, skip=skip):
        linear = modules[name]
        w_hat = quantizer(name, linear)
        _args.tensor("quantizer's result", w_hat, dtype="floating", shape=tuple(linear.weight.shape))
        linear.weight.copy_(w_hat.to(linear.weight.dtype))
    return model


def rtn_quantize_(model: nn.Module, *, bits: int = 4, group_size: int = 128, symmetric: bool = False,
                  skip: tuple[str, ...] = ("head",)) -> nn.Module:
    """RTN every Linear of ``model`` in place (:func:`rtn_weight`); returns ``model``."""
    return quantize_linears_(model, lambda _, lin: rtn_weight(lin.weight, bits=bits, group_size=group_size,
                                                              symmetric=symmetric), skip=skip)
