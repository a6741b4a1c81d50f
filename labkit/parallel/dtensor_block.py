"""The transformer block split by PyTorch's DTensor, beside labkit's own (lesson 04).

:mod:`labkit.parallel.tp_block` writes Megatron's tensor and sequence parallelism out by hand;
here the same block goes through ``torch.distributed.tensor.parallel.parallelize_module``:

* tensor parallelism: ``ColwiseParallel`` for q, k, v and the MLP's ``Linear(d, 4d)``,
  ``RowwiseParallel`` for the output projection and ``Linear(4d, d)``;
* with ``sequence_parallel=True``, torchtitan's plan: ``SequenceParallel`` on the LayerNorms
  (they run on ``T/p`` positions), ``PrepareModuleInput`` turning the attention's and the MLP's
  sequence-sharded input into a replicated one (an all-gather), and ``RowwiseParallel(
  output_layouts=Shard(1))`` ending each half with a reduce-scatter.

``CommDebugMode`` counts the collectives DTensor issues; :class:`_CommBytesMode` adds the bytes
handed to each, the convention :class:`labkit.parallel.comm.CountingComm` uses, so the two
implementations can be set side by side (:func:`block_comparison_worker`).
"""

from __future__ import annotations

import copy
import warnings

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import DTensor, Replicate, Shard
from torch.distributed.tensor.debug import CommDebugMode
from torch.distributed.tensor.parallel import (
    ColwiseParallel,
    PrepareModuleInput,
    RowwiseParallel,
    SequenceParallel,
    parallelize_module,
)

from labkit import _args
from labkit.lm.model import Block
from labkit.parallel.comm import require_group
from labkit.parallel.launch import rank_device
from labkit.parallel.tensor_parallel import shard
from labkit.parallel.tp_block import _gather, _loss, block_problem, tp_block_worker


