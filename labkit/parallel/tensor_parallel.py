"""Tensor parallelism from first principles: Megatron's column- and row-parallel Linear (lesson 04).

A Linear ``y = x W^T + b`` with ``W`` of shape ``(out, in)`` can be cut two ways over ``p`` ranks:

* **column-parallel**: rank ``r`` holds rows ``r`` of ``W`` (``out/p`` output features) and
  computes its slice of ``y`` from the whole ``x``. No communication in forward; in backward
  each rank holds only part of ``dL/dx = sum_r dL/dy_r W_r``, so the input gradient is
  all-reduced.
* **row-parallel**: rank ``r`` holds columns ``r`` of ``W`` (``in/p`` input features), takes its
  slice of ``x`` and computes a partial ``y_r = x_r W_r^T``; ``y = sum_r y_r + b`` is one
  all-reduce. In backward, each rank's ``dL/dx_r`` is local.

Column then row (Megatron's MLP) needs no communication between the two: the column layer's
output slices are exactly the row layer's input slices (the activation is element-wise). The
two operators are conjugate autograd functions: ``f`` (identity forward, all-reduce backward)
in front of the column layer and ``g`` (all-reduce forward, identity backward) after the row
layer - one all-reduce each way per MLP block.

What it does *not* shard: the activations at the block boundaries - each pair's input, the
residual stream, the normalisations - are full ``B x d`` tensors on every rank. Sequence
parallelism splits those along the sequence dimension (the all-reduce becomes a reduce-scatter
and an all-gather): :mod:`labkit.parallel.sequence_parallel`, on the transformer block of
:mod:`labkit.parallel.tp_block`.

:func:`tp_worker` checks this against the dense model; :func:`dtensor_worker` does the same with
PyTorch's DTensor (``parallelize_module`` with ``ColwiseParallel`` / ``RowwiseParallel``).
"""

from __future__ import annotations

import copy
import math
import warnings

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor.debug import CommDebugMode
from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

from labkit import _args
from labkit.models import count_parameters
from labkit.parallel.comm import CountingComm, require_group
from labkit.parallel.launch import rank_device
from labkit.parallel.problem import LiveActivationMeter, make_problem


class _CopyToParallel(torch.autograd.Function):
    """``f``: identity forward; all-reduce of the input gradient backward."""

    @staticmethod
    def forward(ctx, x, comm):
        ctx.comm = comm
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return ctx.comm.all_reduce(grad.clone()), None


class _ReduceFromParallel(torch.autograd.Function):
    """``g``: all-reduce (sum the partial outputs) forward; identity backward."""

    @staticmethod
    def forward(ctx, x, comm):
        return comm.all_reduce(x.clone())

    @staticmethod
    def backward(ctx, grad):
        return grad, None


class _GatherFromParallel(torch.autograd.Function):
    """Concatenate every rank's slice of the last dimension; backward keeps this rank's slice."""

    @staticmethod
    def forward(ctx, x, comm):
        ctx.comm = comm
        return torch.cat(comm.all_gather(x.contiguous()), dim=-1)

    @staticmethod
    def backward(ctx, grad):
        return grad.chunk(ctx.comm.world_size, dim=-1)[ctx.comm.rank].contiguous(), None


def shard(tensor: torch.Tensor, dim: int, rank: int, world_size: int) -> torch.Tensor:
    """Rank ``rank``'s equal slice of ``tensor`` along ``dim`` (a copy)."""
    _args.tensor("tensor", tensor)
    dim = _args.integer("dim", dim, minimum=-max(tensor.dim(), 1), maximum=max(tensor.dim(), 1) - 1)
    world_size = _args.positive_int("world_size", world_size)
    rank = _args.non_negative_int("rank", rank)
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in 0..{world_size - 1}, got {rank}")
    if tensor.shape[dim] % world_size:
        raise ValueError(f"dimension {dim} of size {tensor.shape[dim]} does not split into {world_size} equal shards")
    return tensor.chunk(world_size, dim=dim)[rank].clone()


def _dense_init(in_features, out_features, bias, generator, device, dtype):
    """nn.Linear's default initialisation, drawn from ``generator`` (identical on every rank)."""
    bound = 1 / math.sqrt(in_features)
    w = torch.empty(out_features, in_features, device=device, dtype=dtype).uniform_(-bound, bound, generator=generator)
    b = torch.empty(out_features, device=device, dtype=dtype).uniform_(-bound, bound, generator=generator) if bias else None
    return w, b


def _check_layer(in_features, out_features, comm, bias) -> tuple[int, int]:
    """The checks both parallel Linears share; returns the two sizes as ints."""
    in_features = _args.positive_int("in_features", in_features)
    out_features = _args.positive_int("out_features", out_features)
    _args.instance("comm", comm, CountingComm, "a labkit.parallel.comm.CountingComm")
    _args.boolean("bias", bias)
    return in_features, out_features


