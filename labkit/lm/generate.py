"""Generating text: sampling, and a KV cache written from scratch.

Without a cache, every new token re-runs the model over the whole sequence: step ``t`` costs
``t`` positions of work, so ``n`` tokens cost ``O(n^2)`` positions. The keys and values of
earlier positions never change (attention is causal), so a **KV cache** keeps them:

* **prefill**: run the prompt once (``T`` positions, ``is_causal`` attention), storing each
  layer's K and V in ``cache.k[layer][:, :, :T]`` / ``cache.v[layer][:, :, :T]``;
* **decode**: feed one token at position ``pos``; its query attends to ``cache[:pos+1]``
  (everything before it, so no mask), then the cache grows by one.

The cache holds ``2 (K and V) x n_layer x batch x seq_len x n_embd`` numbers
(:func:`kv_cache_bytes`). ``generate(..., use_cache=False)`` recomputes everything and is the
oracle the cached path is tested against. Used by lesson 09 (serving a language model).
"""

from __future__ import annotations

import torch

from labkit import _args
from labkit.lm.model import GPT, GPTConfig


class KVCache:
    """Preallocated keys and values for every layer: ``k[layer]``, ``v[layer]`` of shape
    ``(batch, n_head, max_len, head_dim)``; ``length`` positions are filled."""

    def __init__(self, config: GPTConfig, *, batch_size: int = 1, max_len: int | None = None,
                 device=None, dtype: torch.dtype = torch.float32):
        _args.instance("config", config, GPTConfig)
        self.batch_size = _args.positive_int("batch_size", batch_size)
        self.max_len = config.block_size if max_len is None else _args.integer("max_len", max_len, minimum=1,
                                                                                 maximum=config.block_size)
        _args.instance("dtype", dtype, torch.dtype)
        shape = (self.batch_size, config.n_head, self.max_len, config.head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]
        self.length = 0

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write ``k``, ``v`` of shape ``(B, H, T, hd)`` at positions ``length .. length+T-1`` of
        ``layer`` and return that layer's keys and values for positions ``0 .. length+T-1``."""
        t = k.size(2)
        end = self.length + t
        if end > self.max_len:
            raise ValueError(f"the cache holds {self.max_len} positions; {self.length} used + {t} new do not fit")
        self.k[layer][:, :, self.length:end] = k
        self.v[layer][:, :, self.length:end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]

    def advance(self, t: int) -> None:
        """Mark ``t`` more positions as filled (the model calls this after its last layer)."""
        self.length += _args.positive_int("t", t)

    def reset(self) -> None:
        """Forget every position (the buffers are reused)."""
        self.length = 0

    def crop(self, length: int) -> None:
        """Keep only the first ``length`` positions (speculative decoding rolls back the tokens
        the target model rejected); later writes overwrite the rest."""
        self.length = _args.integer("length", length, minimum=0, maximum=self.length)

    @property
    def nbytes(self) -> int:
        """Bytes allocated for K and V (all ``max_len`` positions)."""
        return sum(t.numel() * t.element_size() for t in self.k + self.v)


def kv_cache_bytes(config: GPTConfig, seq_len: int, *, batch_size: int = 1, dtype: torch.dtype = torch.float32) -> int:
    """``2 x n_layer x batch_size x seq_len x n_embd x bytes_per_element``: the memory a cache of
    ``seq_len`` positions needs (K and V, every layer, every head)."""
    _args.instance("config", config, GPTConfig)
    seq_len = _args.positive_int("seq_len", seq_len)
    batch_size = _args.positive_int("batch_size", batch_size)
    _args.instance("dtype", dtype, torch.dtype)
    return 2 * config.n_layer * batch_size * seq_len * config.n_embd * torch.empty((), dtype=dtype).element_size()


def _check_model(model) -> GPT:
    return _args.module("model", model, GPT)


@torch.no_grad()
def prefill(model: GPT, idx: torch.Tensor, cache: KVCache) -> torch.Tensor:
    """Run the prompt ``idx`` ``(B, T)`` through ``model``, filling an empty ``cache``;
    return the logits ``(B, T, V)`` (the last row predicts the first new token)."""
    _check_model(model)
    _args.instance("cache", cache, KVCache)
    if cache.length:
        raise ValueError(f"cache must be empty before prefill, it holds {cache.length} positions (call reset())")
    return model(idx, cache=cache)


