"""FLOPs per token of the GPT, and model FLOP utilisation (MFU).

A matmul of ``(m, k) @ (k, n)`` costs ``2 m k n`` FLOPs (a multiply and an add). Per token of a
sequence of length ``T``, one forward pass costs

    2 * N_matmul                  every weight matrix multiplies the token's vector once:
                                  N_matmul = n_layer * 12 d^2  (Q,K,V: 3d^2, proj: d^2, MLP: 8d^2)
                                           + d * V             (the head, tied or not)
  + 4 * n_layer * T * d           attention: Q K^T and (scores) V, each 2 T d per token,
                                  counting the full T x T score matrix as the kernels compute it

Biases, LayerNorm, GELU, softmax and embedding look-ups are left out (they are O(d) per token,
not O(d^2)). A backward pass costs twice the forward (a gradient for the input and one for the
weight of every matmul), so a training step costs 3x the forward: ``6 N_matmul + 12 n_layer T d``.
Kaplan et al. (2020) write the forward as ``2N + 2 n_layer n_ctx d``: their N leaves out the
embeddings and the head, and their attention term counts each causal pair once (about half of
T x T on average) where ours counts the full matrix.

These formulas are exact against ``torch.utils.flop_counter`` when attention runs through the
math backend. On a CPU the fused flash-attention kernel is *not* counted by the flop counter, so
it reports only the ``2 * N_matmul`` part: a counter is only as good as its table of kernels.

``mfu = tokens_per_second * training_flops_per_token / peak_flops``: the fraction of the
machine's peak (lesson 01's estimate, passed in as FLOP/s) that training actually uses.
Used by lesson 09.
"""

from __future__ import annotations

from labkit import _args
from labkit.lm.model import GPTConfig


def matmul_params(config: GPTConfig) -> int:
    """``n_layer * 12 d^2 + d * V``: the weights each token multiplies (no biases, norms or
    position table; the embedding is a look-up, the head a matmul)."""
    _args.instance("config", config, GPTConfig)
    d = config.n_embd
    return config.n_layer * (4 + 2 * config.mlp_ratio) * d * d + d * config.vocab_size


def _seq_len(config: GPTConfig, seq_len) -> int:
    return _args.integer("seq_len", seq_len, minimum=1, maximum=config.block_size)


def forward_flops_per_token(config: GPTConfig, seq_len: int) -> int:
    """``2 * N_matmul + 4 * n_layer * seq_len * n_embd``: one forward pass, per token, for
    sequences of ``seq_len`` tokens (see the module docstring for what is counted)."""
    _args.instance("config", config, GPTConfig)
    t = _seq_len(config, seq_len)
    return 2 * matmul_params(config) + 4 * config.n_layer * t * config.n_embd


def training_flops_per_token(config: GPTConfig, seq_len: int) -> int:
    """Forward + backward = 3x the forward (``6 N + 12 n_layer T d`` per token)."""
    return 3 * forward_flops_per_token(config, seq_len)


def mfu(tokens_per_second: float, config: GPTConfig, seq_len: int, peak_flops: float) -> float:
    """Model FLOP utilisation of training: ``tokens_per_second * training_flops_per_token /
    peak_flops``. ``peak_flops`` is in FLOP/s (e.g. ``1e9 * labkit.hardware.cpu_peak_gflops().gflops``, lesson 01's
    estimate)."""
    tokens_per_second = _args.positive_float("tokens_per_second", tokens_per_second)
    peak_flops = _args.positive_float("peak_flops", peak_flops)
    return tokens_per_second * training_flops_per_token(config, seq_len) / peak_flops
