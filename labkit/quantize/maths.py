"""Quantization maths: scale, zero-point, quantize, dequantize - per tensor, channel or group.

An integer grid of ``2**bits`` levels ``qmin..qmax`` stands in for real numbers::

    q     = clamp(round(x / s + z), qmin, qmax)        (quantize: float -> integer code)
    x_hat = s * (q - z)                               (dequantize: code -> float)

* **affine** (asymmetric) codes are unsigned, ``0..2**bits - 1``, and the grid spans
  ``[min, max]`` of the data (stretched to include 0, so that 0 is exact)::

      s = (max - min) / (qmax - qmin)        z = qmin - round(min / s)

* **symmetric** codes are signed, ``-2**(bits-1)..2**(bits-1) - 1``, centred on 0::

      s = max(|min|, |max|) / ((qmax - qmin) / 2)        z = 0

  At 8 bits that is ``s = max / 127.5``: ``-max`` lands on -128 but ``+max`` on 127.5, which
  rounds to 128 and *clips* at 127 (an error of up to ``s / 2`` at the top of the range, more
  than inside it, and a grid that is not quite symmetric). ``narrow_range=True`` drops the
  lowest code instead, the restricted range ``[-127, 127]`` many int8 kernels use for weights
  (TFLite's ``narrow_range``, ONNX Runtime and XNNPACK symmetric weights)::

      s = max(|min|, |max|) / qmax  (= max / 127)        codes in [qmin + 1, qmax]

These are PyTorch's formulas (``torch.ao.quantization`` observers), so the scales here equal
theirs. The codes follow ``torch.quantize_per_tensor`` / ``_per_channel`` bit for bit
(``tests/test_quantize_maths.py``): ``x / s`` is computed as ``x * (1 / s)`` with a float32
reciprocal, the zero-point is added *before* rounding, ``round(x * (1/s) + z)``, and ``round``
sends halves to the even neighbour (2.5 -> 2, 3.5 -> 4). (The order matters only for exact
halves with an odd zero-point; PyTorch's own ``fake_quantize_per_tensor_affine`` adds it
after.) Inside ``[s (qmin - z), s (qmax - z)]`` the error ``|x - x_hat|`` is at most ``s / 2``;
outside, values clamp to ``qmin`` / ``qmax``.

Granularity - how many ``(s, z)`` pairs:

* ``per_tensor``: one for the whole tensor;
* ``per_channel``: one per slice along ``axis`` (a Linear weight's output rows: ``axis=0``);
* ``per_group``: one per ``group_size`` consecutive values along the *last* dimension
  (what 4-bit LLM weight formats do).

Used by ``notebooks/06_quantization.ipynb`` (and the capstone, ``08``).
"""

from __future__ import annotations

import math

import torch

from labkit import _args

GRANULARITIES = ("per_tensor", "per_channel", "per_group")
_EPS = torch.finfo(torch.float32).eps  # smallest scale, as in torch.ao.quantization observers


def check_bits(bits, name: str = "bits") -> int:
    """``bits`` as an int in 1..16, or a clear error naming the argument."""
    return _args.integer(name, bits, minimum=1, maximum=16)


def qrange(bits: int, *, signed: bool) -> tuple[int, int]:
    """``(qmin, qmax)``: ``(-2**(b-1), 2**(b-1) - 1)`` if signed, else ``(0, 2**b - 1)``."""
    check_bits(bits)
    _args.boolean("signed", signed)
    return (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)


def code_dtype(bits: int, *, signed: bool) -> torch.dtype:
    """The smallest torch integer dtype that holds ``bits``-bit codes."""
    check_bits(bits)
    _args.boolean("signed", signed)
    if bits <= 8:
        return torch.int8 if signed else torch.uint8
    return torch.int16 if signed else torch.int32


def _check_granularity(granularity: str) -> str:
    return _args.choice("granularity", granularity, GRANULARITIES)


def _check_float(x, name: str = "x") -> torch.Tensor:
    return _args.tensor(name, x, dtype="floating")


def _check_axis(axis, ndim: int) -> int:
    axis = _args.integer("axis", axis)
    if not -ndim <= axis < ndim:
        raise ValueError(f"axis {axis} does not exist for a tensor with {ndim} dimension(s)")
    return axis % ndim


def _check_group(group_size, shape: torch.Size) -> int:
    group_size = _args.positive_int("group_size", group_size)
    if len(shape) == 0 or shape[-1] % group_size:
        last = shape[-1] if len(shape) else "none"
        raise ValueError(f"group_size {group_size} must divide the last dimension ({last})")
    return group_size


