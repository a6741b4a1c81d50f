"""Low-bit *float* formats: fp8 (e4m3, e5m2) and NF4 (QLoRA's 4-bit NormalFloat).

An integer grid spaces its levels evenly. A float format spends its bits on an exponent, so its
levels are dense near 0 and sparse far out - closer to how weights are distributed.

* **fp8** (``torch.float8_e4m3fn``, ``torch.float8_e5m2``): 1 sign bit, ``E`` exponent bits with
  bias ``2**(E-1) - 1``, ``M`` mantissa bits. A code with exponent field ``e`` and mantissa ``m``
  is worth ``(1 + m / 2**M) 2**(e - bias)``, or ``(m / 2**M) 2**(1 - bias)`` when ``e = 0``
  (subnormals). e4m3fn has no infinities and reaches 448; e5m2 is IEEE-like and reaches 57344.
  :func:`fp8_values` builds the grid from this formula; :func:`fake_quant_fp8` scales the tensor so
  its largest magnitude lands on the format's largest value (one fp32 scale per tensor) and uses
  PyTorch's cast, round to nearest, ties to an even code - ``tests/test_quantize_llm_formats.py``
  checks the cast against nearest rounding onto the formula's grid.
* **NF4** (Dettmers et al., 2023): 16 levels at quantiles of a standard normal, scaled into
  ``[-1, 1]`` with an exact 0 - :data:`NF4_VALUES`, the table bitsandbytes ships. Each block of 64
  weights stores its ``absmax`` (fp32 here: ``4 + 32/64 = 4.5`` bits per weight; QLoRA's double
  quantization brings the scales down to ~0.127 bits)::

      w_hat = absmax * NF4[argmin_k |w / absmax - NF4[k]|]

:func:`format_points` measures each on a tensor for lesson 06's SQNR-against-bits figure.
"""

from __future__ import annotations

import torch

from labkit import _args
from labkit.quantize.maths import sqnr_db

FP8_FORMATS = {"e4m3": (torch.float8_e4m3fn, 4, 3), "e5m2": (torch.float8_e5m2, 5, 2)}

#: The 16 NF4 code values of QLoRA, as in bitsandbytes (``create_normal_map``).
NF4_VALUES = (-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
              -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
              0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
              0.7229568362236023, 1.0)


def _check_format(fmt: str) -> str:
    return _args.choice("fmt", fmt, tuple(FP8_FORMATS))


def fp8_values(fmt: str = "e4m3") -> torch.Tensor:
    """All finite non-negative values of an fp8 format, from its bit layout, ascending (float64)."""
    _, e_bits, m_bits = FP8_FORMATS[_check_format(fmt)]
    bias = 2 ** (e_bits - 1) - 1
    values = []
    for e in range(2**e_bits):
        for m in range(2**m_bits):
            if fmt == "e5m2" and e == 2**e_bits - 1:
                continue  # infinities and NaNs
            if fmt == "e4m3" and e == 2**e_bits - 1 and m == 2**m_bits - 1:
                continue  # e4m3fn's only NaN
            frac = m / 2**m_bits
            values.append(frac * 2.0 ** (1 - bias) if e == 0 else (1 + frac) * 2.0 ** (e - bias))
    return torch.tensor(values, dtype=torch.float64)


def round_to_values(x: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Each ``|x|`` rounded to the nearest of the ascending non-negative ``values`` (a tie goes to
    the even index: an even mantissa, for a float grid), sign kept. Values beyond the grid clamp."""
    _args.tensor("x", x, dtype="floating")
    _args.tensor("values", values, dtype="floating", ndim=1, non_empty=True)
    a, v = x.detach().double().abs(), values.double()
    hi = torch.searchsorted(v, a).clamp(max=len(v) - 1)
    lo = (hi - 1).clamp(min=0)
    d_lo, d_hi = a - v[lo], v[hi] - a
    pick = torch.where((d_lo < d_hi) | ((d_lo == d_hi) & (lo % 2 == 0)), lo, hi)
    return (torch.sign(x.detach().double()) * v[pick]).to(x.dtype)


def fake_quant_fp8(x: torch.Tensor, fmt: str = "e4m3") -> torch.Tensor:
    """``s * fp8(x / s)`` with one per-tensor scale ``s = max|x| / max(fmt)``, by PyTorch's cast."""
    _args.tensor("x", x, dtype="floating", finite=True, non_empty=True)
    dtype = FP8_FORMATS[_check_format(fmt)][0]
    scale = (x.detach().abs().max().float() / torch.finfo(dtype).max).clamp(min=torch.finfo(torch.float32).tiny)
    return ((x.float() / scale).to(dtype).float() * scale).to(x.dtype)


def fake_quant_nf4(x: torch.Tensor, *, block_size: int = 64) -> torch.Tensor:
    """NF4 with one absmax per block of ``block_size`` consecutive values (``x.numel()`` must divide)."""
    _args.tensor("x", x, dtype="floating", finite=True, non_empty=True)
    block_size = _args.positive_int("block_size", block_size)
    if x.numel() % block_size:
        raise ValueError(f"block_size {block_size} must divide the number of values ({x.numel()})")
    blocks = x.detach().float().reshape(-1, block_size)
    absmax = blocks.abs().amax(1, keepdim=True).clamp(min=torch.finfo(torch.float32).tiny)
    table = torch.tensor(NF4_VALUES, device=x.device)
    idx = ((blocks / absmax)[..., None] - table).abs().argmin(-1)
    return (table[idx] * absmax).reshape(x.shape).to(x.dtype)


def format_points(x: torch.Tensor, *, nf4_block_size: int = 64) -> list[dict]:
    """One row per float format on ``x``: ``{"format", "bits", "bits_per_weight", "sqnr_db", "mse"}``
    (fp8 with one fp32 scale per tensor, NF4 with an fp32 absmax per block)."""
    _args.tensor("x", x, dtype="floating", finite=True, non_empty=True)
    rows = []
    for name, x_hat, bits, bpw in (
            ("fp8 e4m3", fake_quant_fp8(x, "e4m3"), 8, 8 + 32 / x.numel()),
            ("fp8 e5m2", fake_quant_fp8(x, "e5m2"), 8, 8 + 32 / x.numel()),
            ("NF4", fake_quant_nf4(x, block_size=nf4_block_size), 4, 4 + 32 / nf4_block_size)):
        rows.append({"format": name, "bits": bits, "bits_per_weight": bpw, "sqnr_db": sqnr_db(x, x_hat),
                     "mse": float(((x.double() - x_hat.double()) ** 2).mean())})
    return rows
