"""Why batch-1 decoding is memory-bound, and a model that predicts its speed.

Generating one token runs the whole network on *one* position: every weight matrix is read from
memory to do two FLOPs per weight (a multiply and an add). A CPU streams ~10 GB/s from DRAM but
computes ~100 GFLOP/s, so the time goes into reading bytes::

    bytes per decode step = weight bytes (at their dtype) + batch x KV-cache bytes read
    KV-cache bytes read   = 2 (K and V) x n_layer x context x n_embd x bytes per element
    predicted tokens / s  = batch x bandwidth / bytes per step

Embedding tables that are only *looked up* (the position embedding) cost one row per token, not
the table; a token embedding tied to the output head is read whole by the head
(:func:`decode_weight_bytes`).

**Batching** shares each weight read among ``B`` sequences: ``2 B`` FLOPs per weight read, so the
arithmetic intensity grows with ``B`` until it reaches the machine's *ridge point*
``peak FLOP/s / bandwidth``; past it decode is compute-bound (:func:`ridge_batch`)::

    B* = ridge x bytes per weight / 2

**Prefill** (the prompt) runs ``T`` positions per weight read: compute-bound, much cheaper per
token than decode. The **KV cache** turns each new token's cost from a forward over the whole
sequence into one position plus a read of the cache (:func:`kv_cache_speedup`).

The "timing" model (random weights, larger than the last-level cache) is what these functions
are pointed at: a model that fits in cache never shows the memory-bound decode. All times go
through :func:`labkit.timing.time_fn`. Used by lesson ``09_serving_a_language_model``.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from labkit import _args
from labkit.lm.generate import KVCache, decode_step, kv_cache_bytes, prefill
from labkit.lm.model import GPT
from labkit.timing import Timing, time_fn


def _check_gpt(model) -> GPT:
    return _args.module("model", model, GPT)


def _float_dtype(model: nn.Module) -> torch.dtype:
    return next(p.dtype for p in model.parameters() if p.is_floating_point())


def decode_weight_bytes(model: nn.Module) -> int:
    """Bytes of weights one decode step reads: every parameter and buffer once (a tied weight
    counted once), except embedding tables only looked up, which cost one row."""
    _args.module("model", model)
    linear_weights = {id(m.weight) for m in model.modules() if isinstance(m, nn.Linear)}
    seen, total = set(), 0
    for m in model.modules():
        looked_up = isinstance(m, nn.Embedding)
        for t in list(m.parameters(recurse=False)) + list(m.buffers(recurse=False)):
            if id(t) in seen:
                continue
            seen.add(id(t))
            if looked_up and id(t) not in linear_weights:
                total += t[0].numel() * t.element_size()  # one row per token
            else:
                total += t.numel() * t.element_size()
    return total


def bytes_per_step(model: nn.Module, *, context: int, batch: int = 1) -> int:
    """Bytes one decode step of ``batch`` sequences reads, each with ``context`` cached positions:
    weights once, plus every sequence's K and V (in the model's float dtype)."""
    _check_gpt(model)
    context = _args.positive_int("context", context)
    batch = _args.positive_int("batch", batch)
    kv = kv_cache_bytes(model.config, context, batch_size=batch, dtype=_float_dtype(model))
    return decode_weight_bytes(model) + kv


def predicted_tokens_per_s(model: nn.Module, *, bandwidth_gbs: float, context: int, batch: int = 1) -> float:
    """``batch x bandwidth / bytes per step``: the memory-bound speed of decode."""
    bandwidth = _args.positive_float("bandwidth_gbs", bandwidth_gbs) * 1e9
    return batch * bandwidth / bytes_per_step(model, context=context, batch=batch)


def read_bandwidth_gbs(nbytes: int = 256 << 20, *, threads: int | None = None, min_run_time: float = 0.3) -> float:
    """Measured streaming-read bandwidth (GB/s): ``x.sum()`` over a float32 tensor of ``nbytes``
    (default 256 MiB, far past any CPU cache). A sum reads each byte once and does one add per
    4 bytes, so memory is the limit - the same access pattern as decode's weight reads."""
    nbytes = _args.integer("nbytes", nbytes, minimum=1 << 20)
    x = torch.randn(nbytes // 4)
    t = time_fn(lambda: x.sum(), threads=threads, min_run_time=min_run_time, label="read bandwidth")
    return x.numel() * 4 / t.median / 1e9


def _filled_cache(model: GPT, *, context: int, batch: int, generator: torch.Generator | None = None) -> KVCache:
    """A KV cache holding ``context`` positions of random keys and values: a decode step costs the
    same whatever they hold, and filling them by a prefill would cost ``batch x context`` tokens."""
    cfg = model.config
    cache = KVCache(cfg, batch_size=batch, max_len=min(cfg.block_size, context + 1), dtype=_float_dtype(model))
    for buffers in (cache.k, cache.v):
        for t in buffers:
            t[:, :, :context] = torch.randn(t[:, :, :context].shape, generator=generator).to(t.dtype)
    cache.advance(context)
    return cache


def _check_context(model: GPT, context) -> int:
    return _args.integer("context", context, minimum=1, maximum=model.config.block_size - 1)


def time_decode(model: nn.Module, *, context: int, batch: int = 1, threads: int | None = None,
                min_run_time: float = 0.3, generator: torch.Generator | None = None) -> Timing:
    """Time one decode step (``batch`` new tokens) after ``context`` cached positions.

    The cache is filled once with random keys and values; each timed call rolls it back to
    ``context`` positions (``cache.crop(context)``) and decodes one token per sequence.
    """
    _check_gpt(model)
    context = _check_context(model, context)
    batch = _args.positive_int("batch", batch)
    cache = _filled_cache(model, context=context, batch=batch, generator=generator)
    token = torch.randint(0, model.config.vocab_size, (batch,), generator=generator)

    def step():
        cache.crop(context)
        decode_step(model, token, cache)

    return time_fn(step, threads=threads, min_run_time=min_run_time, label=f"decode b={batch} ctx={context}")


def time_prefill(model: nn.Module, *, length: int, batch: int = 1, threads: int | None = None,
                 min_run_time: float = 0.3, generator: torch.Generator | None = None) -> Timing:
    """Time the prefill of ``batch`` prompts of ``length`` tokens into an empty KV cache."""
    _check_gpt(model)
    length = _args.integer("length", length, minimum=1, maximum=model.config.block_size)
    batch = _args.positive_int("batch", batch)
    cache = KVCache(model.config, batch_size=batch, max_len=length, dtype=_float_dtype(model))
    idx = torch.randint(0, model.config.vocab_size, (batch, length), generator=generator)

    def run():
        cache.reset()
        prefill(model, idx, cache)

    return time_fn(run, threads=threads, min_run_time=min_run_time, label=f"prefill b={batch} T={length}")


def decode_flops(model: nn.Module, *, context: int, batch: int = 1) -> int:
    """FLOPs of one decode step, counted by ``torch.utils.flop_counter`` (float layers only: the
    weight-only kernels of :mod:`labkit.serving.weight_only` have no FLOP formula there)."""
    _check_gpt(model)
    context = _check_context(model, context)
    batch = _args.positive_int("batch", batch)
    cache = _filled_cache(model, context=context, batch=batch)
    counter = FlopCounterMode(display=False)
    with counter:
        decode_step(model, torch.zeros(batch, dtype=torch.long), cache)
    return int(counter.get_total_flops())


def ridge_batch(peak_gflops: float, bandwidth_gbs: float, *, bytes_per_weight: float) -> float:
    """The batch at which decode turns compute-bound: ``ridge x bytes_per_weight / 2`` with
    ``ridge = peak / bandwidth`` FLOP per byte (decode does ``2 B`` FLOPs per weight read)."""
    ridge = _args.positive_float("peak_gflops", peak_gflops) / _args.positive_float("bandwidth_gbs", bandwidth_gbs)
    return ridge * _args.positive_float("bytes_per_weight", bytes_per_weight) / 2


def roofline_tokens_per_s(batch: int, *, weight_bytes: int, kv_bytes_per_sequence: int, flops_per_token: float,
                          bandwidth_gbs: float, peak_gflops: float) -> float:
    """Tokens/s of a decode step of ``batch`` sequences under the roofline: the slower of the
    memory time ``(W + B kv) / bandwidth`` and the compute time ``B flops / peak``."""
    batch = _args.positive_int("batch", batch)
    memory_s = (_args.positive_int("weight_bytes", weight_bytes)
                + batch * _args.non_negative_int("kv_bytes_per_sequence", kv_bytes_per_sequence)) / (
        _args.positive_float("bandwidth_gbs", bandwidth_gbs) * 1e9)
    compute_s = batch * _args.positive_float("flops_per_token", flops_per_token) / (
        _args.positive_float("peak_gflops", peak_gflops) * 1e9)
    return batch / max(memory_s, compute_s)


def batch_sweep(model: nn.Module, batches, *, context: int, bandwidth_gbs: float, threads: int | None = None,
                min_run_time: float = 0.3) -> list[dict]:
    """Decode tokens/s (measured and memory-bound prediction) for each batch size."""
    _check_gpt(model)
    batches = [_args.positive_int(f"batches[{i}]", b)
               for i, b in enumerate(_args.iterable("batches", batches, "a list of batch sizes"))]
    if not batches:
        raise ValueError("batches must not be empty")
    context = _check_context(model, context)
    _args.positive_float("bandwidth_gbs", bandwidth_gbs)
    _args.positive_float("min_run_time", min_run_time)
    rows = []
    for b in batches:
        t = time_decode(model, context=context, batch=b, threads=threads, min_run_time=min_run_time)
        rows.append({"batch": b, "step_ms": t.median * 1e3, "tokens_per_s": b / t.median,
                     "predicted_tokens_per_s": predicted_tokens_per_s(model, bandwidth_gbs=bandwidth_gbs,
                                                                      context=context, batch=b)})
    return rows


def kv_cache_speedup(model: nn.Module, lengths, *, threads: int | None = None, min_run_time: float = 0.3,
                     warmup: int = 1) -> list[dict]:
    """For each sequence length ``L``: the time of the next token with the KV cache (one decode
    step after ``L`` cached positions) and without it (a forward over all ``L + 1`` positions).
    ``warmup`` untimed calls precede each timing (a recompute of a long sequence takes seconds)."""
    _check_gpt(model)
    warmup = _args.non_negative_int("warmup", warmup)
    lengths = [_check_context(model, n) for n in _args.iterable("lengths", lengths, "a list of sequence lengths")]
    if not lengths:
        raise ValueError("lengths must not be empty")
    rows = []
    for n in lengths:
        cached = time_decode(model, context=n, threads=threads, min_run_time=min_run_time).median
        idx = torch.randint(0, model.config.vocab_size, (1, n + 1))

        def recompute(idx=idx):
            with torch.no_grad():
                model(idx)

        full = time_fn(recompute, threads=threads, min_run_time=min_run_time, warmup=warmup,
                       label=f"recompute {n + 1}").median
        rows.append({"length": n, "cached_ms": cached * 1e3, "recompute_ms": full * 1e3, "speedup": full / cached})
    return rows
