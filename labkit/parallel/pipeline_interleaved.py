"""Interleaved 1F1B on real processes, through ``torch.distributed.pipelining`` (lesson ``04_model_parallelism``).

The model is cut into ``p x v`` chunks and rank ``s`` holds chunks ``s, s+p, .., s+(v-1)p``
(virtual stages, :func:`labkit.parallel.schedule.interleaved`): one ``PipelineStage`` per chunk,
all of a rank's stages handed to ``ScheduleInterleaved1F1B``. :func:`torch_interleaved_worker`
returns this rank's gradients (which must equal :func:`labkit.parallel.problem.reference_run`'s:
the schedule changes when things run, not what is computed) and the order PyTorch's schedule ran
its ops in, as ``(kind, micro, chunk)``: it should be :func:`labkit.parallel.schedule.interleaved_order`'s.
"""

from __future__ import annotations

import torch.distributed as dist
import torch.nn.functional as F
from torch.distributed.pipelining import PipelineStage, ScheduleInterleaved1F1B

from labkit import _args
from labkit.parallel.comm import require_group
from labkit.parallel.launch import rank_device
from labkit.parallel.pipeline import split_model
from labkit.parallel.problem import make_problem


def schedule_ops(actions, stages: int) -> list[tuple[str, int, int]]:
    """A ``torch.distributed.pipelining`` rank's action list (``schedule.pipeline_order[rank]``)
    as ``(kind, micro, chunk)`` ops: idle steps (None) dropped, stage index ``k`` -> chunk ``k // p``."""
    p = _args.positive_int("stages", stages)
    kinds = {"F": "F", "B": "B"}  # forward, full backward (input and weight gradients together)
    ops = []
    for a in _args.sequence("actions", actions):
        if a is None:
            continue
        kind = kinds.get(getattr(a.computation_type, "value", None))
        if kind is None:
            raise ValueError(f"actions: only forward and full-backward ops are expected, got {a}")
        ops.append((kind, a.microbatch_index, a.stage_index // p))
    return ops


def torch_interleaved_worker(width: int = 16, depth: int = 4, batch: int = 32, micro_batches: int = 4, *,
                             virtual_stages: int = 2, seed: int = 0) -> dict:
    """One step of ``ScheduleInterleaved1F1B`` on :func:`labkit.parallel.problem.make_problem`'s
    model cut into ``p x virtual_stages`` chunks (``depth`` must allow that many). Returns this
    rank's ``grads`` (by the unsplit model's parameter names), the ``output`` on the rank that
    holds the last chunk, and ``order``: its ops as ``(kind, micro, chunk)``."""
    require_group("torch_interleaved_worker")
    v = _args.positive_int("virtual_stages", virtual_stages)
    micro_batches = _args.positive_int("micro_batches", micro_batches)
    dev = rank_device()
    model, x, y = make_problem(width, depth, batch, seed=seed, device=dev)
    p, rank = dist.get_world_size(), dist.get_rank()
    if micro_batches % p:
        raise ValueError(f"micro_batches ({micro_batches}) must be a multiple of the {p} ranks")
    chunks = split_model(model.layers, p * v)
    mine = [chunks[c * p + rank] for c in range(v)]
    stages = [PipelineStage(mod, c * p + rank, p * v, dev) for c, mod in enumerate(mine)]
    sched = ScheduleInterleaved1F1B(stages, n_microbatches=micro_batches, loss_fn=F.mse_loss)
    out = sched.step(x) if rank == 0 else sched.step(target=y) if rank == p - 1 else sched.step()
    return {"rank": rank, "grads": {n: q.grad.cpu().clone() for mod in mine for n, q in mod.named_parameters()},
            "output": out.detach().cpu() if out is not None else None,
            "order": schedule_ops(sched.pipeline_order[rank], p)}
