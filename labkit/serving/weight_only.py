"""Weight-only quantization for decoding, run by PyTorch's own CPU kernels.

Batch-1 decoding reads every weight once per token and does two FLOPs with it: the time goes
into *moving bytes* (:mod:`labkit.serving.decode`). Storing weights in fewer bits cuts the bytes;
the activations stay in floating point ("weight-only", W8A16 / W4A16). Two kernels ship with
PyTorch's CPU build (torchao builds its CPU weight-only configs on them):

* **int8, one scale per output channel** (symmetric, codes ``-128..127``)::

      s_n = max_k |W[n, k]| / 127.5        q = clamp(round(W / s_n), -128, 127)
      y = torch.ops.aten._weight_int8pack_mm(x, q, s)      = x @ (s * q)^T

* **int4, one (scale, zero) per group of ``group_size`` inputs** (affine, codes ``0..15``)::

      s = (max - min) / 15        z = clamp(-round(min / s), 0, 15)   (range stretched to hold 0)
      q = clamp(round(W / s + z), 0, 15)            W_hat = s (q - z)

  The kernel stores its zero in the *float* domain around the code 8: ``W_hat = s (q - 8) + zero``,
  so labkit's integer zero-point becomes ``zero = s (8 - z)``. The weight is packed once by
  ``torch.ops.aten._convert_weight_to_int4pack_for_cpu(q_int32, 1)`` (two codes per byte, laid
  out for the CPU's vectors), and ``scales_and_zeros`` has shape ``(K // group_size, N, 2)``
  (``[..., 0]`` the scale, ``[..., 1]`` the zero), in the activations' dtype;
  ``torch.ops.aten._weight_int4pack_mm_for_cpu(x, packed, group_size, scales_and_zeros)``.

These are labkit's own formulas from :mod:`labkit.quantize.maths` (lesson 06: symmetric per
channel, affine per group); ``tests/test_serving_weight_only.py`` checks each kernel against
that module's quantize/dequantize followed by a plain matmul.

**The activation dtype decides the speed.** Both kernels are vectorized (AVX2 / AVX-512) only
for ``bfloat16`` activations; with ``float32`` (or ``float16``) activations on x86 they fall back
to a scalar loop that converts every weight one at a time (``aten/src/ATen/native/cpu/int8mm_kernel.cpp``
and ``int4mm_kernel.cpp``). So the layers below cast their input to ``act_dtype`` (bf16 by
default: a cost of ``K`` elements per row, nothing next to ``N x K`` weights) and cast the result
back. Lesson ``09_serving_a_language_model`` measures both.

Kernel constraints, checked here (the kernels themselves may crash instead of raising): the
inputs ``K`` a multiple of 16 (aligned vector loads), int4 needs ``N`` a multiple of 16 and
``group_size`` in 32/64/128/256 dividing ``K``; activations are copied to a fresh, aligned tensor.
"""

from __future__ import annotations

import torch
from torch import nn

from labkit import _args
from labkit.quantize.maths import choose_qparams, quantize

ACT_DTYPES = (torch.bfloat16, torch.float32, torch.float16)
GROUP_SIZES = (32, 64, 128, 256)
_ALIGN = 64  # bytes: the kernels use aligned vector loads on the activations


def _check_act_dtype(act_dtype) -> torch.dtype:
    _args.instance("act_dtype", act_dtype, torch.dtype)
    return _args.choice("act_dtype", act_dtype, ACT_DTYPES)


def _check_weight(weight, *, multiple_n: int = 1) -> torch.Tensor:
    _args.tensor("weight", weight, dtype="floating", ndim=2, finite=True, non_empty=True)
    n, k = weight.shape
    if k % 16:
        raise ValueError(f"weight's input size K={k} must be a multiple of 16 for the CPU kernels")
    if n % multiple_n:
        raise ValueError(f"weight's output size N={n} must be a multiple of {multiple_n} for the int4 kernel")
    return weight.detach().float().cpu()


