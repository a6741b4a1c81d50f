"""A 2-D device mesh: FSDP2 over one dimension, tensor parallelism over the other (lesson ``04_model_parallelism``).

Four ranks form a ``2 x 2`` :class:`~torch.distributed.device_mesh.DeviceMesh` with dimensions
``("dp", "tp")``: ranks ``{0, 1}`` and ``{2, 3}`` are the two tensor-parallel groups (rows),
``{0, 2}`` and ``{1, 3}`` the two data-parallel groups (columns). The model is the language
model's MLP sub-block (``Linear(d, 4d) -> GELU -> Linear(4d, d)``, :class:`labkit.lm.model.Block`):

1. ``parallelize_module`` over ``mesh["tp"]`` cuts the first Linear by output columns
   (``ColwiseParallel``) and the second by input rows (``RowwiseParallel``): Megatron's MLP,
   one all-reduce of the output per forward;
2. ``fully_shard`` over ``mesh["dp"]`` then shards each TP shard again, across the DP group
   (ZeRO-3: parameters all-gathered before use, gradients reduce-scattered after backward);
3. each DP group reads its own half of the global batch; the TP ranks of a group read the same half.

So each rank holds about ``1 / (dp x tp)`` of the parameters, gradients and Adam state - the
ZeRO-3 row of :func:`labkit.parallel.zero.zero_memory` for ``world_size = dp x tp`` - except
what TP replicates (the second Linear's bias, ``d`` numbers, is sharded by DP only).
:func:`mesh_train` (a worker: 4 ranks) must end where :func:`mesh_reference` (one process,
the whole batch) ends.
"""

from __future__ import annotations

import logging
import warnings
from contextlib import contextmanager

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

from labkit import _args
from labkit.lm.model import Block, get_config
from labkit.metrics import tensor_bytes
from labkit.parallel.data_parallel import shard_batch


def tp_plan() -> dict:
    """Megatron's MLP as a DTensor plan: ``mlp[0]`` (d -> 4d) by columns, ``mlp[2]`` (4d -> d) by rows."""
    return {"0": ColwiseParallel(), "2": RowwiseParallel()}


def build_mlp(config_name: str = "tiny", *, seed: int = 0) -> nn.Sequential:
    """The MLP sub-block of the LM's first :class:`~labkit.lm.model.Block`, initialised from ``seed``."""
    config = get_config(config_name)
    torch.manual_seed(_args.non_negative_int("seed", seed))
    return Block(config).mlp


def mesh_problem(config_name: str = "tiny", *, batch: int = 8, seq: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A regression problem for the block: inputs ``x`` and targets ``y``, both ``(batch, seq, d)``."""
    d = get_config(config_name).n_embd
    batch, seq = _args.positive_int("batch", batch), _args.positive_int("seq", seq)
    g = torch.Generator().manual_seed(_args.non_negative_int("seed", seed) + 1)
    return torch.randn(batch, seq, d, generator=g), torch.randn(batch, seq, d, generator=g)


@contextmanager
def _quiet_expected_notices():
    """Silence two notices a run on this mesh always prints (one per rank, into a lesson's output):
    FSDP2's warning that the MLP returns a view (nothing here modifies it in place) and DTensor's
    note that gathering the report's ``_StridedShard`` parameters takes two all-gathers."""
    redistribute = logging.getLogger("torch.distributed.tensor._redistribute")
    level = redistribute.level
    redistribute.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="FSDP2-wrapped module .* returned a view tensor")
            yield
    finally:
        redistribute.setLevel(level)


def _check(config_name, steps, batch, seq, lr, seed):
    get_config(config_name)
    _args.positive_int("steps", steps)
    _args.positive_int("batch", batch)
    _args.positive_int("seq", seq)
    _args.positive_float("lr", lr)
    _args.non_negative_int("seed", seed)


def mesh_reference(config_name: str = "tiny", *, steps: int = 3, batch: int = 8, seq: int = 4, lr: float = 1e-3,
                   seed: int = 0) -> dict:
    """One process, the whole batch, Adam: ``params`` (name -> tensor) and ``losses``."""
    _check(config_name, steps, batch, seq, lr, seed)
    mlp = build_mlp(config_name, seed=seed)
    x, y = mesh_problem(config_name, batch=batch, seq=seq, seed=seed)
    opt = torch.optim.Adam(mlp.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = nn.functional.mse_loss(mlp(x), y)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return {"params": {k: v.detach().clone() for k, v in mlp.named_parameters()}, "losses": losses}


def mesh_train(config_name: str = "tiny", *, steps: int = 3, batch: int = 8, seq: int = 4, lr: float = 1e-3,
               seed: int = 0, tp: int = 2) -> dict:
    """Worker (``dp x tp`` ranks, ``dp = world_size / tp``): TP over ``mesh["tp"]``, FSDP2 over
    ``mesh["dp"]``, Adam, each DP group on its share of the batch.

    Returns ``params`` (full tensors, gathered from both mesh dimensions), ``losses`` (the
    batch mean per step), this rank's ``coords`` on the mesh (dp row, tp column), each
    parameter's DTensor ``placements``, and ``local`` / ``full``: the bytes of parameters,
    gradients and Adam state this rank holds, and those of one whole replica.
    """
    _check(config_name, steps, batch, seq, lr, seed)
    tp = _args.positive_int("tp", tp)
    world = dist.get_world_size()
    if world % tp or batch % (world // tp):
        raise ValueError(f"tp ({tp}) must divide the {world} ranks, and dp = {world // max(tp, 1)} the batch ({batch})")
    dp = world // tp
    mesh = init_device_mesh("cpu", (dp, tp), mesh_dim_names=("dp", "tp"))
    mlp = build_mlp(config_name, seed=seed)
    parallelize_module(mlp, mesh["tp"], tp_plan())
    fully_shard(mlp, mesh=mesh["dp"])
    x, y = mesh_problem(config_name, batch=batch, seq=seq, seed=seed)
    row = mesh["dp"].get_local_rank()
    x, y = shard_batch(x, row, dp), shard_batch(y, row, dp)
    opt = torch.optim.Adam(mlp.parameters(), lr=lr)
    with _quiet_expected_notices():
        return _train_and_report(mlp, opt, x, y, steps, world, row, mesh)


def _train_and_report(mlp, opt, x, y, steps, world, row, mesh) -> dict:
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = nn.functional.mse_loss(mlp(x), y)  # the same on both TP ranks of a DP group
        loss.backward()  # TP: all-reduce of input grads; FSDP: reduce-scatter of weight grads over dp
        opt.step()
        losses.append(loss.detach())
    losses = torch.stack(losses)
    dist.all_reduce(losses)
    state = [v for st in opt.state.values() for v in st.values() if isinstance(v, torch.Tensor) and v.dim() > 0]
    local = {"parameters": tensor_bytes(q.to_local() for q in mlp.parameters()),
             "gradients": tensor_bytes(q.grad.to_local() for q in mlp.parameters()),
             "optimizer_state": tensor_bytes(v.to_local() for v in state)}
    full_params = sum(q.numel() * q.element_size() for q in mlp.parameters())  # DTensor: global shape
    return {"params": {k: v.full_tensor().detach() for k, v in mlp.named_parameters()},
            "losses": (losses / world).tolist(), "coords": (row, mesh["tp"].get_local_rank()),
            "placements": {k: str(v.placements) for k, v in mlp.named_parameters()},
            "local": local, "full": {"parameters": full_params, "gradients": full_params,
                                      "optimizer_state": 2 * full_params}}
