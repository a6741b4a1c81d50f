"""Group-wise RTN and GPTQ (labkit.quantize.groupwise, .calibration, .gptq) against references."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from labkit.lm.model import GPT, get_config
from labkit.quantize.calibration import capture_inputs, channel_stats, hessian, layer_error
from labkit.quantize.gptq import column_update, gptq_quantize_, gptq_weight, obs_reference
from labkit.quantize.groupwise import bits_per_weight, linear_names, rtn_quantize_, rtn_weight
from labkit.quantize.maths import quantize_dequantize


def _correlated(k, rows, seed):
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(k, k, generator=g) * 0.4 + torch.eye(k)
    return torch.randn(rows, k, generator=g) @ mix, g


def test_bits_per_weight_counts_scales():
    assert bits_per_weight(4, 128, symmetric=True) == 4.125
    assert bits_per_weight(4, 128) == 4 + 20 / 128
    assert bits_per_weight(3, 32, symmetric=True) == 3.5


def test_rtn_matches_labkit_per_group_maths_when_scales_are_fp16_exact():
    # scales that are powers of two survive the fp16 rounding: then RTN is lesson 06's per-group grid
    for sym, w in ((False, torch.tensor([[0.0, 1.0, 2.0, 15.0, -8.0, 0.0, 7.0, 1.0]])),
                   (True, torch.tensor([[0.0, 1.0, 2.0, 15.0, -7.5, 0.0, 7.0, 1.0]]))):
        want = quantize_dequantize(w, bits=4, symmetric=sym, granularity="per_group", group_size=4)
        assert torch.equal(rtn_weight(w, bits=4, group_size=4, symmetric=sym), want)


def test_rtn_error_is_at_most_half_a_step():
    w = torch.randn(8, 64, generator=torch.Generator().manual_seed(1))
    w_hat = rtn_weight(w, bits=3, group_size=16)
    groups = w.reshape(8, 4, 16)
    step = (groups.amax(-1).clamp(min=0) - groups.amin(-1).clamp(max=0)) / 7
    assert ((w - w_hat).abs().reshape(8, 4, 16) <= step[..., None] * 0.5 * 1.01 + 1e-6).all()
    assert (w - w_hat).abs().max() > 0


def test_rtn_quantize_skips_head_and_embeddings():
    torch.manual_seed(0)
    model = GPT(get_config("tiny"))
    head, wte = model.head.weight.clone(), model.wte.weight.clone()
    attn = model.blocks[0].attn.c_attn.weight.clone()
    rtn_quantize_(model, bits=3, group_size=32)
    assert torch.equal(model.head.weight, head) and torch.equal(model.wte.weight, wte)
    assert torch.equal(model.blocks[0].attn.c_attn.weight, rtn_weight(attn, bits=3, group_size=32))
    assert "head" not in linear_names(model) and "head" in linear_names(model, skip=())


@pytest.mark.parametrize("block_size", [4, 16, 24, 64])
def test_gptq_blocked_equals_the_obs_reference(block_size):
    x, g = _correlated(48, 400, seed=2)
    w = torch.randn(10, 48, generator=g)
    h = hessian(x)
    ref = obs_reference(w, h, bits=3, group_size=16)
    assert torch.allclose(gptq_weight(w, h, bits=3, group_size=16, block_size=block_size), ref, atol=1e-6)


def test_gptq_with_a_diagonal_hessian_is_rtn():
    w = torch.randn(12, 64, generator=torch.Generator().manual_seed(3))
    h = torch.diag(torch.rand(64, dtype=torch.float64) + 0.5)
    for damp in (0.0, 0.01):
        assert torch.equal(gptq_weight(w, h, bits=3, group_size=32, damp=damp), rtn_weight(w, bits=3, group_size=32))


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), bits=st.sampled_from([2, 3, 4]), group=st.sampled_from([8, 16, 32]))
def test_gptq_beats_rtn_on_correlated_inputs(seed, bits, group):
    # with the default 1% damping; undamped, GPTQ lost to RTN on ~3% of such layers (e.g. seed 273,
    # 2 bits, g=8: 138 vs 122), damped on none of 900 tried
    x, g = _correlated(32, 256, seed)
    w = torch.randn(8, 32, generator=g)
    q_gptq = gptq_weight(w, hessian(x), bits=bits, group_size=group)
    assert layer_error(w, q_gptq, x) <= layer_error(w, rtn_weight(w, bits=bits, group_size=group), x)


def test_gptq_quantize_model_lowers_layer_error_and_hooks_are_removed():
    torch.manual_seed(0)
    model = GPT(get_config("tiny"))
    batches = [torch.randint(0, 256, (2, 64), generator=torch.Generator().manual_seed(i)) for i in range(2)]
    names = linear_names(model)
    xs = capture_inputs(model, batches, names)
    assert xs["blocks.0.mlp.2"].shape == (256, 256)
    w = model.blocks[1].mlp[0].weight.clone()
    gptq_quantize_(model, batches, bits=3, group_size=32)
    w_hat = model.blocks[1].mlp[0].weight
    x = xs["blocks.1.mlp.0"]
    assert layer_error(w, w_hat, x) < layer_error(w, rtn_weight(w, bits=3, group_size=32), x)
    assert all(not m._forward_hooks for m in model.modules())


def test_channel_stats_against_hand_example():
    s = channel_stats(torch.tensor([[1.0, -4.0], [-3.0, 2.0]]))
    assert s["absmax"].tolist() == [3.0, 4.0] and s["absmean"].tolist() == [2.0, 3.0]


def test_bad_inputs_are_refused():
    w = torch.randn(4, 48)
    with pytest.raises(ValueError, match="group_size"):
        rtn_weight(w, group_size=32)
    with pytest.raises(ValueError, match="group_size"):
        gptq_weight(w, torch.eye(48), group_size=20)
    with pytest.raises(ValueError, match="H"):
        gptq_weight(w, torch.eye(40))
    with pytest.raises(ValueError, match="width"):
        hessian(torch.randn(5, 40), in_features=48)
    with pytest.raises(TypeError, match="bits"):
        rtn_weight(w, bits=4.0, group_size=16)
    with pytest.raises(ValueError, match="nn.Linear"):
        capture_inputs(nn.Sequential(nn.ReLU()), [torch.randn(1, 2)], ["0"])
    with pytest.raises(ValueError, match="empty"):
        capture_inputs(nn.Sequential(nn.Linear(2, 2)), [], ["0"])


def test_column_update_hand_example():
    w = torch.tensor([[1.0, 2.0, 3.0], [0.5, 0.0, -1.0]])
    err = column_update(w, 1, torch.tensor([1.5, 0.0]), torch.tensor([0.0, 2.0, 1.0]))
    assert err.tolist() == [0.25, 0.0]  # (2 - 1.5) / 2
    assert w.tolist() == [[1.0, 1.5, 2.75], [0.5, 0.0, -1.0]]  # column 1 -> q, column 2 -= 0.25 * 1


def test_act_order_is_gptq_on_the_permuted_problem():
    x, g = _correlated(32, 256, seed=5)
    x = x * torch.linspace(0.2, 3.0, 32)  # uneven input energies, so the order matters
    w = torch.randn(6, 32, generator=g)
    h = hessian(x)
    perm = torch.argsort(torch.diag(h), descending=True)
    want = gptq_weight(w[:, perm], h[perm][:, perm], bits=3, group_size=16)
    got = gptq_weight(w, h, bits=3, group_size=16, act_order=True)
    assert torch.equal(got[:, perm], want)
    assert not torch.equal(got, gptq_weight(w, h, bits=3, group_size=16))
