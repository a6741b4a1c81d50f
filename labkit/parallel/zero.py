"""Memory per rank under data parallelism, and what ZeRO / FSDP shard (lesson ``03_data_parallelism``).

Plain data parallelism replicates everything but the batch: each of ``p`` ranks holds all
``P`` parameters, ``P`` gradients and the optimizer state (Adam: 2 x ``P``), and the
activations of its own ``B/p`` examples. ZeRO (Rajbhandari et al., 2020) removes the copies
in stages, each rank keeping only a 1/p shard of

* stage 1 - the optimizer state (each rank updates only its shard of the parameters);
* stage 2 - and the gradients (a reduce-scatter replaces the all-reduce);
* stage 3 - and the parameters themselves: this is FSDP. Layers are all-gathered just before
  they run and freed afterwards, so a rank briefly holds one layer's full weights.

Activations are not sharded by any stage (that takes activation checkpointing, or model
parallelism: lesson 04). :func:`zero_memory` turns one measured step
(:func:`labkit.efficiency.memory.training_memory`) into that table; :func:`fsdp_train` runs PyTorch's
FSDP2 (``torch.distributed.fsdp.fully_shard``, which runs on CPUs with gloo) and measures
what each rank really holds.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import nn

from labkit import _args
from labkit.data import load_arrays
from labkit.metrics import tensor_bytes
from labkit.parallel.data_parallel import build_model, global_batch, shard_batch
from labkit.parallel.problem import check_training

PARTS = ("parameters", "gradients", "optimizer_state", "activations")
STAGES = {  # stage -> the parts it shards
    "DDP (replicated)": (),
    "ZeRO-1 (optimizer state)": ("optimizer_state",),
    "ZeRO-2 (+ gradients)": ("optimizer_state", "gradients"),
    "ZeRO-3 / FSDP (+ parameters)": ("optimizer_state", "gradients", "parameters"),
}


def zero_memory(memory: dict, world_size: int) -> list[dict]:
    """Bytes per rank of each part under DDP and ZeRO stages 1-3 on ``world_size`` ranks.

    ``memory`` holds the bytes of one replica's ``parameters``, ``gradients``,
    ``optimizer_state`` and ``activations`` (those of the rank's local batch), e.g. from
    :func:`labkit.efficiency.memory.training_memory`. A sharded part costs ``bytes / p`` per rank.
    """
    _args.mapping("memory", memory, what="a dict of bytes per part")
    world_size = _args.positive_int("world_size", world_size)
    missing = [k for k in PARTS if k not in memory]
    if missing:
        raise ValueError(f"memory lacks {missing}: expected the keys {PARTS}")
    for part in PARTS:
        _args.non_negative_float(f"memory[{part!r}]", memory[part])
    rows = []
    for stage, sharded in STAGES.items():
        row = {"stage": stage}
        for part in PARTS:
            row[part] = memory[part] / world_size if part in sharded else float(memory[part])
        row["total"] = sum(row[p] for p in PARTS)
        rows.append(row)
    return rows


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if hasattr(t, "to_local") else t


def shard_model(model: nn.Module, *, mesh=None) -> nn.Module:
    """FSDP2: shard each Linear layer, then the root, over all ranks (``fully_shard``, in place)."""
    _args.module("model", model)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = mesh or init_device_mesh("cpu", (dist.get_world_size(),))
    for layer in model.modules():
        if isinstance(layer, nn.Linear):
            fully_shard(layer, mesh=mesh)
    return fully_shard(model, mesh=mesh)


def fsdp_train(*, steps: int = 5, batch_size: int = 64, lr: float = 0.5, seed: int = 0,
               hidden: Sequence[int] = (64, 32), data: tuple[torch.Tensor, torch.Tensor] | None = None) -> dict:
    """Worker: train with FSDP2 the same way :func:`labkit.parallel.data_parallel.dp_equivalence`
    trains (SGD, each rank a shard of each batch), then measure memory with Adam.

    Returns ``params`` (the full parameters, all-gathered: they should equal
    :func:`labkit.parallel.data_parallel.train_single_process`'s), ``losses``, and the bytes this
    rank holds after one Adam step: ``local`` (its shards) and ``full`` (a whole replica).
    """
    check_training(steps=steps, lr=lr, seed=seed, batch_size=batch_size)
    rank, p = dist.get_rank(), dist.get_world_size()
    data = data if data is not None else load_arrays("digits")
    model = shard_model(build_model(seed=seed, hidden=hidden))
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    losses = []
    for s in range(steps):
        x, y = global_batch(s, batch_size, data=data)
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(shard_batch(x, rank, p)), shard_batch(y, rank, p))
        loss.backward()  # FSDP reduce-scatters the gradients: each rank gets its shard's average
        opt.step()
        losses.append(loss.detach())
    losses = torch.stack(losses)
    dist.all_reduce(losses)
    losses = (losses / p).tolist()
    params = torch.cat([q.full_tensor().reshape(-1) for q in model.parameters()]).detach()

    model = shard_model(build_model(seed=seed, hidden=hidden))
    adam = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = global_batch(0, batch_size, data=data)
    nn.functional.cross_entropy(model(shard_batch(x, rank, p)), shard_batch(y, rank, p)).backward()
    adam.step()
    state = [v for st in adam.state.values() for v in st.values() if isinstance(v, torch.Tensor) and v.dim() > 0]
    local = {"parameters": tensor_bytes(_local(q) for q in model.parameters()),
             "gradients": tensor_bytes(_local(q.grad) for q in model.parameters()),
             "optimizer_state": tensor_bytes(_local(v) for v in state)}
    full_params = sum(q.numel() * q.element_size() for q in model.parameters())  # DTensor: global shape
    full = {"parameters": full_params, "gradients": full_params, "optimizer_state": 2 * full_params}
    return {"params": params, "losses": losses, "local": local, "full": full, "rank": rank}
