"""Quantized layers: a fake-quantized wrapper (PTQ calibration, QAT) and the stored int result.

* :class:`FakeQuantized` wraps an ``nn.Linear`` / ``nn.Conv2d``: its input goes through a
  :class:`~labkit.quantize.fake.FakeQuantize` and its weight is fake-quantized from its own
  current min-max on every forward, so training sees the rounding (straight-through gradient).
* :class:`QuantizedLinear` / :class:`QuantizedConv2d` hold the weight as integer codes (4-bit
  and smaller packed into bytes), a scale per tensor / channel / group, and the activation's
  scale and zero-point (static) or a flag to measure each batch (dynamic).

The quantized layers *store* integers - their ``state_dict`` is 4x (int8) or ~8x (int4) smaller
- but compute in float: ``y = linear(dequant(quant(x)), dequant(W_q))``, which is numerically
what an integer kernel computes, ``s_x s_w sum (q_x - z_x) q_w``, up to float rounding. Real
int8 *speed* needs int8 kernels: see :mod:`labkit.quantize.runtimes`.
Conv weights are quantized as their ``(out_channels, -1)`` matrix. Used by notebook 06.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from labkit import _args
from labkit.quantize.fake import FakeQuantize, fake_quantize
from labkit.quantize.maths import (
    _check_granularity,
    _check_group,
    check_bits,
    choose_qparams,
    code_dtype,
    dequantize,
    granularity_kwargs,
    quantize,
)
from labkit.quantize.packing import pack_bits, unpack_bits

QUANTIZABLE = (nn.Linear, nn.Conv2d)


@dataclass(frozen=True)
class WeightSpec:
    """How weights are quantized: bits, granularity (``group_size`` for ``per_group``), symmetry."""

    bits: int = 8
    granularity: str = "per_channel"
    group_size: int | None = None
    symmetric: bool = True

    def __post_init__(self):
        check_bits(self.bits)
        _check_granularity(self.granularity)
        _args.boolean("symmetric", self.symmetric)
        if self.granularity == "per_group":
            _check_group(self.group_size, torch.Size([self.group_size or 1]))
        elif self.group_size is not None:
            raise ValueError(f"group_size is only used with granularity='per_group', not {self.granularity!r}")

    def kwargs(self) -> dict:
        return granularity_kwargs(self.granularity, 0, self.group_size)

    def qparams(self, w2: torch.Tensor):
        return choose_qparams(w2, bits=self.bits, symmetric=self.symmetric, granularity=self.granularity,
                              axis=0, group_size=self.group_size)


def _matrix(weight: torch.Tensor) -> torch.Tensor:
    return weight.reshape(weight.shape[0], -1)


def _check_layer(module, kinds: type | tuple[type, ...] = QUANTIZABLE) -> None:
    _args.module("layer", module, kinds)
    if isinstance(module, nn.Conv2d) and module.padding_mode != "zeros":
        raise ValueError(f"only padding_mode='zeros' convolutions are supported, got {module.padding_mode!r}")


class FakeQuantized(nn.Module):
    """``layer(act_fq(x))`` with the layer's weight fake-quantized by ``spec`` (if ``fake_weight``)."""

    def __init__(self, layer: nn.Module, spec: WeightSpec, act: FakeQuantize | None, *, fake_weight: bool = True):
        super().__init__()
        _check_layer(layer)
        _args.instance("spec", spec, WeightSpec, "a labkit.quantize.WeightSpec")
        if act is not None:
            _args.instance("act", act, FakeQuantize, "a FakeQuantize or None")
        self.layer, self.spec, self.act, self.fake_weight = layer, spec, act, fake_weight

    def quantized_weight(self) -> torch.Tensor:
        """The weight as the integer grid sees it (straight-through gradient to the float weight)."""
        w = self.layer.weight
        w2 = _matrix(w)
        scale, zp = self.spec.qparams(w2)
        return fake_quantize(w2, scale, zp, bits=self.spec.bits, signed=self.spec.symmetric, **self.spec.kwargs()).reshape(w.shape)

    def forward(self, x):
        if self.act is not None:
            x = self.act(x)
        w = self.quantized_weight() if self.fake_weight else self.layer.weight
        if isinstance(self.layer, nn.Linear):
            return F.linear(x, w, self.layer.bias)
        return self.layer._conv_forward(x, w, self.layer.bias)


