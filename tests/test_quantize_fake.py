"""labkit.quantize.fake: equals torch.fake_quantize_* forward and backward; the STE gradient;
FakeQuantize's observe / enable / dynamic modes."""

import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from labkit.quantize import (
    FakeQuantize,
    MinMaxObserver,
    choose_qparams,
    dequantize,
    fake_quantize,
    quantize,
)


@pytest.mark.parametrize("scale,zp,qmin,qmax", [(0.05, 0, -128, 127), (0.1, 130, 0, 255), (0.3, 7, 0, 15), (0.02, 0, -8, 7)])
def test_equals_torch_per_tensor_forward_and_backward(gen, scale, zp, qmin, qmax):
    x = (torch.randn(500, generator=gen) * 2).requires_grad_()
    signed = qmin < 0
    bits = (qmax - qmin + 1).bit_length() - 1
    ours = fake_quantize(x, scale, zp, bits=bits, signed=signed)
    g = torch.randn(500, generator=gen)
    (gx,) = torch.autograd.grad(ours, x, g)
    ref = torch.fake_quantize_per_tensor_affine(x, scale, zp, qmin, qmax)
    (rx,) = torch.autograd.grad(ref, x, g)
    assert torch.equal(ours, ref)
    assert torch.equal(gx, rx)


def test_equals_torch_per_channel(gen):
    x = (torch.randn(6, 40, generator=gen) * 3).requires_grad_()
    s, z = choose_qparams(x, bits=8, granularity="per_channel", axis=0)
    ours = fake_quantize(x, s, z, bits=8, axis=0)
    ref = torch.fake_quantize_per_channel_affine(x, s, z, 0, 0, 255)
    assert torch.allclose(ours, ref, atol=1e-6)
    g = torch.randn(6, 40, generator=gen)
    assert torch.equal(torch.autograd.grad(ours, x, g)[0], torch.autograd.grad(ref, x, g)[0])


def test_halves_follow_quantize_not_torch_fake_quantize():
    """PyTorch rounds before adding the zero-point in fake_quantize, after in quantize_per_tensor."""
    x = torch.tensor([0.5, -0.5, 1.5, 2.5])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch_codes = torch.quantize_per_tensor(x, 1.0, 1, torch.quint8).int_repr()
    ours = quantize(x, 1.0, 1)
    assert torch.equal(ours, torch_codes) and ours.tolist() == [2, 0, 2, 4]
    assert torch.equal(fake_quantize(x, 1.0, 1), dequantize(ours, 1.0, 1))
    assert torch.fake_quantize_per_tensor_affine(x, 1.0, 1, 0, 255).tolist() == [0.0, 0.0, 2.0, 2.0]


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(-50, 50, width=32), min_size=1, max_size=40), st.floats(0.01, 2.0), st.integers(2, 8))
def test_ste_gradient_is_one_inside_zero_outside(values, scale, bits):
    x = torch.tensor(values).requires_grad_()
    y = fake_quantize(x, scale, 0, bits=bits, signed=True)
    y.sum().backward()
    lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    q = torch.round(x.detach() * (1 / torch.tensor(scale)))
    inside = (q >= lo) & (q <= hi)
    assert torch.equal(x.grad, inside.float())


def test_fakequantize_modes(gen):
    x = torch.randn(64, generator=gen)
    fq = FakeQuantize(bits=4, observer=MinMaxObserver(), enabled=False)
    assert torch.equal(fq(x), x) and fq.observer.observed()  # calibration: observe only
    fq.enabled = True
    fq.eval()
    before = fq.observer.max_val.clone()
    fq(x * 10)  # eval mode with fake quant on: the range is frozen
    assert torch.equal(fq.observer.max_val, before)
    fq.train()
    fq(x * 10)
    assert float(fq.observer.max_val) > float(before)
    dyn = FakeQuantize(bits=8, dynamic=True)
    s, z = choose_qparams(x, bits=8)
    assert dyn.observer is None and torch.equal(dyn(x), fake_quantize(x, s, z))


def test_bad_input():
    with pytest.raises(ValueError, match="zero_point must lie in"):
        fake_quantize(torch.ones(3), 0.1, 20, bits=4)
    with pytest.raises(ValueError, match="scale must be finite and > 0"):
        fake_quantize(torch.ones(3), -1.0, 0)
    with pytest.raises(ValueError, match="bits must be an int between 1 and 16"):
        FakeQuantize(bits=0)
    with pytest.raises(TypeError, match="observer must be an observer name or an Observer"):
        FakeQuantize(observer=3)
    with pytest.raises(ValueError, match="per tensor"):
        FakeQuantize(observer=MinMaxObserver(axis=0))
    with pytest.raises(ValueError, match="observer must be one of"):
        FakeQuantize(observer="median")
