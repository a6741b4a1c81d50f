"""The counting communicator every parallel strategy talks through (lessons 03-04).

:class:`CountingComm` wraps torch.distributed point-to-point calls and collectives and logs
``(op, bytes)`` for each one, so the bytes a strategy really hands to the network can be set
against the formulas of :mod:`labkit.parallel.strategies` (``tests/test_strategies.py``).
:func:`require_group` is the check every worker starts with; :func:`counting_allreduce_hook`
lets DDP's gradient all-reduce be counted the same way.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

from labkit import _args

OPS = ("send", "recv", "all_reduce", "all_gather", "reduce_scatter", "all_to_all")


def _check_op(op) -> None:
    if op is not None and op not in OPS:
        raise ValueError(f"op must be one of {', '.join(map(repr, OPS))} or None, got {op!r}")


class _Pending:
    """An ``isend`` / ``irecv`` in flight; keeps its tensor alive until ``wait()``."""

    def __init__(self, work, tensor):
        self.work, self.tensor = work, tensor

    def wait(self) -> torch.Tensor:
        """Block until done; returns the tensor (the received data, for an ``irecv``)."""
        if self.work is not None:
            self.work.wait()
            self.work = None
        return self.tensor


class CountingComm:
    """torch.distributed point-to-point and collectives that log ``(op, bytes)`` for each call.

    Outside a process group it acts as a group of one (collectives are identities), so layers
    built on it also run, and are tested, in a single process. ``device`` is where received
    tensors land (the rank's GPU under NCCL)."""

    def __init__(self, group=None, *, device: str | torch.device = "cpu"):
        self.group = group
        self.device = torch.device(device)
        self.log: list[tuple[str, int]] = []

    @property
    def rank(self) -> int:
        return dist.get_rank(self.group) if dist.is_initialized() else 0

    @property
    def world_size(self) -> int:
        return dist.get_world_size(self.group) if dist.is_initialized() else 1

    def _count(self, op: str, tensor) -> None:
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"tensor must be a torch.Tensor, got {type(tensor).__name__}")
        self.log.append((op, tensor.numel() * tensor.element_size()))

    def _peer(self, name: str, peer) -> int:
        if isinstance(peer, bool) or not isinstance(peer, int) or not 0 <= peer < self.world_size or peer == self.rank:
            raise ValueError(f"{name} must be another rank in 0..{self.world_size - 1}, got {peer!r}")
        return peer

    def isend(self, tensor: torch.Tensor, dst: int, *, tag: int = 0) -> _Pending:
        """Start sending ``tensor`` to rank ``dst``; call ``.wait()`` on the result before reusing it.
        The receiver must ask for the same ``tag``."""
        self._count("send", tensor)
        t = tensor.detach().contiguous()
        return _Pending(dist.isend(t, self._peer("dst", dst), group=self.group, tag=tag), t)

    def irecv(self, shape, src: int, *, tag: int = 0, dtype: torch.dtype = torch.float32) -> _Pending:
        """Post a receive of a ``shape`` tensor from rank ``src`` now; ``.wait()`` returns it.
        Posting receives before they are needed lets the data arrive while this rank computes."""
        buf = torch.empty(tuple(shape), dtype=dtype, device=self.device)
        work = dist.irecv(buf, self._peer("src", src), group=self.group, tag=tag)
        self._count("recv", buf)
        return _Pending(work, buf)

    def recv(self, shape, src: int, *, tag: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Receive a tensor of ``shape`` from rank ``src`` (blocking)."""
        return self.irecv(shape, src, tag=tag, dtype=dtype).wait()

    def all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum ``tensor`` over the ranks, in place; returns it."""
        self._count("all_reduce", tensor)
        if self.world_size > 1:
            dist.all_reduce(tensor, group=self.group)
        return tensor

    def all_gather(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        """Every rank's ``tensor``, in rank order."""
        self._count("all_gather", tensor)
        if self.world_size == 1:
            return [tensor]
        parts = [torch.empty_like(tensor) for _ in range(self.world_size)]
        dist.all_gather(parts, tensor, group=self.group)
        return parts

    def reduce_scatter(self, tensor: torch.Tensor, *, dim: int = 0) -> torch.Tensor:
        """Sum ``tensor`` over the ranks and return this rank's equal slice of the sum along
        ``dim`` (the first half of an all-reduce; :meth:`all_gather` is the second)."""
        self._count("reduce_scatter", tensor)
        dim = _args.integer("dim", dim, minimum=-max(tensor.dim(), 1), maximum=max(tensor.dim(), 1) - 1)
        if tensor.shape[dim] % self.world_size:
            raise ValueError(f"dimension {dim} of size {tensor.shape[dim]} does not split into "
                             f"{self.world_size} equal slices")
        if self.world_size == 1:
            return tensor
        parts = [c.contiguous() for c in tensor.chunk(self.world_size, dim=dim)]
        out = torch.empty_like(parts[0])
        dist.reduce_scatter(out, parts, group=self.group)
        return out

    def all_to_all_single(self, tensor: torch.Tensor, output_splits, input_splits) -> torch.Tensor:
        """Send rows ``input_splits[s]`` of ``tensor`` (in rank order, along dim 0) to each rank
        ``s``; receive ``output_splits[s]`` rows from each. Logs the bytes that leave this rank
        (the rows it keeps for itself travel nowhere). gloo supports this form, not the list one."""
        _args.tensor("tensor", tensor)
        p = self.world_size
        splits = {}
        for name, value in (("output_splits", output_splits), ("input_splits", input_splits)):
            value = _args.sequence(name, value, of=int)
            if len(value) != p or any(isinstance(v, bool) or v < 0 for v in value):
                raise ValueError(f"{name} must be {p} non-negative ints (one per rank), got {value}")
            splits[name] = [int(v) for v in value]
        if sum(splits["input_splits"]) != tensor.shape[0]:
            raise ValueError(f"input_splits sum to {sum(splits['input_splits'])}, but tensor has {tensor.shape[0]} rows")
        row = tensor[0].numel() * tensor.element_size() if tensor.dim() else tensor.element_size()
        self.log.append(("all_to_all", row * (tensor.shape[0] - splits["input_splits"][self.rank])))
        out = tensor.new_empty((sum(splits["output_splits"]), *tensor.shape[1:]))
        if p == 1:
            return out.copy_(tensor)
        dist.all_to_all_single(out, tensor.contiguous(), splits["output_splits"], splits["input_splits"],
                               group=self.group)
        return out

    def bytes(self, op: str | None = None) -> int:
        """Bytes handed to ``op`` (one of :data:`OPS`), or to all ops that send ('send' +
        collectives) when ``op`` is None."""
        _check_op(op)
        return sum(n for o, n in self.log if (o == op if op else o != "recv"))

    def wire_bytes(self, op: str | None = None) -> float:
        """Bytes this rank puts on the wire under ring algorithms (for ``op`` only, if given): a
        send as is, an all-reduce ``2(p-1)/p`` of its size (reduce-scatter + all-gather), a
        reduce-scatter ``(p-1)/p`` of its input, an all-gather ``(p-1)`` shards, an all-to-all
        the rows it sends away."""
        _check_op(op)
        p = self.world_size
        factor = {"send": 1.0, "all_reduce": 2 * (p - 1) / p, "all_gather": p - 1.0, "recv": 0.0,
                  "reduce_scatter": (p - 1) / p, "all_to_all": 1.0}
        return sum(factor[o] * n for o, n in self.log if op is None or o == op)


def require_group(worker: str) -> None:
    """Raise RuntimeError unless a torch.distributed process group is up (every worker needs one)."""
    _args.text("worker", worker)
    if not dist.is_initialized():
        raise RuntimeError(f"{worker} is a worker: run it on several processes with "
                           "labkit.parallel.launch.launch (or torchrun -m labkit.parallel.run)")


def counting_allreduce_hook(comm: CountingComm, bucket):
    """A DDP communication hook: log the bucket's bytes on ``comm``, then DDP's default all-reduce.
    ``ddp.register_comm_hook(comm, counting_allreduce_hook)``."""
    comm._count("all_reduce", bucket.buffer())
    return default_hooks.allreduce_hook(comm.group, bucket)
