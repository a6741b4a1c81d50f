"""Small workers for :func:`labkit.parallel.launch.launch` and ``torchrun``: the "hello world" of
torch.distributed, and the failure cases the tests use (a rank that raises, dies or hangs).

Every worker asks ``torch.distributed`` who it is, so it runs the same under both launchers.
"""

from __future__ import annotations

import os
import signal
import time

import torch
import torch.distributed as dist

from labkit import _args
from labkit.parallel.data_parallel import dp_equivalence
from labkit.parallel.launch import mark


def hello() -> dict:
    """Each rank reports who it is; an all-reduce of the ranks checks that they talk."""
    rank, world = dist.get_rank(), dist.get_world_size()
    t = torch.tensor([float(rank)])
    dist.all_reduce(t)
    return {"rank": rank, "world_size": world, "pid": os.getpid(), "backend": dist.get_backend(),
            "sum_of_ranks": float(t), "threads": torch.get_num_threads()}


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """Every rank contributes ``x * (rank + 1)``; all get the sum."""
    _args.tensor("x", x, dtype="floating")
    y = x * (dist.get_rank() + 1)
    dist.all_reduce(y)
    return y


def fail_on_rank(bad_rank: int = 1) -> int:
    """Rank ``bad_rank`` raises; the others wait in a barrier it never reaches."""
    _args.non_negative_int("bad_rank", bad_rank)
    if dist.get_rank() == bad_rank:
        raise RuntimeError(f"deliberate failure on rank {bad_rank}")
    dist.barrier()
    return dist.get_rank()


def die_on_rank(bad_rank: int = 1) -> int:
    """Rank ``bad_rank`` exits abruptly (as if killed), without a Python traceback."""
    _args.non_negative_int("bad_rank", bad_rank)
    if dist.get_rank() == bad_rank:
        os._exit(3)
    dist.barrier()
    return dist.get_rank()


def kill_rank(bad_rank: int = 1) -> int:
    """Rank ``bad_rank`` is killed by SIGKILL (as the out-of-memory killer would)."""
    _args.non_negative_int("bad_rank", bad_rank)
    if dist.get_rank() == bad_rank:
        os.kill(os.getpid(), signal.SIGKILL)
    dist.barrier()
    return dist.get_rank()


def sleep_forever(seconds: float = 3600.0) -> None:
    """Hangs after a barrier, having marked what it does (for the timeout test)."""
    _args.positive_float("seconds", seconds)
    dist.barrier()
    mark(f"rank {dist.get_rank()} sleeping {seconds:g} s after the barrier")
    time.sleep(seconds)


def run_each(calls: list) -> list:
    """Run several workers one after another in the same processes: ``calls`` is a list of
    ``(worker, kwargs)`` pairs; returns their results in order. Starting processes costs ~1.5 s
    per ``launch``, so a lesson batches its work: ``launch(run_each, 2, [(w1, {}), (w2, {...})])``."""
    _args.instance("calls", calls, (list, tuple), "a list of (worker, kwargs) pairs")
    out = []
    for call in calls:
        if not (isinstance(call, (tuple, list)) and len(call) == 2 and callable(call[0]) and isinstance(call[1], dict)):
            raise TypeError(f"calls: each call must be a (worker, kwargs dict) pair, got {call!r}")
        out.append(call[0](**call[1]))
    return out


def two_nodes(steps: int = 2, batch_size: int = 32) -> dict:
    """What a run across machines should check first: the ranks talk (an all-reduce of the ranks,
    :func:`hello`) and train as one (``steps`` DDP steps of a small MLP on the digits, each rank
    a shard of each batch). ``params`` should equal
    :func:`labkit.parallel.data_parallel.train_single_process`'s with ``hidden=(16,)`` and
    ``rank_spread`` be 0. ``node`` is torchrun's ``GROUP_RANK`` (its ``--node_rank``).

    Plain numbers and lists, so that ``python -m labkit.parallel.run`` prints a line that
    ``ast.literal_eval`` reads back (the README's multi-machine recipe runs it)."""
    steps = _args.positive_int("steps", steps)
    batch_size = _args.positive_int("batch_size", batch_size)
    said = hello()
    trained = dp_equivalence(("ddp",), steps=steps, batch_size=batch_size, hidden=(16,))["ddp"]
    return {"rank": said["rank"], "world_size": said["world_size"], "node": os.environ.get("GROUP_RANK"),
            "backend": said["backend"], "sum_of_ranks": said["sum_of_ranks"], "losses": trained["losses"],
            "rank_spread": trained["rank_spread"], "params": trained["params"].tolist()}
