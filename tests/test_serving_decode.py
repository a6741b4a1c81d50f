"""labkit.serving.decode: the bytes a decode step reads (hand-counted from the config), the
bandwidth / roofline arithmetic on worked examples, FLOPs against a hand count, and the timing
helpers' shapes (never their speed)."""

from __future__ import annotations

import pytest
import torch

from labkit.lm.model import GPT, GPTConfig
from labkit.serving.decode import (
    batch_sweep,
    bytes_per_step,
    decode_flops,
    decode_weight_bytes,
    kv_cache_speedup,
    predicted_tokens_per_s,
    read_bandwidth_gbs,
    ridge_batch,
    roofline_tokens_per_s,
    time_decode,
    time_prefill,
)
from labkit.serving.weight_only import quantize_weight_only_

CFG = GPTConfig(block_size=32, n_layer=2, n_head=2, n_embd=32, vocab_size=256)


def _model():
    torch.manual_seed(0)
    return GPT(CFG).eval()


def _hand_weight_floats(c: GPTConfig, *, tied: bool) -> int:
    """Numbers a decode step reads: the head's matrix, one row of each embedding table that is only
    looked up (wte, unless tied to the head; wpe), the blocks and the final LayerNorm."""
    d, h = c.n_embd, c.mlp_ratio * c.n_embd
    per_block = (2 * 2 * d) + (d * 3 * d + 3 * d) + (d * d + d) + (d * h + h) + (h * d + d)  # 2 LayerNorms, attn, MLP
    embedding_rows = d if tied else 2 * d
    return c.vocab_size * d + embedding_rows + c.n_layer * per_block + 2 * d


def _tied(model):
    model.head.weight = model.wte.weight  # as in GPT-2: the head reads the embedding matrix whole
    return model


@pytest.mark.parametrize("tied", [False, True])
def test_decode_weight_bytes_count_each_matrix_once_and_looked_up_tables_by_the_row(tied):
    model = _tied(_model()) if tied else _model()
    assert decode_weight_bytes(model) == 4 * _hand_weight_floats(CFG, tied=tied)
    all_params = sum(p.numel() for p in model.parameters()) * 4  # a tied weight is one parameter
    only_looked_up = (CFG.block_size - 1) * CFG.n_embd + (0 if tied else (CFG.vocab_size - 1) * CFG.n_embd)
    assert decode_weight_bytes(model) == all_params - 4 * only_looked_up
    assert decode_weight_bytes(model.to(torch.bfloat16)) == 2 * _hand_weight_floats(CFG, tied=tied)


@pytest.mark.parametrize("tied", [False, True])
def test_weight_bytes_of_an_int8_model_count_codes_and_scales(tied):
    model = quantize_weight_only_(_tied(_model()) if tied else _model(), bits=8)
    d, h, n, v = CFG.n_embd, 4 * CFG.n_embd, CFG.n_layer, CFG.vocab_size
    linear_weights = n * (d * 3 * d + d * d + d * h + h * d) + (0 if tied else d * v)  # a tied head stays float
    out_channels = n * (3 * d + d + h + d) + (0 if tied else v)
    want = 4 * _hand_weight_floats(CFG, tied=tied) - 4 * linear_weights + linear_weights + 2 * out_channels
    assert decode_weight_bytes(model) == want  # int8 codes + one bf16 scale per output channel


def test_bytes_per_step_add_the_kv_cache_of_every_sequence():
    model = _model()
    kv = 2 * CFG.n_layer * 10 * CFG.n_embd * 4  # K and V, every layer, 10 positions, fp32
    assert bytes_per_step(model, context=10) == decode_weight_bytes(model) + kv
    assert bytes_per_step(model, context=10, batch=3) == decode_weight_bytes(model) + 3 * kv
    assert predicted_tokens_per_s(model, bandwidth_gbs=10.0, context=10, batch=3) == pytest.approx(
        3 * 10e9 / (decode_weight_bytes(model) + 3 * kv))


def test_ridge_and_roofline_worked_example():
    # 100 GFLOP/s and 10 GB/s: ridge 10 FLOP/byte; fp32 weights (4 bytes, 2 B FLOPs) -> B* = 20
    assert ridge_batch(100.0, 10.0, bytes_per_weight=4) == pytest.approx(20.0)
    assert ridge_batch(100.0, 10.0, bytes_per_weight=0.5) == pytest.approx(2.5)
    w, flops = 4_000_000, 2_000_000  # 1M fp32 weights, 2 FLOPs each
    kw = dict(weight_bytes=w, kv_bytes_per_sequence=0, flops_per_token=flops, bandwidth_gbs=10.0, peak_gflops=100.0)
    assert roofline_tokens_per_s(1, **kw) == pytest.approx(10e9 / w)  # memory-bound: 2500 tokens/s
    assert roofline_tokens_per_s(10, **kw) == pytest.approx(10 * 10e9 / w)
    assert roofline_tokens_per_s(40, **kw) == pytest.approx(100e9 / flops)  # compute-bound: peak / FLOPs
    assert roofline_tokens_per_s(20, **kw) == pytest.approx(roofline_tokens_per_s(40, **kw))  # the ridge


def test_decode_flops_match_a_hand_count():
    model = _model()
    d, h, n, ctx = CFG.n_embd, 4 * CFG.n_embd, CFG.n_layer, 9
    linear = 2 * (n * (d * 3 * d + d * d + d * h + h * d) + d * CFG.vocab_size)
    attention = n * 2 * 2 * (ctx + 1) * d  # Q K^T and A V over ctx + 1 keys, all heads
    got = decode_flops(model, context=ctx)
    assert got in (linear, linear + attention), (got, linear, attention)
    assert decode_flops(model, context=ctx, batch=4) == 4 * got


def test_timing_helpers_return_rows_without_judging_speed():
    model = _model()
    assert time_decode(model, context=8, min_run_time=0.01).median > 0
    assert time_prefill(model, length=16, batch=2, min_run_time=0.01).median > 0
    rows = batch_sweep(model, [1, 2], context=4, bandwidth_gbs=10.0, min_run_time=0.01)
    assert [r["batch"] for r in rows] == [1, 2] and all(r["tokens_per_s"] > 0 for r in rows)
    assert rows[1]["predicted_tokens_per_s"] > rows[0]["predicted_tokens_per_s"]
    rows = kv_cache_speedup(model, [4, 16], min_run_time=0.01)
    assert [r["length"] for r in rows] == [4, 16]
    assert all(r["speedup"] == pytest.approx(r["recompute_ms"] / r["cached_ms"]) for r in rows)
    assert read_bandwidth_gbs(1 << 20, min_run_time=0.01) > 0


def test_bad_arguments_raise():
    model = _model()
    with pytest.raises(ValueError, match="context"):
        bytes_per_step(model, context=0)
    with pytest.raises(ValueError, match="context"):
        time_decode(model, context=CFG.block_size)
    with pytest.raises(ValueError, match="batch"):
        time_decode(model, context=4, batch=0)
    with pytest.raises(ValueError, match="bandwidth_gbs"):
        predicted_tokens_per_s(model, bandwidth_gbs=-1.0, context=4)
    with pytest.raises(TypeError, match="model"):
        bytes_per_step(torch.nn.Linear(2, 2), context=4)
    with pytest.raises(ValueError, match="batches"):
        batch_sweep(model, [], context=4, bandwidth_gbs=1.0)
    with pytest.raises(ValueError, match="nbytes"):
        read_bandwidth_gbs(1000)
    with pytest.raises(ValueError, match="peak_gflops"):
        ridge_batch(0.0, 10.0, bytes_per_weight=4)
