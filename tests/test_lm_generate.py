"""labkit.lm.generate: the KV cache against full recompute, sampling rules, cache size, bad input."""

from __future__ import annotations

import pytest
import torch

from labkit.lm import generate as G
from labkit.lm import model as M


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    return M.GPT(M.get_config("tiny")).eval()


@pytest.mark.parametrize("prompt_len", [1, 2, 7, 30])
def test_cached_generation_equals_full_recompute(tiny, gen, prompt_len):
    prompt = torch.randint(0, 256, (prompt_len,), generator=gen)
    new = 64 - prompt_len if prompt_len == 30 else 24
    ids, logits = G.generate(tiny, prompt, new, return_logits=True)
    ref_ids, ref_logits = G.generate(tiny, prompt, new, use_cache=False, return_logits=True)
    assert ids.shape == (new,) and ids.tolist() == ref_ids.tolist()
    torch.testing.assert_close(logits, ref_logits, atol=1e-5, rtol=0)


def test_prefill_then_decode_matches_one_forward(tiny, gen):
    """Prefill 5 tokens, decode 1, then add a 3-token chunk at position 6: every logit equals the
    full forward's (the chunk needs the explicit mask: is_causal would align it to the start)."""
    seq = torch.randint(0, 256, (2, 9), generator=gen)
    full = tiny(seq)
    cache = G.KVCache(tiny.config, batch_size=2)
    torch.testing.assert_close(G.prefill(tiny, seq[:, :5], cache), full[:, :5], atol=1e-5, rtol=0)
    torch.testing.assert_close(G.decode_step(tiny, seq[:, 5], cache), full[:, 5], atol=1e-5, rtol=0)
    with torch.no_grad():
        chunk = tiny(seq[:, 6:], cache=cache)
    torch.testing.assert_close(chunk, full[:, 6:], atol=1e-5, rtol=0)
    assert cache.length == 9


def test_crop_rolls_the_cache_back(tiny, gen):
    seq = torch.randint(0, 256, (1, 12), generator=gen)
    full = tiny(seq)
    cache = G.KVCache(tiny.config)
    G.prefill(tiny, seq[:, :10], cache)
    cache.crop(6)  # as if positions 6..9 were rejected
    with torch.no_grad():
        again = tiny(seq[:, 6:], cache=cache)
    torch.testing.assert_close(again, full[:, 6:], atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="length"):
        cache.crop(13)


def test_batched_sampling_with_cache_equals_recompute(tiny, gen):
    prompt = torch.randint(0, 256, (3, 4), generator=gen)
    a = G.generate(tiny, prompt, 10, temperature=0.8, top_k=20, generator=torch.Generator().manual_seed(1))
    b = G.generate(tiny, prompt, 10, temperature=0.8, top_k=20, generator=torch.Generator().manual_seed(1),
                   use_cache=False)
    assert a.shape == (3, 10) and torch.equal(a, b)


def test_top_k_one_and_low_temperature_are_greedy(gen):
    logits = torch.randn(50, 256, generator=gen)
    greedy = G.sample_next(logits)
    assert torch.equal(greedy, logits.argmax(-1))
    assert torch.equal(G.sample_next(logits, temperature=1.0, top_k=1, generator=gen), greedy)
    assert torch.equal(G.sample_next(logits, temperature=1e-4, generator=gen), greedy)


def test_top_k_never_leaves_the_top_k(gen):
    logits = torch.randn(1, 256, generator=gen).expand(4000, 256)
    draws = G.sample_next(logits, temperature=2.0, top_k=5, generator=gen)
    top5 = set(torch.topk(logits[0], 5).indices.tolist())
    assert set(draws.tolist()) == top5  # only the top 5, and (4000 draws) every one of them


def test_sampling_follows_the_softmax(gen):
    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0]]).expand(20000, 4)
    draws = G.sample_next(logits, temperature=1.0, generator=gen)
    freq = torch.bincount(draws, minlength=4).float() / len(draws)
    torch.testing.assert_close(freq, torch.softmax(logits[0], -1), atol=0.015, rtol=0)


def test_kv_cache_bytes_formula_and_allocation():
    c = M.get_config("course")
    assert G.kv_cache_bytes(c, 128) == 2 * 4 * 128 * 128 * 4
    assert G.kv_cache_bytes(c, 100, batch_size=3, dtype=torch.bfloat16) == 2 * 4 * 3 * 100 * 128 * 2
    assert G.KVCache(c, batch_size=3, max_len=100).nbytes == G.kv_cache_bytes(c, 100, batch_size=3)


def test_bad_input_names_the_argument(tiny):
    p = torch.tensor([1, 2, 3])
    with pytest.raises(ValueError, match="prompt_ids"):
        G.generate(tiny, torch.tensor([], dtype=torch.long), 3)
    with pytest.raises(ValueError, match="max_new_tokens"):
        G.generate(tiny, p, 62)
    with pytest.raises(ValueError, match="max_new_tokens"):
        G.generate(tiny, p, 0)
    with pytest.raises(ValueError, match="temperature"):
        G.generate(tiny, p, 3, temperature=0.0)
    with pytest.raises(ValueError, match="temperature"):
        G.generate(tiny, p, 3, temperature=-1.0)
    with pytest.raises(ValueError, match="top_k"):
        G.generate(tiny, p, 3, temperature=1.0, top_k=0)
    with pytest.raises(ValueError, match="top_k"):
        G.generate(tiny, p, 3, temperature=1.0, top_k=257)
    with pytest.raises(TypeError, match="prompt_ids"):
        G.generate(tiny, p.float(), 3)
    with pytest.raises(ValueError, match="prompt_ids"):
        G.generate(tiny, torch.tensor([1, 300]), 3)
    with pytest.raises(TypeError, match="model"):
        G.generate(torch.nn.Linear(2, 2), p, 3)
    cache = G.KVCache(tiny.config)
    with pytest.raises(ValueError, match="empty"):
        G.decode_step(tiny, p[:1], cache)
    G.prefill(tiny, p[None], cache)
    with pytest.raises(ValueError, match="empty"):
        G.prefill(tiny, p[None], cache)
    with pytest.raises(ValueError, match="max_len"):
        G.KVCache(tiny.config, max_len=65)