@torch.no_grad()
def decode_step(model: GPT, token: torch.Tensor, cache: KVCache) -> torch.Tensor:
    """Feed one token per sequence (``token`` of shape ``(B,)`` or ``(B, 1)``) at position
    ``cache.length``; return its logits ``(B, V)``."""
    _check_model(model)
    _args.instance("cache", cache, KVCache)
    _args.tensor("token", token, dtype="integer", ndim=(1, 2))
    if cache.length == 0:
        raise ValueError("cache is empty: call prefill(model, prompt, cache) first")
    return model(token.reshape(-1, 1), cache=cache)[:, -1]


def sample_next(logits: torch.Tensor, *, temperature: float | None = None, top_k: int | None = None,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Pick the next token from ``logits`` ``(B, V)`` -> ids ``(B,)``.

    ``temperature=None`` is greedy (argmax). Otherwise keep the ``top_k`` largest logits (all if
    ``None``), divide by ``temperature`` and draw from ``softmax(logits / temperature)`` with
    ``generator``. Small temperatures approach greedy; ``top_k=1`` is greedy.
    """
    _args.tensor("logits", logits, dtype="floating", ndim=2, non_empty=True)
    if top_k is not None:
        _args.integer("top_k", top_k, minimum=1, maximum=logits.size(-1))
    if temperature is None:
        return logits.argmax(dim=-1)
    temperature = _args.positive_float("temperature", temperature)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)


@torch.no_grad()
def generate(model: GPT, prompt_ids: torch.Tensor, max_new_tokens: int, *, temperature: float | None = None,
             top_k: int | None = None, generator: torch.Generator | None = None, use_cache: bool = True,
             return_logits: bool = False):
    """Continue ``prompt_ids`` (``(T,)`` or ``(B, T)`` byte ids) by ``max_new_tokens`` tokens.

    Returns the new ids (shape ``(N,)`` or ``(B, N)``, like the prompt), and with
    ``return_logits`` also the logits each one was drawn from (``(N, V)`` or ``(B, N, V)``).
    ``temperature=None`` is greedy; see :func:`sample_next`. ``use_cache=False`` re-runs the
    whole sequence for every token (the reference). The prompt plus the new tokens must fit in
    the context: ``T + max_new_tokens <= block_size``.
    """
    _check_model(model)
    _args.tensor("prompt_ids", prompt_ids, dtype="integer", ndim=(1, 2))
    if prompt_ids.size(-1) == 0:
        raise ValueError("prompt_ids is empty: give at least one token to start from")
    max_new_tokens = _args.positive_int("max_new_tokens", max_new_tokens)
    if temperature is not None:
        _args.positive_float("temperature", temperature)
    if top_k is not None:
        _args.integer("top_k", top_k, minimum=1, maximum=model.config.vocab_size)
    _args.instance("use_cache", use_cache, bool)
    if int(prompt_ids.min()) < 0 or int(prompt_ids.max()) >= model.config.vocab_size:
        raise ValueError(f"prompt_ids must be token ids in 0..{model.config.vocab_size - 1}")
    squeeze = prompt_ids.dim() == 1
    idx = prompt_ids.reshape(1, -1) if squeeze else prompt_ids
    limit = model.config.block_size
    if idx.size(1) + max_new_tokens > limit:
        raise ValueError(f"max_new_tokens: the prompt ({idx.size(1)} tokens) plus {max_new_tokens} new tokens "
                         f"exceed the context (block_size={limit})")
    param = next(model.parameters())
    idx = idx.to(param.device)
    new_ids, all_logits = [], []
    if use_cache:
        cache = KVCache(model.config, batch_size=idx.size(0), max_len=idx.size(1) + max_new_tokens,
                        device=param.device, dtype=param.dtype)
        logits = prefill(model, idx, cache)[:, -1]
    else:
        seq, logits = idx, model(idx)[:, -1]
    for step in range(max_new_tokens):
        token = sample_next(logits, temperature=temperature, top_k=top_k, generator=generator)
        new_ids.append(token)
        all_logits.append(logits)
        if step == max_new_tokens - 1:
            break
        if use_cache:
            logits = decode_step(model, token, cache)
        else:
            seq = torch.cat([seq, token[:, None]], dim=1)
            logits = model(seq)[:, -1]
    out = torch.stack(new_ids, dim=1)
    stacked = torch.stack(all_logits, dim=1)
    if squeeze:
        out, stacked = out[0], stacked[0]
    return (out, stacked) if return_logits else out
