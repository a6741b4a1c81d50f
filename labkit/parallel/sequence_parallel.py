"""Sequence parallelism: the two conjugate collectives that shard a block's boundary activations (lesson 04).

Tensor parallelism (:mod:`labkit.parallel.tensor_parallel`, :mod:`labkit.parallel.tp_block`)
splits the weights, yet every rank still holds the *whole* ``(B, T, d)`` residual stream: the
LayerNorms, the residual adds and the dropouts run on every rank in full, and autograd keeps
their inputs in full on every rank. Sequence parallelism (Korthikanti et al., 2022, "Reducing
Activation Recomputation in Large Transformer Models") cuts those tensors along the sequence
dimension instead: rank ``r`` holds positions ``r T/p .. (r+1) T/p - 1``.

The all-reduce that ends a row-parallel layer is exactly a reduce-scatter followed by an
all-gather, and sequence parallelism moves the all-gather to the start of the next
column-parallel layer:

* ``g`` (all-reduce forward, identity backward) becomes :class:`ScatterSequence`
  (reduce-scatter along the sequence forward, all-gather backward);
* ``f`` (identity forward, all-reduce backward) becomes :class:`GatherSequence`
  (all-gather along the sequence forward, reduce-scatter backward).

Between them, LayerNorm, dropout and the residual add work on ``T/p`` positions. Under ring
algorithms an all-reduce of ``N`` bytes puts ``2(p-1)/p N`` on the wire and a reduce-scatter
plus an all-gather ``(p-1)/p N`` each: the same bytes, for ``p`` times less activation memory
at the block boundaries.

One cost is new: LayerNorm weights and the row-parallel biases now see ``T/p`` positions on each
rank, so their gradients are partial sums and must be all-reduced after backward (Megatron's
"sequence-parallel gradients"): ``TensorParallelBlock.reduce_replicated_grads`` does it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from labkit.parallel.comm import CountingComm


def _all_gather(x: torch.Tensor, comm: CountingComm, dim: int) -> torch.Tensor:
    """Every rank's shard of ``x`` joined along ``dim``, in rank order (one counted all-gather)."""
    return torch.cat(comm.all_gather(x.contiguous()), dim=dim)


class GatherSequence(torch.autograd.Function):
    """All-gather along ``dim`` forward; reduce-scatter of the gradient backward (replaces ``f``).

    ``GatherSequence.apply(x_shard, comm, dim)`` -> the full tensor, every rank's shard in rank order."""

    @staticmethod
    def forward(ctx, x, comm: CountingComm, dim: int):
        ctx.comm, ctx.dim = comm, dim
        return _all_gather(x, comm, dim)

    @staticmethod
    def backward(ctx, grad):
        # Every rank's full-length gradient holds its heads' (or hidden units') contribution to
        # every position: summing them and keeping this rank's positions is one reduce-scatter.
        return ctx.comm.reduce_scatter(grad.contiguous(), dim=ctx.dim), None, None


class ScatterSequence(torch.autograd.Function):
    """Reduce-scatter along ``dim`` forward; all-gather of the gradient backward (replaces ``g``).

    ``ScatterSequence.apply(partial, comm, dim)`` -> this rank's positions of the sum over ranks."""

    @staticmethod
    def forward(ctx, x, comm: CountingComm, dim: int):
        ctx.comm, ctx.dim = comm, dim
        return comm.reduce_scatter(x.contiguous(), dim=dim)

    @staticmethod
    def backward(ctx, grad):
        return _all_gather(grad, ctx.comm, ctx.dim), None, None


class GatheredLinear(torch.autograd.Function):
    """An all-gather along ``dim`` and a Linear in one step that keeps only the *shard* for
    backward and gathers it again there (Megatron-LM's choice with sequence parallelism).

    ``GatherSequence`` then ``F.linear`` keeps the gathered, full-length input alive until
    backward; this keeps ``1/p`` of it, for one more all-gather per layer in backward.
    ``GatheredLinear.apply(x_shard, weight, bias, comm, dim)``."""

    @staticmethod
    def forward(ctx, x, weight, bias, comm: CountingComm, dim: int):
        ctx.comm, ctx.dim, ctx.has_bias = comm, dim, bias is not None
        ctx.save_for_backward(x, weight)
        return F.linear(_all_gather(x, comm, dim), weight, bias)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        full = _all_gather(x, ctx.comm, ctx.dim)  # the gather, again
        rows, full_rows = grad.reshape(-1, grad.shape[-1]), full.reshape(-1, full.shape[-1])
        grad_weight = rows.t() @ full_rows
        grad_bias = rows.sum(0) if ctx.has_bias else None
        grad_x = ctx.comm.reduce_scatter((grad @ weight).contiguous(), dim=ctx.dim)
        return grad_x, grad_weight, grad_bias, None, None
