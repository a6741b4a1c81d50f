"""Fake quantization: round to the integer grid and straight back to float, with gradients.

Quantization-aware training (QAT) lets the network feel the rounding while it trains::

    forward:   y = s * (clamp(round(x / s + z), qmin, qmax) - z)      (dequant(quant(x)))
    backward:  dy/dx = 1 inside the grid's range, 0 where x was clamped

``round`` has a zero gradient almost everywhere, so the backward pass pretends it is the
identity: the *straight-through estimator* (STE; Bengio et al. 2013). Values clamped at the
ends of the range get no gradient, as in ``torch.fake_quantize_per_tensor_affine`` - which
:func:`fake_quantize` equals, forward and backward (``tests/test_quantize_fake.py``), except
at exact halves with an odd zero-point: there it follows :func:`~labkit.quantize.quantize`
(and ``torch.quantize_per_tensor``), so a QAT model and its converted int twin agree.

:class:`FakeQuantize` adds an observer, so a layer can record its activation range (PTQ
calibration), fake-quantize with it (QAT), or use each batch's own range (``dynamic``).
Used by ``notebooks/06_quantization.ipynb``.
"""

from __future__ import annotations

import torch
from torch import nn

from labkit import _args
from labkit.quantize.maths import (
    _check_float,
    _params,
    check_bits,
    choose_qparams,
    qrange,
    round_scaled,
)
from labkit.quantize.observers import OBSERVERS, Observer, make_observer


class _FakeQuantSTE(torch.autograd.Function):
    """dequant(quant(x)) forward; gradient passed straight through where x was not clamped."""

    @staticmethod
    def forward(ctx, x, scale, zero_point, qmin: int, qmax: int):
        q = round_scaled(x, scale, zero_point)
        inside = (q >= qmin) & (q <= qmax)
        ctx.save_for_backward(inside)
        return ((q.clamp(qmin, qmax) - zero_point) * scale).to(x.dtype)

    @staticmethod
    def backward(ctx, grad):
        (inside,) = ctx.saved_tensors
        return grad * inside, None, None, None, None


def fake_quantize(x: torch.Tensor, scale, zero_point, *, bits: int = 8, signed: bool = False,
                  axis: int | None = None, group_size: int | None = None) -> torch.Tensor:
    """``s * (clamp(round(x / s + z), qmin, qmax) - z)`` with a straight-through gradient.

    ``scale`` / ``zero_point`` as in :func:`labkit.quantize.maths.quantize` (per tensor, per
    channel along ``axis``, or per group of ``group_size`` along the last dimension).
    """
    _check_float(x)
    _args.tensor("x", x, dtype="floating")
    qmin, qmax = qrange(bits, signed=signed)
    s, z = _params(x.shape, scale, zero_point, axis, group_size)
    if bool((z < qmin).any()) or bool((z > qmax).any()):
        raise ValueError(f"zero_point must lie in [{qmin}, {qmax}] for {bits}-bit codes")
    return _FakeQuantSTE.apply(x, s.to(x.device), z.to(x.device), qmin, qmax)


class FakeQuantize(nn.Module):
    """Observe a tensor's range and/or fake-quantize it (per tensor) - one per activation.

    * ``observe`` - record each batch with ``observer``: always while calibrating (``enabled``
      False), only in training mode once fake quantization is on (QAT), so that evaluating a
      QAT model does not move its ranges;
    * ``enabled`` - fake-quantize with the observer's current range (QAT, and after PTQ);
    * ``dynamic=True`` - no observer: each batch is quantized with its own min-max range.

    ``symmetric=False`` (the default for activations) uses unsigned affine codes.
    """

    def __init__(self, *, bits: int = 8, symmetric: bool = False, observer: str | Observer = "moving_average",
                 dynamic: bool = False, observe: bool = True, enabled: bool = True):
        super().__init__()
        self.bits = check_bits(bits)
        self.symmetric = _args.boolean("symmetric", symmetric)
        self.dynamic = _args.boolean("dynamic", dynamic)
        _args.instance("observer", observer, (str, Observer), "an observer name or an Observer")
        if isinstance(observer, str):
            observer = make_observer(_args.choice("observer", observer, OBSERVERS))
        if observer.axis is not None:
            raise ValueError("activations are quantized per tensor: give an observer without axis")
        self.observer = None if self.dynamic else observer
        self.observe, self.enabled = bool(observe), bool(enabled)

    def qparams(self, x: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Scale and zero-point: from the observer, or from ``x`` itself when dynamic."""
        if self.dynamic:
            if x is None:
                raise ValueError("a dynamic FakeQuantize needs the tensor to choose its range")
            return choose_qparams(x, bits=self.bits, symmetric=self.symmetric)
        return self.observer.calculate_qparams(bits=self.bits, symmetric=self.symmetric)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.observer is not None and self.observe and (self.training or not self.enabled):
            self.observer(x)
        if not self.enabled:
            return x
        scale, zp = self.qparams(x)
        return fake_quantize(x, scale, zp, bits=self.bits, signed=self.symmetric)

    def extra_repr(self) -> str:
        mode = "dynamic" if self.dynamic else f"observe={self.observe}, enabled={self.enabled}"
        return f"bits={self.bits}, symmetric={self.symmetric}, {mode}"