class _Attention(nn.Module):
    """Causal self-attention with separate q, k, v Linears and the head count read from their
    width (``view(b, t, -1, head_dim)``): the form a DTensor plan can shard by heads (a
    ColwiseParallel cut of the fused ``[q; k; v]`` rows would hand rank 0 all of q)."""

    def __init__(self, block: Block):
        super().__init__()
        d, fused = block.ln_1.normalized_shape[0], block.attn.c_attn
        self.head_dim, self.dropout = d // block.attn.n_head, block.attn.dropout
        for i, name in enumerate("qkv"):
            part = nn.Linear(d, d, bias=fused.bias is not None)
            with torch.no_grad():
                part.weight.copy_(fused.weight[i * d:(i + 1) * d])
                if fused.bias is not None:
                    part.bias.copy_(fused.bias[i * d:(i + 1) * d])
            setattr(self, name, part)
        self.proj = copy.deepcopy(block.attn.c_proj)

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        b, t = a.shape[:2]
        q, k, v = (lin(a).view(b, t, -1, self.head_dim).transpose(1, 2) for lin in (self.q, self.k, self.v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0)
        return self.proj(y.transpose(1, 2).reshape(b, t, -1))


class _UnfusedBlock(nn.Module):
    """The dense block, with :class:`_Attention` and the MLP as ``fc -> act -> out -> drop``."""

    def __init__(self, block: Block):
        super().__init__()
        self.ln_1, self.ln_2 = copy.deepcopy(block.ln_1), copy.deepcopy(block.ln_2)
        self.attn = _Attention(block)
        self.mlp = nn.Sequential()
        for name, m in zip(("fc", "act", "out", "drop"), block.mlp):
            self.mlp.add_module(name, copy.deepcopy(m))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


def _plan(sequence_parallel: bool) -> dict:
    if not sequence_parallel:
        return {"attn.q": ColwiseParallel(), "attn.k": ColwiseParallel(), "attn.v": ColwiseParallel(),
                "attn.proj": RowwiseParallel(), "mlp.fc": ColwiseParallel(), "mlp.out": RowwiseParallel()}
    gather = {"input_layouts": (Shard(1),), "desired_input_layouts": (Replicate(),)}
    return {"ln_1": SequenceParallel(), "attn": PrepareModuleInput(**gather),
            "attn.q": ColwiseParallel(), "attn.k": ColwiseParallel(), "attn.v": ColwiseParallel(),
            "attn.proj": RowwiseParallel(output_layouts=Shard(1)),
            "ln_2": SequenceParallel(), "mlp": PrepareModuleInput(**gather),
            "mlp.fc": ColwiseParallel(), "mlp.out": RowwiseParallel(output_layouts=Shard(1))}


class _CommBytesMode(CommDebugMode):
    """``CommDebugMode`` (which counts collectives) that also logs ``(op, backward?, bytes)`` of
    the tensor handed to each one - the same convention as ``CountingComm``."""

    def __init__(self):
        super().__init__()
        self.records: list[tuple[str, bool, int]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        before = self.get_total_counts()
        out = super().__torch_dispatch__(func, types, args, kwargs)
        if self.get_total_counts() > before:
            first = args[0][0] if isinstance(args[0], (list, tuple)) else args[0]
            self.records.append((str(func._overloadpacket).split(".")[-1], self.advanced_module_tracker.is_bw,
                                 first.numel() * first.element_size()))
        return out


def dtensor_block_worker(d: int = 32, heads: int = 4, seq: int = 16, batch: int = 2, *,
                         sequence_parallel: bool = False, seed: int = 0) -> dict:
    """The dense block through ``parallelize_module`` (the plan in the module docstring): the
    output and input gradient gathered whole, every gradient in the dense layout, and each
    collective as ``(op, backward?, bytes)``."""
    require_group("dtensor_block_worker")
    _args.boolean("sequence_parallel", sequence_parallel)
    block, x, y = block_problem(d, heads, seq, batch, seed=seed)
    p, rank = dist.get_world_size(), dist.get_rank()
    if heads % p:
        raise ValueError(f"heads={heads} must be divisible by the world size {p}")
    if sequence_parallel:
        x, y = shard(x, 1, rank, p), shard(y, 1, rank, p)
    dev = rank_device()
    tp = parallelize_module(_UnfusedBlock(block).to(dev), init_device_mesh(dev.type, (p,)), _plan(sequence_parallel))
    x, y = x.to(dev).requires_grad_(), y.to(dev)
    counter = _CommBytesMode()
    with counter, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Full backward hook is firing")  # CommDebugMode's hooks; expected
        out = tp(x)
        out = out.to_local() if isinstance(out, DTensor) else out
        _loss(out, y, batch * seq * d).backward()

    def whole(prm):
        return (prm.grad.full_tensor() if isinstance(prm.grad, DTensor) else prm.grad).detach().cpu()

    grads = {f"{ln}.{n}": whole(prm) for ln in ("ln_1", "ln_2") for n, prm in getattr(tp, ln).named_parameters()}
    attn = tp.attn
    grads["attn.c_attn.weight"] = torch.cat([whole(getattr(attn, n).weight) for n in "qkv"])
    if attn.q.bias is not None:
        grads["attn.c_attn.bias"] = torch.cat([whole(getattr(attn, n).bias) for n in "qkv"])
    for dense, layer in (("attn.c_proj", attn.proj), ("mlp.0", tp.mlp.fc), ("mlp.2", tp.mlp.out)):
        grads.update({f"{dense}.{n}": whole(prm) for n, prm in layer.named_parameters()})
    whole_seq = (lambda t: _gather(t, 1)) if sequence_parallel else (lambda t: t.detach().clone())
    return {"rank": rank, "output": whole_seq(out).cpu(), "input_grad": whole_seq(x.grad).cpu(), "grads": grads,
            "comms": counter.records,
            "placements": {n: str(prm.placements) for n, prm in tp.named_parameters() if isinstance(prm, DTensor)},
            "grad_placements": {n: str(prm.grad.placements) for n, prm in tp.named_parameters()
                                if isinstance(prm.grad, DTensor)}}


def block_comparison_worker(d: int = 32, heads: int = 4, seq: int = 16, batch: int = 2, *, seed: int = 0) -> dict:
    """One launch for lesson 04: the block under labkit's TP, TP + sequence parallelism, SP that
    gathers again in backward, and DTensor's plans for TP and TP + SP."""
    return {"tp": tp_block_worker(d, heads, seq, batch, seed=seed),
            "sp": tp_block_worker(d, heads, seq, batch, sequence_parallel=True, seed=seed),
            "sp_regather": tp_block_worker(d, heads, seq, batch, sequence_parallel=True, recompute_gather=True,
                                           seed=seed),
            "dtensor": dtensor_block_worker(d, heads, seq, batch, seed=seed),
            "dtensor_sp": dtensor_block_worker(d, heads, seq, batch, sequence_parallel=True, seed=seed)}
