"""labkit.serving.weight_only: PyTorch's int8 / int4 CPU kernels checked against lesson 06's maths
(labkit.quantize.maths) followed by a plain float matmul."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from labkit.quantize import maths
from labkit.serving.weight_only import (
    Int4WeightOnlyLinear,
    Int8WeightOnlyLinear,
    int4_per_group,
    int8_per_channel,
    kernel_fits,
    quantize_weight_only_,
    quantized_names,
)


def _weight(n=48, k=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, k, generator=g) * torch.rand(n, 1, generator=g)  # rows of different ranges


def _close(y, ref, rel):
    """max |y - ref| <= rel * max |ref| (bf16 keeps 8 bits of mantissa: rel ~ 1e-2)."""
    err = (y.float() - ref).abs().max().item()
    assert err <= rel * ref.abs().max().item(), (err, ref.abs().max().item())


def test_int8_codes_and_scales_follow_the_formula():
    """The module docstring's formula written out (the oracle): ``s_n = max|W_n| / 127.5``,
    ``q = clamp(round(W * (1/s_n)), -128, 127)`` with a float32 reciprocal - bit for bit.
    (int8_per_channel is lesson 06's maths: this also pins that code path.)"""
    w = _weight()
    w[0] = 0.0  # an all-zero row: the smallest scale, codes 0
    codes, scale = int8_per_channel(w)
    s_ref = (w.abs().amax(dim=1) / 127.5).clamp(min=torch.finfo(torch.float32).eps)
    q_ref = torch.round(w * (1.0 / s_ref)[:, None]).clamp(-128, 127).to(torch.int8)
    assert torch.equal(scale, s_ref)
    assert torch.equal(codes, q_ref)
    assert not codes[0].any()


@pytest.mark.parametrize("group_size", [32, 64, 128])
def test_int4_codes_scales_zeros_follow_the_formula(group_size):
    """``s = (max - min) / 15`` over each group (range stretched to hold 0), ``z = clamp(-round(min / s),
    0, 15)``, ``q = clamp(round(W * (1/s) + z), 0, 15)`` with the multiply-add rounded once - bit for bit."""
    w = _weight() + 0.3  # a shifted range: zero-points away from the middle
    codes, scale, zero = int4_per_group(w, group_size)
    groups = w.reshape(w.shape[0], -1, group_size)
    lo, hi = groups.amin(-1).clamp(max=0.0), groups.amax(-1).clamp(min=0.0)
    s_ref = ((hi - lo) / 15).clamp(min=torch.finfo(torch.float32).eps)
    z_ref = (-torch.round(lo / s_ref)).clamp(0, 15)
    fma = groups.double() * (1.0 / s_ref).double()[..., None] + z_ref.double()[..., None]  # exact in float64
    q_ref = torch.round(fma.float()).clamp(0, 15).reshape(w.shape).to(torch.int32)
    assert torch.equal(scale, s_ref)
    assert torch.equal(zero, z_ref.to(torch.int32))
    assert torch.equal(codes, q_ref)


@pytest.mark.parametrize("act_dtype, rel", [(torch.bfloat16, 2e-2), (torch.float32, 1e-5)])
def test_int8_kernel_equals_dequantize_then_matmul(act_dtype, rel):
    w, b = _weight(), torch.randn(48)
    x = torch.randn(2, 5, 256)
    layer = Int8WeightOnlyLinear(w, b, act_dtype=act_dtype)
    w_hat = maths.quantize_dequantize(w, bits=8, symmetric=True, granularity="per_channel", axis=0)
    ref = x.to(act_dtype).float() @ w_hat.T + b
    y = layer(x)
    assert y.shape == (2, 5, 48) and y.dtype == x.dtype
    _close(y, ref, rel)


@pytest.mark.parametrize("group_size", [32, 64, 128])
@pytest.mark.parametrize("act_dtype, rel", [(torch.bfloat16, 2e-2), (torch.float32, 1e-5)])
def test_int4_kernel_equals_dequantize_then_matmul(group_size, act_dtype, rel):
    w = _weight(k=384) - 0.2
    x = torch.randn(3, 384)
    layer = Int4WeightOnlyLinear(w, None, group_size=group_size, act_dtype=act_dtype)
    w_hat = maths.quantize_dequantize(w, bits=4, symmetric=False, granularity="per_group", group_size=group_size)
    ref = x.to(act_dtype).float() @ w_hat.T
    _close(layer(x), ref, rel)
    # the kernel's own unpacking of the packed codes gives back the same weight
    _close(layer.dequantized_weight(), w_hat, 1e-2 if act_dtype == torch.bfloat16 else 1e-5)


def test_int4_error_is_within_half_a_step_of_the_weight():
    w = _weight(k=128)
    layer = Int4WeightOnlyLinear(w, group_size=32, act_dtype=torch.float32)
    step = int4_per_group(w, 32)[1].repeat_interleave(32, dim=1)
    assert ((layer.dequantized_weight() - w).abs() <= step / 2 + 1e-6).all()


def test_unaligned_and_strided_inputs_give_the_same_answer():
    layer8 = Int8WeightOnlyLinear(_weight(k=64), act_dtype=torch.bfloat16)
    layer4 = Int4WeightOnlyLinear(_weight(k=64), group_size=32, act_dtype=torch.bfloat16)
    big = torch.randn(4 * 64 + 1).bfloat16()
    shifted = big[1:].reshape(4, 64)  # contiguous, but starting 2 bytes into the storage
    strided = big[1:].reshape(64, 4).T  # not contiguous
    assert shifted.is_contiguous() and shifted.data_ptr() % 64 != 0 and not strided.is_contiguous()
    for layer in (layer8, layer4):
        for x in (shifted, strided):
            assert torch.equal(layer(x), layer(x.clone(memory_format=torch.contiguous_format)))


def test_quantize_weight_only_swaps_linears_and_skips_a_tied_head():
    torch.manual_seed(0)

    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(64, 32)
            self.mlp = nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 32))
            self.head = nn.Linear(32, 64, bias=False)
            self.head.weight = self.emb.weight  # tied, as in GPT-2

        def forward(self, idx):
            return self.head(self.mlp(self.emb(idx)))

    model = Tiny()
    idx = torch.randint(0, 64, (2, 5))
    before = model(idx)
    quantize_weight_only_(model, bits=8, act_dtype=torch.float32)
    assert quantized_names(model) == ["mlp.0", "mlp.2"]
    assert type(model.head) is nn.Linear and model.head.weight is model.emb.weight
    _close(model(idx), before, 3e-2)
    model4 = quantize_weight_only_(nn.Sequential(nn.Linear(64, 32), nn.Linear(32, 8)), bits=4, group_size=32)
    assert quantized_names(model4) == ["0"]  # N = 8 is not a multiple of 16: left in float
    assert not kernel_fits(nn.Linear(32, 8), bits=4, group_size=32) and kernel_fits(nn.Linear(32, 8), bits=8)