class _Quantized(nn.Module):
    KIND: type = nn.Module  # the float layer this class quantizes

    def __init__(self, layer: nn.Module, spec: WeightSpec, *, act_bits: int | None = None, act_mode: str | None = None,
                 act_qparams: tuple[torch.Tensor, torch.Tensor] | None = None):
        super().__init__()
        _check_layer(layer, self.KIND)
        _args.instance("spec", spec, WeightSpec, "a labkit.quantize.WeightSpec")
        _args.choice("act_mode", act_mode, (None, "static", "dynamic"))
        if act_mode == "static" and act_qparams is None:
            raise ValueError("static activation quantization needs act_qparams (calibrate first)")
        self.spec, self.act_mode = spec, act_mode
        self.act_bits = check_bits(act_bits, "act_bits") if act_mode else None
        w = layer.weight.detach().float()
        self.weight_shape = tuple(w.shape)
        scale, zp = spec.qparams(_matrix(w))
        codes = quantize(_matrix(w), scale, zp, bits=spec.bits, signed=spec.symmetric, **spec.kwargs())
        self.packed = spec.bits in (1, 2, 4)
        self.register_buffer("weight_codes", pack_bits(codes, spec.bits) if self.packed else codes)
        self.register_buffer("weight_scale", scale)
        self.register_buffer("weight_zero_point", None if spec.symmetric else zp.to(code_dtype(spec.bits, signed=False)))
        self.register_buffer("bias", None if layer.bias is None else layer.bias.detach().clone())
        if act_mode == "static":
            self.register_buffer("act_scale", act_qparams[0].detach().reshape(()).float())
            self.register_buffer("act_zero_point", act_qparams[1].detach().reshape(()).to(torch.int32))

    def weight_int(self) -> torch.Tensor:
        """Integer codes as a ``(out, -1)`` matrix (unpacked if stored packed)."""
        rows = self.weight_shape[0]
        if self.packed:
            n = math.prod(self.weight_shape)
            return unpack_bits(self.weight_codes, self.spec.bits, numel=n, signed=self.spec.symmetric).reshape(rows, -1)
        return self.weight_codes

    def dequantized_weight(self) -> torch.Tensor:
        zp = torch.zeros_like(self.weight_scale, dtype=torch.int32) if self.weight_zero_point is None else self.weight_zero_point
        w2 = dequantize(self.weight_int(), self.weight_scale, zp, **self.spec.kwargs())
        return w2.reshape(self.weight_shape)

    def quantize_input(self, x: torch.Tensor) -> torch.Tensor:
        """``dequant(quant(x))`` with the stored (static) or the batch's own (dynamic) range."""
        if self.act_mode is None:
            return x
        if self.act_mode == "dynamic":
            scale, zp = choose_qparams(x, bits=self.act_bits)
        else:
            scale, zp = self.act_scale, self.act_zero_point
        return dequantize(quantize(x, scale, zp, bits=self.act_bits), scale, zp).to(x.dtype)

    def extra_repr(self) -> str:
        s = self.spec
        group = f"/{s.group_size}" if s.group_size else ""
        act = f", act={self.act_mode} int{self.act_bits}" if self.act_mode else ", weight-only"
        return f"{self.weight_shape}, int{s.bits} {s.granularity}{group}{' symmetric' if s.symmetric else ''}{act}"


class QuantizedLinear(_Quantized):
    """An ``nn.Linear`` with integer weights (and quantized inputs unless weight-only)."""

    KIND = nn.Linear

    def forward(self, x):
        return F.linear(self.quantize_input(x), self.dequantized_weight(), self.bias)


class QuantizedConv2d(_Quantized):
    """An ``nn.Conv2d`` with integer weights (and quantized inputs unless weight-only)."""

    KIND = nn.Conv2d

    def __init__(self, layer: nn.Conv2d, spec: WeightSpec, **kwargs):
        super().__init__(layer, spec, **kwargs)
        self.stride, self.padding, self.dilation, self.groups = layer.stride, layer.padding, layer.dilation, layer.groups

    def forward(self, x):
        return F.conv2d(self.quantize_input(x), self.dequantized_weight(), self.bias, self.stride, self.padding,
                        self.dilation, self.groups)


def quantized_from(layer: nn.Module, spec: WeightSpec, **kwargs) -> _Quantized:
    """The quantized twin of an ``nn.Linear`` / ``nn.Conv2d``."""
    _check_layer(layer)
    cls = QuantizedLinear if isinstance(layer, nn.Linear) else QuantizedConv2d
    return cls(layer, spec, **kwargs)
