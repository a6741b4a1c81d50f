"""Tensor parallelism on a transformer block: attention split by heads, then the MLP (lesson 04).

The dense reference is the course language model's pre-norm block
(:class:`labkit.lm.model.Block`): ``h = x + Attn(LN1(x))``, ``out = h + MLP(LN2(h))``.
Megatron-LM (Shoeybi et al., 2019) splits it over ``p`` ranks with one all-reduce per half:

* **attention by heads**: the fused ``c_attn`` Linear (rows ``[q; k; v]``, ``d`` rows each) is
  column-parallel, cut so that rank ``r`` holds the q, k *and* v rows of heads
  ``r H/p .. (r+1) H/p - 1``. Heads never talk to each other, so each rank runs
  ``F.scaled_dot_product_attention`` on its own ``H/p`` heads with no communication;
* the output projection ``c_proj`` is row-parallel: its input columns are the heads' outputs,
  in head order, so rank ``r``'s columns are exactly its heads' - the partial products are
  summed by one all-reduce (``g``);
* the MLP: ``Linear(d, 4d)`` column-parallel, GELU (element-wise, local), ``Linear(4d, d)``
  row-parallel, as in :mod:`labkit.parallel.tensor_parallel`.

So a block costs two all-reduces of ``B x T x d`` forward (``g`` after each half) and two
backward (``f`` before each half). With ``sequence_parallel=True`` each ``f`` / ``g`` pair becomes
an all-gather / reduce-scatter along the sequence (:mod:`labkit.parallel.sequence_parallel`) and
the LayerNorms, residuals and dropout run on ``T/p`` positions.

:func:`tp_block_worker` checks this block against the dense one (outputs and every gradient);
:mod:`labkit.parallel.dtensor_block` does the same with PyTorch's ``parallelize_module``.
"""

from __future__ import annotations

import copy

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from labkit import _args
from labkit.lm.model import Block, GPTConfig
from labkit.parallel.comm import CountingComm, require_group
from labkit.parallel.launch import rank_device
from labkit.parallel.problem import LiveActivationMeter
from labkit.parallel.sequence_parallel import GatheredLinear, GatherSequence, ScatterSequence
from labkit.parallel.tensor_parallel import (
    ColumnParallelLinear,
    RowParallelLinear,
    _CopyToParallel,
    _ReduceFromParallel,
    shard,
)


def head_order(n_embd: int, n_head: int, world_size: int) -> torch.Tensor:
    """Row permutation of a fused ``[q; k; v]`` weight ``(3 n_embd, n_embd)`` that puts rank
    ``r``'s q, k and v rows (its ``n_head / world_size`` heads) in its contiguous ``1/p`` slice:
    ``weight[head_order(...)]`` is then split by :class:`ColumnParallelLinear` as by heads."""
    n_embd, n_head = _args.positive_int("n_embd", n_embd), _args.positive_int("n_head", n_head)
    world_size = _args.positive_int("world_size", world_size)
    if n_embd % n_head or n_head % world_size:
        raise ValueError(f"n_head={n_head} must divide n_embd={n_embd} and be divisible by world_size={world_size}")
    per = n_embd // world_size  # q (or k, or v) rows per rank
    return torch.cat([torch.arange(r * per, (r + 1) * per) + part * n_embd
                      for r in range(world_size) for part in range(3)])


def _gather(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Every rank's ``t`` concatenated along ``dim`` (plain torch.distributed: not counted)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return t.detach().clone()
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, t.detach().contiguous())
    return torch.cat(parts, dim=dim)


