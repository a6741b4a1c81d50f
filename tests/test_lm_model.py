"""labkit.lm.model: SDPA attention vs the naive oracle, shapes, configs, causality, bad input."""

from __future__ import annotations

from dataclasses import FrozenInstanceError

import pytest
import torch
import torch.nn.functional as F

from labkit.lm import model as M
from labkit.models import count_parameters


@pytest.mark.parametrize("tq,tk", [(1, 1), (5, 5), (1, 7), (3, 7)])
def test_sdpa_matches_naive_attention(gen, tq, tk):
    q = torch.randn(2, 3, tq, 8, generator=gen)
    k, v = torch.randn(2, 3, tk, 8, generator=gen), torch.randn(2, 3, tk, 8, generator=gen)
    mask = M.causal_mask(tq, tk)
    ref = M.naive_attention(q, k, v, causal=True)
    torch.testing.assert_close(F.scaled_dot_product_attention(q, k, v, attn_mask=mask), ref, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(F.scaled_dot_product_attention(q, k, v), M.naive_attention(q, k, v, causal=False),
                               atol=1e-6, rtol=1e-5)
    if tq == tk:
        torch.testing.assert_close(F.scaled_dot_product_attention(q, k, v, is_causal=True), ref, atol=1e-6, rtol=1e-5)


def test_causal_mask_by_hand():
    assert M.causal_mask(2, 4).tolist() == [[True, True, True, False], [True, True, True, True]]
    assert M.causal_mask(3, 3).tolist() == [[True, False, False], [True, True, False], [True, True, True]]
    with pytest.raises(ValueError, match="t_key"):
        M.causal_mask(4, 2)


def _naive_forward(model: M.GPT, idx: torch.Tensor) -> torch.Tensor:
    """The GPT forward rewritten with naive_attention (the oracle for the whole model)."""
    t = idx.size(1)
    h = model.wte(idx) + model.wpe(torch.arange(t))
    for block in model.blocks:
        a = block.attn
        x = block.ln_1(h)
        q, k, v = a.c_attn(x).split(x.size(-1), dim=2)
        q, k, v = (z.view(*z.shape[:2], a.n_head, -1).transpose(1, 2) for z in (q, k, v))
        y = M.naive_attention(q, k, v, causal=True).transpose(1, 2).reshape(x.shape)
        h = h + a.c_proj(y)
        h = h + block.mlp(block.ln_2(h))
    return model.ln_f(h) @ model.head.weight.T


def test_model_matches_naive_forward_and_shapes(gen):
    torch.manual_seed(0)
    model = M.GPT(M.get_config("tiny")).eval()
    (idx,) = model.example_inputs(3, generator=gen)
    assert idx.shape == (3, model.config.block_size) and idx.dtype == torch.long
    logits = model(idx)
    assert logits.shape == (3, model.config.block_size, 256)
    torch.testing.assert_close(logits, _naive_forward(model, idx), atol=1e-5, rtol=1e-5)


def test_model_is_causal(gen):
    """Changing a later token never changes earlier logits."""
    torch.manual_seed(0)
    model = M.GPT(M.get_config("tiny")).eval()
    idx = torch.randint(0, 256, (1, 20), generator=gen)
    other = idx.clone()
    other[0, 12] = (other[0, 12] + 1) % 256
    a, b = model(idx), model(other)
    torch.testing.assert_close(a[:, :12], b[:, :12])
    assert not torch.allclose(a[:, 12:], b[:, 12:])


def test_parameter_count_by_formula():
    for name in ("tiny", "draft", "course"):
        c = M.get_config(name)
        d, L, V, T = c.n_embd, c.n_layer, c.vocab_size, c.block_size
        per_block = (d * 3 * d + 3 * d) + (d * d + d) + (d * 4 * d + 4 * d) + (4 * d * d + d) + 2 * 2 * d
        expected = V * d + T * d + L * per_block + 2 * d + d * V  # embeddings, blocks, final norm, head
        assert count_parameters(M.GPT(c)) == expected, name
    assert count_parameters(M.GPT(M.get_config("course"))) == 875_264


def test_timing_config_is_larger_than_a_last_level_cache():
    c = M.get_config("timing")
    fp32_bytes = 4 * (c.n_layer * 12 * c.n_embd**2 + (c.vocab_size + c.block_size) * c.n_embd)
    assert fp32_bytes >= 64 * 2**20


def test_configs_and_bad_input():
    with pytest.raises(ValueError, match="name"):
        M.get_config("huge")
    with pytest.raises(ValueError, match="n_head"):
        M.GPTConfig(n_embd=30, n_head=4)
    with pytest.raises(ValueError, match="n_layer"):
        M.GPTConfig(n_layer=0)
    with pytest.raises(TypeError, match="config"):
        M.GPT({"n_layer": 2})
    model = M.GPT(M.get_config("tiny"))
    with pytest.raises(TypeError, match="idx"):
        model(torch.zeros(1, 4))
    with pytest.raises(ValueError, match="block_size"):
        model(torch.zeros(1, 65, dtype=torch.long))
    with pytest.raises(ValueError, match="batch_size"):
        model.example_inputs(0)
    with pytest.raises(FrozenInstanceError):
        M.get_config("tiny").n_layer = 3

