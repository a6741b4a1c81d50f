"""A small GPT (decoder-only transformer), written to read like the paper.

``GPT(config)`` maps byte ids ``(B, T)`` to next-byte logits ``(B, T, V)``:

    h = wte[idx] + wpe[pos]                                  token + learned position embeddings
    for each block:  h = h + Attn(LayerNorm(h))              pre-norm causal self-attention
                     h = h + MLP(LayerNorm(h))               Linear(d, 4d) -> GELU -> Linear(4d, d)
    logits = LayerNorm(h) @ W_head^T                         the head: its own matrix (not tied)

Attention is ``softmax(Q K^T / sqrt(d_head) + mask) V`` per head, computed by PyTorch's
``F.scaled_dot_product_attention``; :func:`naive_attention` writes the same formula out by hand
and is the test oracle. With a KV cache (``labkit.lm.generate.KVCache``) the keys and values of
earlier positions are read from the cache instead of recomputed: see ``forward(idx, cache=...)``.

Named configurations (:data:`CONFIGS`): ``"tiny"`` (tests and fast mode; trains in seconds),
``"draft"`` (a 1-layer draft model for speculative decoding), ``"course"`` (~0.9M parameters,
the model lesson 09 trains and measures quality on) and ``"timing"`` (random weights, several
times larger than a CPU's last-level cache, for honest decode-speed measurements).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from labkit import _args
from labkit.lm.corpus import VOCAB_SIZE


@dataclass(frozen=True)
class GPTConfig:
    """Shape of a :class:`GPT`. ``n_embd`` must divide evenly into ``n_head`` heads."""

    block_size: int = 128          # context length: the most positions the model can see
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    vocab_size: int = VOCAB_SIZE   # byte-level tokens
    mlp_ratio: int = 4             # MLP hidden width = mlp_ratio * n_embd
    dropout: float = 0.0
    bias: bool = True

    def __post_init__(self):
        for name in ("block_size", "n_layer", "n_head", "n_embd", "vocab_size", "mlp_ratio"):
            _args.positive_int(name, getattr(self, name))
        _args.real("dropout", self.dropout, minimum=0.0, maximum=1.0)
        _args.instance("bias", self.bias, bool)
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head


CONFIGS: dict[str, GPTConfig] = {
    "tiny": GPTConfig(block_size=64, n_layer=2, n_head=2, n_embd=64),
    "draft": GPTConfig(block_size=128, n_layer=1, n_head=2, n_embd=64),
    "course": GPTConfig(block_size=128, n_layer=4, n_head=4, n_embd=128),
    "timing": GPTConfig(block_size=256, n_layer=6, n_head=16, n_embd=1024),
}


def get_config(name: str) -> GPTConfig:
    """The named configuration: one of ``"tiny"``, ``"draft"``, ``"course"``, ``"timing"``."""
    return CONFIGS[_args.choice("name", name, tuple(CONFIGS))]


def naive_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = True) -> torch.Tensor:
    """``softmax(Q K^T / sqrt(d) + mask) V`` written out (the oracle for the SDPA path).

    ``q``: ``(..., Tq, d)``, ``k`` and ``v``: ``(..., Tk, d)`` with ``Tk >= Tq``. With ``causal``,
    the queries are the *last* ``Tq`` positions, so query ``i`` sees keys ``0 .. Tk - Tq + i``
    (the same rule a KV cache needs when new tokens join cached ones).
    """
    _args.tensor("q", q, dtype="floating")
    _args.tensor("k", k, dtype="floating", ndim=q.dim())
    _args.tensor("v", v, dtype="floating", ndim=q.dim())
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))
    if causal:
        scores = scores.masked_fill(~causal_mask(q.size(-2), k.size(-2), device=q.device), float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


def causal_mask(t_query: int, t_key: int, *, device=None) -> torch.Tensor:
    """Boolean ``(t_query, t_key)`` mask, True where query ``i`` may attend key ``j``:
    ``j <= (t_key - t_query) + i`` (the queries are the last ``t_query`` positions)."""
    t_query, t_key = _args.positive_int("t_query", t_query), _args.positive_int("t_key", t_key)
    if t_key < t_query:
        raise ValueError(f"t_key ({t_key}) must be >= t_query ({t_query})")
    rows = torch.arange(t_query, device=device)[:, None] + (t_key - t_query)
    return torch.arange(t_key, device=device)[None, :] <= rows


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention: one Linear makes Q, K, V; another mixes the heads."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        _args.instance("config", config, GPTConfig)
        self.n_head, self.dropout = config.n_head, config.dropout
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)

    def forward(self, x: torch.Tensor, *, cache=None, layer: int = 0) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.c_attn(x).split(d, dim=2)
        q, k, v = (z.view(b, t, self.n_head, d // self.n_head).transpose(1, 2) for z in (q, k, v))  # (B, H, T, hd)
        dropout = self.dropout if self.training else 0.0
        if cache is None or cache.length == 0:
            if cache is not None:
                cache.update(layer, k, v)
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout)
        else:
            # New queries sit after cache.length cached positions: is_causal=True would align
            # the mask to the *first* keys, so build it (a single new token sees everything).
            k, v = cache.update(layer, k, v)
            mask = None if t == 1 else causal_mask(t, k.size(2), device=x.device)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        return self.c_proj(y.transpose(1, 2).reshape(b, t, d))


class Block(nn.Module):
    """Pre-norm transformer block: ``h + Attn(LN(h))``, then ``h + MLP(LN(h))``."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        _args.instance("config", config, GPTConfig)
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        hidden = config.mlp_ratio * config.n_embd
        self.mlp = nn.Sequential(nn.Linear(config.n_embd, hidden, bias=config.bias), nn.GELU(),
                                 nn.Linear(hidden, config.n_embd, bias=config.bias), nn.Dropout(config.dropout))

    def forward(self, x: torch.Tensor, *, cache=None, layer: int = 0) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), cache=cache, layer=layer)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    """The byte-level GPT. ``forward(idx, cache=None)`` -> logits ``(B, T, vocab_size)``.

    Weights start with PyTorch's default initialisation and the head is not tied to the token
    embedding: on the course's short run (500 steps of 32 x 128 bytes) this learned faster than
    GPT-2's normal(0, 0.02) init with a tied head (val loss 2.66 vs 3.06 nats after 100 steps at a constant 3e-3).
    """

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = _args.instance("config", config, GPTConfig)
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.block_size, config.n_embd)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.head = nn.Linear(config.n_embd, config.vocab_size, bias=False)

    def forward(self, idx: torch.Tensor, *, cache=None) -> torch.Tensor:
        _args.tensor("idx", idx, dtype="integer", ndim=2, non_empty=True)
        start = 0 if cache is None else cache.length
        t = idx.size(1)
        if start + t > self.config.block_size:
            raise ValueError(f"idx: {start} cached + {t} new positions exceed the context "
                             f"(block_size={self.config.block_size})")
        pos = torch.arange(start, start + t, device=idx.device)
        h = self.drop(self.wte(idx) + self.wpe(pos))
        for i, block in enumerate(self.blocks):
            h = block(h, cache=cache, layer=i)
        if cache is not None:
            cache.advance(t)
        return self.head(self.ln_f(h))

    def example_inputs(self, batch_size: int = 1, *, device=None, generator: torch.Generator | None = None) -> tuple[torch.Tensor]:
        """``(idx,)``: random byte ids of shape ``(batch_size, block_size)``."""
        batch_size = _args.positive_int("batch_size", batch_size)
        idx = torch.randint(0, self.config.vocab_size, (batch_size, self.config.block_size), generator=generator)
        return (idx.to(device) if device is not None else idx,)


def weight_bytes(model: nn.Module) -> int:
    """Bytes of the model's parameters as stored (a tied weight counted once)."""
    _args.module("model", model)
    return sum(p.numel() * p.element_size() for p in model.parameters())