class TensorParallelBlock(nn.Module):
    """This rank's share of a dense :class:`labkit.lm.model.Block`: ``H/p`` heads, ``4d/p``
    hidden units, LayerNorms replicated. ``forward(x)`` takes ``(B, T, d)`` - or, with
    ``sequence_parallel=True``, this rank's ``(B, T/p, d)`` slice of the sequence - and returns
    the same layout. ``recompute_gather=True`` (sequence parallelism only) keeps just the
    shard of each column-parallel layer's input for backward and all-gathers it again there
    (:class:`labkit.parallel.sequence_parallel.GatheredLinear`)."""

    def __init__(self, block: Block, comm: CountingComm, *, sequence_parallel: bool = False,
                 recompute_gather: bool = False):
        super().__init__()
        _args.module("block", block, Block)
        _args.instance("comm", comm, CountingComm, "a labkit.parallel.comm.CountingComm")
        self.sequence_parallel = _args.boolean("sequence_parallel", sequence_parallel)
        self.recompute_gather = _args.boolean("recompute_gather", recompute_gather)
        if recompute_gather and not sequence_parallel:
            raise ValueError("recompute_gather=True needs sequence_parallel=True (plain TP gathers nothing)")
        d, n_head, p = block.ln_1.normalized_shape[0], block.attn.n_head, comm.world_size
        self.comm, self.heads, self.head_dim = comm, n_head // p, d // n_head
        order = head_order(d, n_head, p)
        fused = copy.deepcopy(block.attn.c_attn)
        with torch.no_grad():
            fused.weight.copy_(fused.weight[order])
            if fused.bias is not None:
                fused.bias.copy_(fused.bias[order])
        self.register_buffer("order", order, persistent=False)
        self.ln_1, self.ln_2 = copy.deepcopy(block.ln_1), copy.deepcopy(block.ln_2)
        self.qkv = ColumnParallelLinear.from_dense(fused, comm)           # (3d/p, d): q, k, v of my heads
        self.proj = RowParallelLinear.from_dense(block.attn.c_proj, comm)  # (d, d/p): my heads' columns
        self.fc = ColumnParallelLinear.from_dense(block.mlp[0], comm)      # (4d/p, d)
        self.act = copy.deepcopy(block.mlp[1])
        self.out = RowParallelLinear.from_dense(block.mlp[2], comm)        # (d, 4d/p)
        self.drop = copy.deepcopy(block.mlp[3])
        self.attn_dropout = block.attn.dropout

    def _column(self, a: torch.Tensor, layer: ColumnParallelLinear) -> torch.Tensor:
        """A column-parallel layer entered through ``f`` (TP) or an all-gather of the sequence (SP)."""
        if self.recompute_gather:
            return GatheredLinear.apply(a, layer.weight, layer.bias, self.comm, 1)
        a = GatherSequence.apply(a, self.comm, 1) if self.sequence_parallel else _CopyToParallel.apply(a, self.comm)
        return F.linear(a, layer.weight, layer.bias)

    def _leave(self, partial: torch.Tensor, bias) -> torch.Tensor:
        """After a row-parallel layer: ``g`` (TP) or a reduce-scatter of the sequence (SP), then the bias."""
        y = ScatterSequence.apply(partial, self.comm, 1) if self.sequence_parallel \
            else _ReduceFromParallel.apply(partial, self.comm)
        return y if bias is None else y + bias

    def attention(self, a: torch.Tensor) -> torch.Tensor:
        qkv = self._column(a, self.qkv)  # (B, T, 3 d/p) = [q | k | v] of my heads, all T positions
        b, t, _ = qkv.shape
        q, k, v = (z.view(b, t, self.heads, self.head_dim).transpose(1, 2) for z in qkv.chunk(3, dim=-1))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                           dropout_p=self.attn_dropout if self.training else 0.0)
        y = y.transpose(1, 2).reshape(b, t, self.heads * self.head_dim)
        return self._leave(F.linear(y, self.proj.weight), self.proj.bias)

    def mlp(self, a: torch.Tensor) -> torch.Tensor:
        hidden = self.act(self._column(a, self.fc))
        return self.drop(self._leave(F.linear(hidden, self.out.weight), self.out.bias))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))

    def replicated_parameters(self) -> list[nn.Parameter]:
        """The parameters every rank holds whole: the LayerNorms and the row-parallel biases."""
        return [p for m in (self.ln_1, self.ln_2) for p in m.parameters()] + \
            [b for b in (self.proj.bias, self.out.bias) if b is not None]

    def reduce_replicated_grads(self) -> None:
        """With sequence parallelism, all-reduce the gradients of :meth:`replicated_parameters`
        (each rank saw only its positions); without it they are already whole: nothing to do."""
        if self.sequence_parallel:
            for p in self.replicated_parameters():
                if p.grad is not None:
                    self.comm.all_reduce(p.grad)

    def dense_gradients(self) -> dict[str, torch.Tensor]:
        """Every gradient reassembled in the dense block's layout, keyed by the dense block's
        parameter names (gathered with plain torch.distributed, outside the comm's count)."""
        grads = {f"{ln}.{n}": p.grad.detach().clone() for ln in ("ln_1", "ln_2")
                 for n, p in getattr(self, ln).named_parameters()}
        for pname, prm in self.qkv.named_parameters():  # back from head order to [q; k; v]
            gathered = _gather(prm.grad, 0)
            fused = torch.empty_like(gathered)
            fused[self.order] = gathered
            grads[f"attn.c_attn.{pname}"] = fused
        for name, layer, kind in (("attn.c_proj", self.proj, "row"), ("mlp.0", self.fc, "col"),
                                  ("mlp.2", self.out, "row")):
            grads[f"{name}.weight"] = _gather(layer.weight.grad, 1 if kind == "row" else 0)
            if layer.bias is not None:
                grads[f"{name}.bias"] = layer.bias.grad.detach().clone() if kind == "row" else _gather(layer.bias.grad, 0)
        return grads