def int8_per_channel(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 codes ``(N, K)`` and float32 scales ``(N,)``: ``s_n = max|W_n| / 127.5``.

    Lesson 06's symmetric grid (PyTorch's observers): ``(qmax - qmin) / 2 = 127.5`` steps each
    side of 0, and ``round(W * (1 / s))`` with a float32 reciprocal, as PyTorch's kernels round -
    :func:`labkit.quantize.maths.choose_qparams` and :func:`~labkit.quantize.maths.quantize` per channel.
    """
    w = _check_weight(weight)
    scale, zero = choose_qparams(w, bits=8, symmetric=True, granularity="per_channel", axis=0)
    return quantize(w, scale, zero, bits=8, signed=True, axis=0), scale


def int4_per_group(weight: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Affine 4-bit codes ``(N, K)`` (int32, ``0..15``), scales and integer zero-points ``(N, K // g)``:
    :func:`labkit.quantize.maths.choose_qparams` and :func:`~labkit.quantize.maths.quantize`
    per group (lesson 06's maths, ``round(W * (1/s) + z)`` with one rounding)."""
    w = _check_weight(weight)
    g = _args.choice("group_size", _args.integer("group_size", group_size), GROUP_SIZES)
    if w.shape[1] % g:
        raise ValueError(f"group_size {g} must divide the input size K={w.shape[1]}")
    scale, zero = choose_qparams(w, bits=4, granularity="per_group", group_size=g)
    codes = quantize(w, scale, zero, bits=4, group_size=g)
    return codes.to(torch.int32), scale, zero


def _aligned_rows(x: torch.Tensor, k: int, act_dtype: torch.dtype) -> torch.Tensor:
    """``x`` as a contiguous, 64-byte-aligned ``(M, K)`` matrix of ``act_dtype``."""
    x2 = x.reshape(-1, k).to(act_dtype).contiguous()
    if x2.data_ptr() % _ALIGN:
        x2 = x2.clone()
    return x2


class _WeightOnlyLinear(nn.Module):
    """Shared by the int8 and int4 layers: bias, dtype casts, the ``(..., K) -> (..., N)`` shape."""

    bits: int

    def __init__(self, in_features: int, out_features: int, bias: torch.Tensor | None, act_dtype: torch.dtype):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.act_dtype = _check_act_dtype(act_dtype)
        self.register_buffer("bias", None if bias is None else bias.detach().float().clone())

    def _matmul(self, x2: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(f"input's last dimension is {x.shape[-1]}, this layer takes {self.in_features}")
        y = self._matmul(_aligned_rows(x, self.in_features, self.act_dtype))
        y = y.reshape(*x.shape[:-1], self.out_features).to(x.dtype)
        return y if self.bias is None else y + self.bias.to(x.dtype)

    def weight_bytes(self) -> int:
        """Bytes of the stored weight, its scales / zeros and bias (what decode reads per token)."""
        return sum(b.numel() * b.element_size() for b in self.buffers())

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}, "
                f"act_dtype={str(self.act_dtype).replace('torch.', '')}, bias={self.bias is not None}")


class Int8WeightOnlyLinear(_WeightOnlyLinear):
    """``y = x @ (s q)^T + b`` with int8 ``q`` per output channel, by ``aten._weight_int8pack_mm``."""

    bits = 8

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None, *,
                 act_dtype: torch.dtype = torch.bfloat16):
        codes, scale = int8_per_channel(weight)
        super().__init__(weight.shape[1], weight.shape[0], bias, act_dtype)
        self.register_buffer("codes", codes)
        self.register_buffer("scales", scale.to(self.act_dtype))  # the kernel wants the activations' dtype

    @classmethod
    def from_linear(cls, linear: nn.Linear, *, act_dtype: torch.dtype = torch.bfloat16) -> Int8WeightOnlyLinear:
        _args.module("linear", linear, nn.Linear)
        return cls(linear.weight, linear.bias, act_dtype=act_dtype)

    def _matmul(self, x2):
        return torch.ops.aten._weight_int8pack_mm(x2, self.codes, self.scales)

    def dequantized_weight(self) -> torch.Tensor:
        """The float weight the kernel multiplies by: ``s_n q[n, :]`` (scales in ``act_dtype``)."""
        return self.codes.float() * self.scales.float()[:, None]