def _check_narrow(narrow_range, *, symmetric: bool = True) -> bool:
    _args.boolean("narrow_range", narrow_range)
    if narrow_range and not symmetric:
        raise ValueError("narrow_range=True needs symmetric=True (it drops the lowest code of a symmetric grid)")
    return narrow_range


def _blocks(x: torch.Tensor, granularity: str, axis: int, group_size: int | None) -> torch.Tensor:
    """View ``x`` as rows, one row per (scale, zero-point) pair."""
    if granularity == "per_tensor":
        return x.reshape(1, -1)
    if granularity == "per_channel":
        return x.movedim(_check_axis(axis, x.dim()), 0).reshape(x.shape[axis], -1)
    _check_group(group_size, x.shape)
    return x.reshape(-1, group_size)


def qparams_from_minmax(min_val, max_val, *, bits: int = 8, symmetric: bool = False,
                        signed: bool | None = None, narrow_range: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale (float32) and zero-point (int32) from observed minima and maxima (tensors or floats).

    The range is first stretched to include 0. With ``signed=False`` a symmetric grid puts its
    zero-point in the middle of the unsigned range (PyTorch's ``quint8`` symmetric: 128).
    ``narrow_range=True`` (symmetric only) leaves out the lowest code: ``s = max|x| / 127`` at
    8 bits, so ``-max`` and ``+max`` both land on a code (pass it to :func:`quantize` too).
    """
    _args.boolean("symmetric", symmetric)
    _check_narrow(narrow_range, symmetric=symmetric)
    signed = symmetric if signed is None else signed
    qmin, qmax = qrange(bits, signed=signed)
    lo = _args.number_or_tensor("min_val", min_val).to(torch.float32)
    hi = _args.number_or_tensor("max_val", max_val).to(torch.float32)
    if lo.shape != hi.shape:
        raise ValueError(f"min_val and max_val shapes differ: {tuple(lo.shape)} vs {tuple(hi.shape)}")
    if not (torch.isfinite(lo).all() and torch.isfinite(hi).all()):
        raise ValueError("min_val and max_val must be finite (was anything observed?)")
    if (lo > hi).any():
        raise ValueError("min_val must be <= max_val")
    lo, hi = torch.clamp(lo, max=0.0), torch.clamp(hi, min=0.0)
    if symmetric:
        half = (qmax - qmin - narrow_range) / 2  # 127.5 at 8 bits, or 127 with narrow_range
        scale = (torch.maximum(-lo, hi) / half).clamp(min=_EPS)
        zp = torch.full_like(scale, 0 if signed else (qmin + qmax + 1) // 2, dtype=torch.int32)
    else:
        scale = ((hi - lo) / (qmax - qmin)).clamp(min=_EPS)
        zp = (qmin - torch.round(lo / scale)).clamp(qmin, qmax).to(torch.int32)
    return scale, zp


def choose_qparams(x: torch.Tensor, *, bits: int = 8, symmetric: bool = False, signed: bool | None = None,
                   granularity: str = "per_tensor", axis: int = 0, group_size: int | None = None,
                   narrow_range: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Min-max scale and zero-point of ``x`` at the given granularity.

    Shapes: ``()`` per tensor, ``(x.shape[axis],)`` per channel, ``(*x.shape[:-1],
    x.shape[-1] // group_size)`` per group - the shapes :func:`quantize` expects.
    """
    _check_float(x)
    _check_granularity(granularity)
    if x.numel() == 0:
        raise ValueError("x is empty: nothing to choose a range from")
    rows = _blocks(x.detach(), granularity, axis, group_size)
    scale, zp = qparams_from_minmax(rows.amin(1), rows.amax(1), bits=bits, symmetric=symmetric, signed=signed,
                                    narrow_range=narrow_range)
    if granularity == "per_tensor":
        return scale.reshape(()), zp.reshape(())
    if granularity == "per_group":
        shape = (*x.shape[:-1], x.shape[-1] // group_size)
        return scale.reshape(shape), zp.reshape(shape)
    return scale, zp


def expand_param(p: torch.Tensor, x_shape: torch.Size, *, axis: int | None = None,
                 group_size: int | None = None, name: str = "scale") -> torch.Tensor:
    """Broadcast a scale or zero-point over a tensor of shape ``x_shape``."""
    _args.tensor(f"p ({name})", p)
    x_shape = torch.Size(_args.sequence("x_shape", x_shape, of=int, what="a shape (torch.Size or tuple of ints)"))
    if axis is not None and group_size is not None:
        raise ValueError("give axis (per channel) or group_size (per group), not both")
    if group_size is not None:
        _check_group(group_size, x_shape)
        want = (*x_shape[:-1], x_shape[-1] // group_size)
        if tuple(p.shape) != want:
            raise ValueError(f"{name} has shape {tuple(p.shape)}; groups of {group_size} need {want}")
        return p.repeat_interleave(group_size, dim=-1)
    if axis is not None:
        axis = _check_axis(axis, len(x_shape))
        if p.dim() != 1 or p.numel() != x_shape[axis]:
            raise ValueError(f"{name} must have one value per channel along axis {axis} ({x_shape[axis]}), got shape {tuple(p.shape)}")
        shape = [1] * len(x_shape)
        shape[axis] = -1
        return p.reshape(shape)
    if p.numel() != 1:
        raise ValueError(f"{name} must be a single value per tensor (pass axis= or group_size= for more), got shape {tuple(p.shape)}")
    return p.reshape(())


def _params(x_shape, scale, zero_point, axis, group_size):
    s = _args.number_or_tensor("scale", scale).to(torch.float32)
    if not bool((s > 0).all()) or not bool(torch.isfinite(s).all()):
        raise ValueError(f"scale must be finite and > 0, got {s}")
    z = _args.number_or_tensor("zero_point", zero_point)
    if z.is_floating_point() and not bool((z == z.round()).all()):
        raise ValueError("zero_point must hold integers")
    s = expand_param(s, x_shape, axis=axis, group_size=group_size, name="scale")
    z = expand_param(z.to(torch.int32), x_shape, axis=axis, group_size=group_size, name="zero_point")
    return s, z


def quantize(x: torch.Tensor, scale, zero_point, *, bits: int = 8, signed: bool = False,
             axis: int | None = None, group_size: int | None = None, narrow_range: bool = False) -> torch.Tensor:
    """Integer codes ``clamp(round(x * (1/s) + z), qmin, qmax)`` in the smallest integer dtype.

    ``scale`` / ``zero_point``: one value (per tensor), one per channel along ``axis``, or one
    per group of ``group_size`` along the last dimension (shapes as :func:`choose_qparams`).
    ``narrow_range=True`` clamps to ``qmin + 1`` instead (``[-127, 127]`` at 8 bits signed).
    """
    _check_float(x)
    qmin, qmax = qrange(bits, signed=signed)
    qmin += _check_narrow(narrow_range)
    s, z = _params(x.shape, scale, zero_point, axis, group_size)
    if bool((z < qmin).any()) or bool((z > qmax).any()):
        raise ValueError(f"zero_point must lie in [{qmin}, {qmax}] for {bits}-bit {'signed' if signed else 'unsigned'} codes")
    q = round_scaled(x, s.to(x.device), z.to(x.device))
    return q.clamp(qmin, qmax).to(code_dtype(bits, signed=signed))


def round_scaled(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor) -> torch.Tensor:
    """``round(x * (1/s) + z)`` (float32, halves to even), as PyTorch's CPU kernels compute it:
    a float32 reciprocal, then one fused multiply-add rounded to float32, then
    round-half-to-even. Not clamped.

    The fused multiply-add is emulated: in float64 where the device has it (the product of two
    float32s fits exactly in float64's 53 bits; adding ``z`` then rounds twice, to 53 and to 24
    bits, which can differ from one rounding only on rare near-ties), and on devices without
    float64 (Apple's MPS; see :func:`fma_dtype`) with float32 error-free transformations that
    round exactly once (:func:`_fma_float32`). With ``z == 0`` a float32 product is the same
    thing, and faster.
    """
    _check_float(x)
    _args.tensor("scale", scale)
    _args.tensor("zero_point", zero_point)
    inv = 1.0 / scale.float()
    if not bool(zero_point.any()):
        return torch.round(x.float() * inv)
    if fma_dtype(x.device.type) == torch.float64:
        return torch.round((x.double() * inv.double() + zero_point.double()).float())
    return torch.round(_fma_float32(x.float(), inv.to(x.device), zero_point.to(x.device).float()))


def fma_dtype(device_type: str) -> torch.dtype:
    """The dtype :func:`round_scaled` uses for its exact multiply-add on ``device_type``:
    float64, except on ``"mps"`` (no float64 there), where it stays in float32."""
    _args.text("device_type", device_type)
    return torch.float32 if device_type == "mps" else torch.float64


def _fma_float32(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """``a * b + c`` rounded once to float32, computed in float32 only.

    Dekker's exact product ``a*b = p + e`` (Veltkamp split into 12-bit halves), then the
    correctly rounded sum of ``p + e + c`` by Boldo and Melquiond's round-to-odd method (2008):
    two exact sums (Knuth's TwoSum), the small parts added rounding to *odd*, one final add.
    """
    p = a * b
    a_hi, a_lo = _split(a)
    b_hi, b_lo = _split(b)
    e = ((a_hi * b_hi - p) + a_hi * b_lo + a_lo * b_hi) + a_lo * b_lo
    u_hi, u_lo = _two_sum(e, c)
    t_hi, t_lo = _two_sum(p, u_hi)
    v, err = _two_sum(t_lo, u_lo)
    bits = v.view(torch.int32)  # one ulp up in magnitude is bits + 1, down is bits - 1
    toward_err = torch.where((v > 0) == (err > 0), bits + 1, bits - 1).view(torch.float32)
    v = torch.where((err != 0) & (bits & 1 == 0), toward_err, v)  # round to odd: odd last bit
    return t_hi + v


def _split(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Veltkamp: ``v = hi + lo`` with each half 12 bits wide, so their products are exact."""
    big = v * 4097.0  # 2**12 + 1
    hi = big - (big - v)
    return hi, v - hi


def _two_sum(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Knuth: ``s = fl(x + y)`` and the exact error ``x + y - s``."""
    s = x + y
    back = s - x
    return s, (x - (s - back)) + (y - back)


def dequantize(codes: torch.Tensor, scale, zero_point, *, axis: int | None = None,
               group_size: int | None = None) -> torch.Tensor:
    """Float32 ``s * (q - z)`` of integer ``codes``."""
    _args.tensor("codes", codes, dtype="integer")
    s, z = _params(codes.shape, scale, zero_point, axis, group_size)
    return (codes.float() - z.to(codes.device)) * s.to(codes.device)


def sqnr_db(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio ``10 log10(sum x^2 / sum (x - x_hat)^2)`` in dB.

    Each extra bit halves the step and so adds about 6.02 dB; ``inf`` when ``x_hat == x``.
    """
    _check_float(x)
    _check_float(x_hat, "x_hat")
    if x.shape != x_hat.shape:
        raise ValueError(f"x and x_hat shapes differ: {tuple(x.shape)} vs {tuple(x_hat.shape)}")
    noise = float(((x.double() - x_hat.double()) ** 2).sum())
    signal = float((x.double() ** 2).sum())
    return math.inf if noise == 0 else 10 * math.log10(signal / noise)


def quantize_dequantize(x: torch.Tensor, *, bits: int = 8, symmetric: bool = False,
                        granularity: str = "per_tensor", axis: int = 0,
                        group_size: int | None = None, narrow_range: bool = False) -> torch.Tensor:
    """Min-max quantize then dequantize ``x``: what the network sees after quantization."""
    scale, zp = choose_qparams(x, bits=bits, symmetric=symmetric, granularity=granularity, axis=axis,
                               group_size=group_size, narrow_range=narrow_range)
    where = granularity_kwargs(granularity, axis, group_size)
    codes = quantize(x, scale, zp, bits=bits, signed=symmetric, narrow_range=narrow_range, **where)
    return dequantize(codes, scale, zp, **where)


def granularity_kwargs(granularity: str, axis: int, group_size: int | None) -> dict:
    """The ``axis`` / ``group_size`` keywords quantize/dequantize need for a granularity."""
    _check_granularity(granularity)
    _args.integer("axis", axis)
    if group_size is not None:
        _args.positive_int("group_size", group_size)
    if granularity == "per_channel":
        return {"axis": axis}
    if granularity == "per_group":
        return {"group_size": group_size}
    return {}


def error_vs_bits(x: torch.Tensor, bits_list=(2, 3, 4, 5, 6, 7, 8), *, symmetric: bool = False,
                  granularity: str = "per_tensor", axis: int = 0, group_size: int | None = None) -> list[dict]:
    """One row per bit width: mean squared error, max error and SQNR (dB) of min-max quantization."""
    _check_float(x)
    _args.sequence("bits_list", bits_list, non_empty=True)
    rows = []
    for b in bits_list:
        x_hat = quantize_dequantize(x, bits=check_bits(b), symmetric=symmetric, granularity=granularity,
                                    axis=axis, group_size=group_size)
        err = (x - x_hat).abs()
        rows.append({"bits": b, "mse": float((err**2).mean()), "max_error": float(err.max()),
                     "sqnr_db": sqnr_db(x, x_hat)})
    return rows