def block_problem(d: int = 32, heads: int = 4, seq: int = 16, batch: int = 2, *, seed: int = 0):
    """The dense block (built from ``seed``, dropout 0), inputs ``x`` and targets ``y`` of shape
    ``(batch, seq, d)``: the same on every rank."""
    for name, v in (("d", d), ("heads", heads), ("seq", seq), ("batch", batch)):
        _args.positive_int(name, v)
    _args.non_negative_int("seed", seed)
    config = GPTConfig(block_size=seq, n_layer=1, n_head=heads, n_embd=d, dropout=0.0)
    torch.manual_seed(seed)  # nn.Linear / LayerNorm initialisation uses the default generator
    block = Block(config)
    with torch.no_grad():  # LayerNorm starts at (1, 0): perturb it so its gradients are tested non-trivially
        for ln in (block.ln_1, block.ln_2):
            ln.weight.add_(0.1 * torch.randn(d))
            ln.bias.add_(0.1 * torch.randn(d))
    g = torch.Generator().manual_seed(seed + 1)
    return block, torch.randn(batch, seq, d, generator=g), torch.randn(batch, seq, d, generator=g)


def _loss(out: torch.Tensor, y: torch.Tensor, total: int) -> torch.Tensor:
    """Mean squared error over the whole (global) output: ranks holding slices of the sequence
    each add their part, and the parts sum to the dense loss."""
    return ((out - y) ** 2).sum() / total


def block_reference(d: int = 32, heads: int = 4, seq: int = 16, batch: int = 2, *, seed: int = 0) -> dict:
    """The dense block in one process: output, parameter and input gradients, and the bytes
    autograd saves for backward (what each parallel worker must reproduce)."""
    block, x, y = block_problem(d, heads, seq, batch, seed=seed)
    x.requires_grad_()
    meter = LiveActivationMeter(block.parameters())
    with meter:
        out = block(x)
    _loss(out, y, y.numel()).backward()
    return {"output": out.detach(), "input_grad": x.grad, "saved_bytes": meter.peak,
            "grads": {n: p.grad for n, p in block.named_parameters()}}


def tp_block_worker(d: int = 32, heads: int = 4, seq: int = 16, batch: int = 2, *,
                    sequence_parallel: bool = False, recompute_gather: bool = False, seed: int = 0) -> dict:
    """One forward/backward of :class:`TensorParallelBlock` (plain TP, or with sequence
    parallelism): the output and input gradient gathered whole, every gradient in the dense
    layout, the bytes autograd saved on this rank, and the bytes of each collective - for the
    activations (``bytes``, ``wire_bytes``) and for the replicated gradients' all-reduce
    (``grad_sync_bytes``, sequence parallelism only)."""
    require_group("tp_block_worker")
    _args.boolean("sequence_parallel", sequence_parallel)
    _args.boolean("recompute_gather", recompute_gather)
    block, x, y = block_problem(d, heads, seq, batch, seed=seed)
    dev, comm = rank_device(), CountingComm(device=rank_device())
    p, rank = comm.world_size, comm.rank
    if sequence_parallel:  # this rank's positions
        x, y = shard(x, 1, rank, p), shard(y, 1, rank, p)
    tp = TensorParallelBlock(block.to(dev), comm, sequence_parallel=sequence_parallel,
                             recompute_gather=recompute_gather)
    x, y = x.to(dev).requires_grad_(), y.to(dev)
    meter = LiveActivationMeter(tp.parameters())
    with meter:
        out = tp(x)
    forward_calls = [op for op, _ in comm.log]
    _loss(out, y, batch * seq * d).backward()
    activation_log = list(comm.log)
    tp.reduce_replicated_grads()
    used = sorted({op for op, _ in activation_log})
    whole = (lambda t: _gather(t, 1)) if sequence_parallel else (lambda t: t.detach().clone())
    return {"rank": rank, "sequence_parallel": sequence_parallel, "recompute_gather": recompute_gather,
            "output": whole(out).cpu(), "input_grad": whole(x.grad).cpu(),
            "grads": {n: g.cpu() for n, g in tp.dense_gradients().items()},
            "saved_bytes": meter.peak, "forward_calls": forward_calls,
            "calls": [op for op, _ in activation_log], "bytes": {op: comm.bytes(op) for op in used},
            "wire_bytes": {op: comm.wire_bytes(op) for op in used},
            "grad_sync_bytes": sum(n for _, n in comm.log[len(activation_log):]),
            "local_shapes": {n: tuple(t.shape) for n, t in tp.named_parameters()}}