class ColumnParallelLinear(nn.Module):
    """``out_features / p`` of a Linear's outputs on each rank (weight shard ``(out/p, in)``)."""

    def __init__(self, in_features: int, out_features: int, *, comm: CountingComm, bias: bool = True,
                 gather_output: bool = False, device=None, dtype: torch.dtype | None = None,
                 generator: torch.Generator | None = None):
        super().__init__()
        in_features, out_features = _check_layer(in_features, out_features, comm, bias)
        _args.boolean("gather_output", gather_output)
        if out_features % comm.world_size:
            raise ValueError(f"out_features={out_features} must be divisible by the world size {comm.world_size}")
        self.comm, self.gather_output = comm, gather_output
        self.in_features, self.out_features = in_features, out_features
        w, b = _dense_init(in_features, out_features, bias, generator, device, dtype)
        self.weight = nn.Parameter(shard(w, 0, comm.rank, comm.world_size))
        self.bias = nn.Parameter(shard(b, 0, comm.rank, comm.world_size)) if bias else None

    @classmethod
    def from_dense(cls, linear: nn.Linear, comm: CountingComm, *, gather_output: bool = False):
        """This rank's shard of an existing dense ``nn.Linear``, on its device and in its dtype."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear must be an nn.Linear, got {type(linear).__name__}")
        layer = cls(linear.in_features, linear.out_features, comm=comm, bias=linear.bias is not None,
                    gather_output=gather_output, device=linear.weight.device, dtype=linear.weight.dtype)
        with torch.no_grad():
            layer.weight.copy_(shard(linear.weight, 0, comm.rank, comm.world_size))
            if linear.bias is not None:
                layer.bias.copy_(shard(linear.bias, 0, comm.rank, comm.world_size))
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(_CopyToParallel.apply(x, self.comm), self.weight, self.bias)
        return _GatherFromParallel.apply(y, self.comm) if self.gather_output else y


class RowParallelLinear(nn.Module):
    """``in_features / p`` of a Linear's inputs on each rank (weight shard ``(out, in/p)``); the
    partial outputs are summed by one all-reduce, then the (unsharded) bias is added."""

    def __init__(self, in_features: int, out_features: int, *, comm: CountingComm, bias: bool = True,
                 device=None, dtype: torch.dtype | None = None, generator: torch.Generator | None = None):
        super().__init__()
        in_features, out_features = _check_layer(in_features, out_features, comm, bias)
        if in_features % comm.world_size:
            raise ValueError(f"in_features={in_features} must be divisible by the world size {comm.world_size}")
        self.comm = comm
        self.in_features, self.out_features = in_features, out_features
        w, b = _dense_init(in_features, out_features, bias, generator, device, dtype)
        self.weight = nn.Parameter(shard(w, 1, comm.rank, comm.world_size))
        self.bias = nn.Parameter(b) if bias else None

    @classmethod
    def from_dense(cls, linear: nn.Linear, comm: CountingComm):
        """This rank's shard of an existing dense ``nn.Linear``, on its device and in its dtype."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear must be an nn.Linear, got {type(linear).__name__}")
        layer = cls(linear.in_features, linear.out_features, comm=comm, bias=linear.bias is not None,
                    device=linear.weight.device, dtype=linear.weight.dtype)
        with torch.no_grad():
            layer.weight.copy_(shard(linear.weight, 1, comm.rank, comm.world_size))
            if linear.bias is not None:
                layer.bias.copy_(linear.bias)
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` is this rank's slice of the input features (a column-parallel layer's output)."""
        y = _ReduceFromParallel.apply(F.linear(x, self.weight), self.comm)
        return y + self.bias if self.bias is not None else y


def parallelize_mlp(model: nn.Module, comm: CountingComm, *, layout: str = "megatron") -> nn.Module:
    """A copy of ``model`` with its Linears split over the ranks.

    ``layout='megatron'``: column-, row-, column-, row-parallel (pairs; one all-reduce forward
    and one backward per pair; needs an even number of Linears). ``layout='gather'``: the naive
    way, every Linear column-parallel and its output gathered whole before the next layer (an
    all-gather forward and an all-reduce backward per layer)."""
    _args.module("model", model)
    _args.instance("comm", comm, CountingComm, "a labkit.parallel.comm.CountingComm")
    _args.choice("layout", layout, ("megatron", "gather"))
    model = copy.deepcopy(model)
    linears = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if layout == "megatron" and (not linears or len(linears) % 2):
        raise ValueError(f"model must have an even number of nn.Linear layers (column/row pairs), found {len(linears)}")
    for k, (name, layer) in enumerate(linears):
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        if layout == "gather":
            new = ColumnParallelLinear.from_dense(layer, comm, gather_output=True)
        elif k % 2 == 0:
            new = ColumnParallelLinear.from_dense(layer, comm)
        else:
            new = RowParallelLinear.from_dense(layer, comm)
        setattr(parent, child, new)
    return model


def _full_grads(model: nn.Module) -> dict[str, torch.Tensor]:
    """Each parameter's gradient reassembled into the dense layout (gathered outside the count)."""
    world, grads = dist.get_world_size(), {}
    for name, module in model.named_modules():
        if isinstance(module, (ColumnParallelLinear, RowParallelLinear)):
            dim = 0 if isinstance(module, ColumnParallelLinear) else 1
            for pname, p in module.named_parameters():
                g = p.grad.contiguous()
                if pname == "weight" or dim == 0:
                    parts = [torch.empty_like(g) for _ in range(world)]
                    dist.all_gather(parts, g)
                    g = torch.cat(parts, dim=dim if pname == "weight" else 0)
                grads[f"{name}.{pname}"] = g
    return grads


def tp_worker(width: int = 64, depth: int = 2, batch: int = 16, *, layout: str = "megatron", seed: int = 0) -> dict:
    """One forward/backward of the lesson's MLP split by :func:`parallelize_mlp`: outputs, full
    gradients, this rank's shard shapes and parameter count, the bytes and calls of each
    collective, and the saved activation bytes."""
    require_group("tp_worker")
    dev = rank_device()
    model, x, y = make_problem(width, depth, batch, seed=seed, device=dev)
    comm = CountingComm(device=dev)
    tp = parallelize_mlp(model.layers, comm, layout=layout)
    meter = LiveActivationMeter(tp.parameters())
    with meter:
        out = tp(x)
        loss = F.mse_loss(out, y)
    loss.backward()
    report = {"rank": comm.rank, "output": out.detach().cpu(), "all_reduce_bytes": comm.bytes("all_reduce"),
              "all_reduce_calls": sum(op == "all_reduce" for op, _ in comm.log),
              "all_gather_bytes": comm.bytes("all_gather"), "wire_bytes": comm.wire_bytes(),
              "saved_peak_bytes": meter.peak, "n_params": count_parameters(tp),
              "shapes": {n: tuple(p.shape) for n, p in tp.named_parameters()}}
    report["grads"] = {n: g.cpu() for n, g in _full_grads(tp).items()}
    return report


def dtensor_worker(width: int = 64, depth: int = 2, batch: int = 16, *, seed: int = 0) -> dict:
    """The same model through DTensor: ``parallelize_module`` on a CPU ``DeviceMesh`` with
    ``ColwiseParallel`` / ``RowwiseParallel`` alternating, and ``CommDebugMode`` counting the
    collectives it issues."""
    require_group("dtensor_worker")
    dev = rank_device()
    model, x, y = make_problem(width, depth, batch, seed=seed, device=dev)
    mesh = init_device_mesh(dev.type, (dist.get_world_size(),))
    layers = model.layers
    names = [n for n, m in layers.named_children() if isinstance(m, nn.Linear)]
    plan = {n: ColwiseParallel() if k % 2 == 0 else RowwiseParallel() for k, n in enumerate(names)}
    tp = parallelize_module(layers, mesh, plan)
    counter = CommDebugMode()
    with counter, warnings.catch_warnings():
        # CommDebugMode's module hooks warn that the input (data) needs no gradient: expected here.
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        out = tp(x)
        forward_counts = {str(k): v for k, v in counter.get_comm_counts().items()}
        F.mse_loss(out, y).backward()
    total_counts = {str(k): v for k, v in counter.get_comm_counts().items()}
    return {"rank": dist.get_rank(), "output": torch.as_tensor(out.detach()).cpu().clone(),
            "grads": {n: p.grad.full_tensor().cpu() for n, p in tp.named_parameters()},
            "local_shapes": {n: tuple(p.to_local().shape) for n, p in tp.named_parameters()},
            "placements": {n: str(p.placements) for n, p in tp.named_parameters()},
            "forward_comms": forward_counts, "total_comms": total_counts}


def equivalence_worker(width: int = 64, depth: int = 4, batch: int = 16, *, seed: int = 0) -> dict:
    """One launch for lesson 04: Megatron pairs, the naive gather-every-layer layout, and DTensor."""
    return {"megatron": tp_worker(width, depth, batch, seed=seed),
            "gather": tp_worker(width, depth, batch, layout="gather", seed=seed),
            "dtensor": dtensor_worker(width, depth, batch, seed=seed)}