class Int4WeightOnlyLinear(_WeightOnlyLinear):
    """Group-wise int4 weights, ``W_hat = s (q - z)``, by ``aten._weight_int4pack_mm_for_cpu``."""

    bits = 4

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None, *, group_size: int = 128,
                 act_dtype: torch.dtype = torch.bfloat16):
        _check_weight(weight, multiple_n=16)
        codes, scale, zero = int4_per_group(weight, group_size)
        super().__init__(weight.shape[1], weight.shape[0], bias, act_dtype)
        self.group_size = group_size
        self.register_buffer("packed", torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes, 1))
        float_zero = scale * (8 - zero)  # W_hat = s (q - z) = s (q - 8) + s (8 - z)
        self.register_buffer("scales_and_zeros",
                             torch.stack([scale, float_zero], dim=-1).transpose(0, 1).contiguous().to(self.act_dtype))

    @classmethod
    def from_linear(cls, linear: nn.Linear, *, group_size: int = 128,
                    act_dtype: torch.dtype = torch.bfloat16) -> Int4WeightOnlyLinear:
        _args.module("linear", linear, nn.Linear)
        return cls(linear.weight, linear.bias, group_size=group_size, act_dtype=act_dtype)

    def _matmul(self, x2):
        return torch.ops.aten._weight_int4pack_mm_for_cpu(x2, self.packed, self.group_size, self.scales_and_zeros)

    def dequantized_weight(self) -> torch.Tensor:
        """The float weight the kernel multiplies by, ``s (q - 8) + zero``, from the packed codes.

        Found by multiplying the identity matrix: the kernel's own unpacking, not a re-derivation.
        """
        eye = torch.eye(self.in_features, dtype=self.act_dtype)
        return self._matmul(eye).float().T


def kernel_fits(linear: nn.Linear, *, bits: int, group_size: int = 128) -> bool:
    """True if ``linear``'s shape suits the kernel (K % 16; int4: N % 16 and K % group_size)."""
    _args.module("linear", linear, nn.Linear)
    bits = _args.choice("bits", _args.integer("bits", bits), (4, 8))
    group_size = _args.choice("group_size", _args.integer("group_size", group_size), GROUP_SIZES)
    n, k = linear.weight.shape
    if k % 16:
        return False
    return bits == 8 or (n % 16 == 0 and k % group_size == 0)


def _shared_weights(model: nn.Module) -> set[int]:
    """ids of Parameters used by more than one module (a language model's tied embedding / head)."""
    seen: dict[int, int] = {}
    for m in model.modules():
        for p in m.parameters(recurse=False):
            seen[id(p)] = seen.get(id(p), 0) + 1
    return {i for i, count in seen.items() if count > 1}


def quantize_weight_only_(model: nn.Module, *, bits: int = 8, group_size: int = 128,
                          act_dtype: torch.dtype = torch.bfloat16, skip_tied: bool = True) -> nn.Module:
    """Swap every ``nn.Linear`` of ``model`` (in place) for its int8 or int4 weight-only version.

    Left in float: layers the kernel cannot take (see :func:`kernel_fits`) and, with ``skip_tied``,
    a Linear whose weight another module shares - a language model's output head tied to its
    token embedding: quantizing it would break the tie and store the matrix twice.
    Returns ``model``; :func:`quantized_names` lists what was swapped.
    """
    _args.module("model", model)
    bits = _args.choice("bits", _args.integer("bits", bits), (4, 8))
    group_size = _args.choice("group_size", _args.integer("group_size", group_size), GROUP_SIZES)
    _check_act_dtype(act_dtype)
    _args.instance("skip_tied", skip_tied, bool)
    tied = _shared_weights(model) if skip_tied else set()
    swaps = []
    for parent in model.modules():
        for name, child in parent.named_children():
            if type(child) is nn.Linear and id(child.weight) not in tied and kernel_fits(child, bits=bits,
                                                                                        group_size=group_size):
                swaps.append((parent, name, child))
    for parent, name, child in swaps:
        if bits == 8:
            new = Int8WeightOnlyLinear.from_linear(child, act_dtype=act_dtype)
        else:
            new = Int4WeightOnlyLinear.from_linear(child, group_size=group_size, act_dtype=act_dtype)
        setattr(parent, name, new)
    return model


def quantized_names(model: nn.Module) -> list[str]:
    """Names of the weight-only quantized layers of ``model``."""
    _args.module("model", model)
    return [n for n, m in model.named_modules() if isinstance(m, _WeightOnlyLinear)]