def test_weight_bytes_count_codes_scales_and_bias():
    layer8 = Int8WeightOnlyLinear(_weight(), torch.zeros(48), act_dtype=torch.bfloat16)
    assert layer8.weight_bytes() == 48 * 256 + 48 * 2 + 48 * 4
    layer4 = Int4WeightOnlyLinear(_weight(), group_size=64, act_dtype=torch.bfloat16)
    assert layer4.weight_bytes() == 48 * 256 // 2 + (256 // 64) * 48 * 2 * 2


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="multiple of 16"):
        Int8WeightOnlyLinear(torch.randn(8, 12))
    with pytest.raises(ValueError, match="multiple of 16"):
        Int4WeightOnlyLinear(torch.randn(8, 64), group_size=32)
    with pytest.raises(ValueError, match="group_size"):
        Int4WeightOnlyLinear(torch.randn(16, 64), group_size=48)
    with pytest.raises(ValueError, match="group_size"):
        Int4WeightOnlyLinear(torch.randn(16, 96), group_size=64)
    with pytest.raises(ValueError, match="act_dtype"):
        Int8WeightOnlyLinear(torch.randn(16, 16), act_dtype=torch.int8)
    with pytest.raises(TypeError, match="act_dtype"):
        Int8WeightOnlyLinear(torch.randn(16, 16), act_dtype="bf16")
    with pytest.raises(TypeError, match="weight"):
        Int8WeightOnlyLinear(torch.ones(16, 16, dtype=torch.int64))
    with pytest.raises(ValueError, match="bits"):
        quantize_weight_only_(nn.Linear(16, 16), bits=3)
    with pytest.raises(TypeError, match="model"):
        quantize_weight_only_("model")
    with pytest.raises(TypeError, match="linear"):
        kernel_fits(nn.Conv2d(1, 1, 1), bits=8)
    with pytest.raises(ValueError, match="bits"):
        kernel_fits(nn.Linear(16, 16), bits=2)
    with pytest.raises(ValueError, match="last dimension"):
        Int8WeightOnlyLinear(torch.randn(16, 16))(torch.randn(2, 32))
