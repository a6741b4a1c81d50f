"""Data parallelism from scratch, then PyTorch's ``DistributedDataParallel`` (lesson ``03_data_parallelism``).

Every rank holds the whole model and a 1/p shard of each batch. With the loss a mean over the
batch and equal shards, the full-batch gradient is the average of the shard gradients::

    grad L(batch) = 1/p x sum_r grad L(shard_r)

so after all-reducing (summing) the gradients and dividing by ``p``, every rank takes the same
optimizer step the single process would take on the whole batch: the ranks stay identical.

Three ways to do the averaging, naive to real:

* :func:`average_gradients_` - after ``backward()``, one all-reduce per parameter (the ring of
  :mod:`labkit.parallel.ring` can stand in for ``dist.all_reduce``);
* :class:`BucketedDataParallel` - DDP in miniature: gradients are packed into ~``bucket_mb``
  buckets (last layer first, the order backward produces them) and each bucket's all-reduce
  starts *during* backward, as soon as its gradients exist - communication overlaps compute;
* ``torch.nn.parallel.DistributedDataParallel`` - the same ideas in C++, plus ``no_sync()``
  to skip the all-reduce on gradient-accumulation micro-steps.

:func:`dp_equivalence` (a worker: run it under :func:`labkit.parallel.launch.launch` or
torchrun) trains in each of these ways; :func:`train_single_process` is the in-process
reference they must equal. FSDP's version is :func:`labkit.parallel.zero.fsdp_train`; the
timings are in :mod:`labkit.parallel.dp_timing`.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
from torch.nn.parallel import DistributedDataParallel as DDP

from labkit import _args
from labkit.data import load_arrays
from labkit.models import MLP
from labkit.parallel.problem import check_training
from labkit.parallel.ring import ring_all_reduce_

MODES = ("naive", "ring", "bucketed", "ddp", "ddp_accumulate", "ddp_no_sync")


def shard_batch(x: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """Rank ``rank``'s contiguous 1/``world_size`` slice of a batch (dim 0).

    Shards must be equal, or the average of shard-mean gradients is not the full-batch mean.
    """
    _args.tensor("x", x)
    world_size = _args.positive_int("world_size", world_size)
    rank = _args.integer("rank", rank, minimum=0, maximum=world_size - 1)
    if x.shape[0] % world_size:
        raise ValueError(f"batch of {x.shape[0]} does not split into {world_size} equal shards")
    n = x.shape[0] // world_size
    return x[rank * n:(rank + 1) * n]


def average_gradients_(model: nn.Module, *, group=None,
                       all_reduce: Callable[[torch.Tensor], object] | None = None) -> int:
    """Naive data parallelism: all-reduce each parameter's gradient, divide by ``p``.

    ``all_reduce(tensor)`` defaults to ``dist.all_reduce``; pass
    ``labkit.parallel.ring.ring_all_reduce_`` to use the hand-written ring. Returns the number
    of all-reduce calls (one per parameter: each pays the start-up cost ``alpha``).
    """
    _args.module("model", model)
    if all_reduce is not None:
        _args.function("all_reduce", all_reduce)
    reduce = all_reduce or (lambda t: dist.all_reduce(t, group=group))
    p = dist.get_world_size(group)
    calls = 0
    for param in model.parameters():
        if param.grad is not None:
            reduce(param.grad)
            param.grad.div_(p)
            calls += 1
    return calls


class BucketedDataParallel(nn.Module):
    """DDP in miniature: bucketed gradient all-reduce that overlaps with backward.

    Wrap the model, run ``loss.backward()`` as usual, then call :meth:`finish_gradient_sync`
    before ``optimizer.step()``. Buckets are filled in reverse parameter order and launched in
    bucket order (every rank must issue collectives in the same order); ``events`` records when
    each bucket's all-reduce started and when the sync finished (``time.perf_counter`` seconds).
    Set ``require_sync = False`` to accumulate gradients locally (like DDP's ``no_sync``).
    """

    def __init__(self, module: nn.Module, *, bucket_mb: float = 1.0, group=None):
        super().__init__()
        _args.module("module", module)
        _args.positive_float("bucket_mb", bucket_mb)
        self.module, self.group, self.require_sync = module, group, True
        params = [p for p in module.parameters() if p.requires_grad]
        src = dist.get_global_rank(group, 0) if group is not None else 0
        for p in params:  # every rank starts from rank 0's weights
            dist.broadcast(p.data, src=src, group=group)
        self.buckets: list[list[nn.Parameter]] = [[]]
        size = 0
        for p in reversed(params):
            if size >= bucket_mb * 2**20:
                self.buckets.append([])
                size = 0
            self.buckets[-1].append(p)
            size += p.numel() * p.element_size()
        self._bucket_of = {id(p): i for i, b in enumerate(self.buckets) for p in b}
        self._handles = [p.register_post_accumulate_grad_hook(self._grad_ready) for p in params]
        self.events: list[dict] = []
        self._reset()

    def _reset(self):
        self._missing = [len(b) for b in self.buckets]
        self._next = 0
        self._works: list[tuple[int, torch.Tensor, object]] = []

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    def _grad_ready(self, param: torch.Tensor) -> None:
        if not self.require_sync:
            return
        self._missing[self._bucket_of[id(param)]] -= 1
        while self._next < len(self.buckets) and self._missing[self._next] == 0:
            i = self._next
            flat = torch.cat([p.grad.reshape(-1) for p in self.buckets[i]])
            self._works.append((i, flat, dist.all_reduce(flat, group=self.group, async_op=True)))
            self.events.append({"bucket": i, "event": "launch", "t": time.perf_counter(), "bytes": flat.numel() * flat.element_size()})
            self._next += 1

    def finish_gradient_sync(self) -> None:
        """Wait for every bucket, then write the averaged gradients back into ``.grad``."""
        if not self.require_sync:
            return
        if self._next != len(self.buckets):
            raise RuntimeError(f"only {self._next} of {len(self.buckets)} buckets were ready: call after backward()")
        p = dist.get_world_size(self.group)
        for _, _flat, work in self._works:
            work.wait()
        for i, flat, _ in self._works:
            flat.div_(p)
            offset = 0
            for param in self.buckets[i]:
                n = param.numel()
                param.grad.copy_(flat[offset:offset + n].view_as(param))
                offset += n
        self.events.append({"bucket": -1, "event": "synced", "t": time.perf_counter(), "bytes": 0})
        self._reset()

    def remove_hooks(self) -> None:
        for h in self._handles:
            h.remove()


# --- the training problem every mode solves ---------------------------------------------------------


def build_model(*, seed: int = 0, hidden: Sequence[int] = (64, 32)) -> MLP:
    """The lesson's MLP on 8x8 digits, initialised from ``seed`` (same weights in every process)."""
    torch.manual_seed(_args.non_negative_int("seed", seed))
    return MLP((1, 8, 8), hidden=tuple(hidden), num_classes=10)


def global_batch(step: int, batch_size: int, *, data: tuple[torch.Tensor, torch.Tensor] | None = None):
    """Step ``step``'s full batch: ``batch_size`` consecutive digits (wrapping around the data)."""
    _args.non_negative_int("step", step)
    _args.positive_int("batch_size", batch_size)
    x, y = data if data is not None else load_arrays("digits")
    idx = torch.arange(step * batch_size, (step + 1) * batch_size) % len(x)
    return x[idx], y[idx]


def train_single_process(*, steps: int = 5, batch_size: int = 64, lr: float = 0.5, seed: int = 0,
                         hidden: Sequence[int] = (64, 32), data=None) -> tuple[torch.Tensor, list[float]]:
    """The reference: plain SGD on the full batch in this process. Returns (parameters as one
    vector, losses). Data-parallel runs with the same arguments must end at the same vector."""
    check_training(steps=steps, lr=lr, seed=seed, batch_size=batch_size)
    model = build_model(seed=seed, hidden=hidden)
    data = data if data is not None else load_arrays("digits")
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    losses = []
    for s in range(steps):
        x, y = global_batch(s, batch_size, data=data)
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return nn.utils.parameters_to_vector(model.parameters()).detach(), losses


def logging_comm_hook(state: dict, bucket):  # no annotations: DDP checks them literally
    """A DDP communication hook: DDP's own all-reduce-and-average, plus a note in
    ``state['events']`` of when each bucket was launched (to see the overlap with backward)."""
    buf = bucket.buffer()
    state["events"].append({"bucket": bucket.index(), "event": "launch", "t": time.perf_counter(),
                            "bytes": buf.numel() * buf.element_size()})
    return allreduce_hook(None, bucket)


def wrap_ddp(model: nn.Module, *, bucket_mb: float = 25.0) -> tuple[nn.Module, dict]:
    """``DistributedDataParallel(model)`` with :func:`logging_comm_hook`; returns (ddp, log)."""
    _args.module("model", model)
    _args.positive_float("bucket_mb", bucket_mb)
    ddp = DDP(model, bucket_cap_mb=bucket_mb)
    log: dict = {"events": []}
    ddp.register_comm_hook(log, logging_comm_hook)
    return ddp, log


def _train_mode(mode: str, *, steps, batch_size, lr, seed, hidden, micro, bucket_mb, data):
    rank, p = dist.get_rank(), dist.get_world_size()
    if batch_size % p or (batch_size // p) % micro:
        raise ValueError(f"batch_size {batch_size} must split into {p} ranks x {micro} equal micro-batches")
    model, log = build_model(seed=seed, hidden=hidden), {"events": []}
    if mode == "bucketed":
        model = BucketedDataParallel(model, bucket_mb=bucket_mb)
    elif mode.startswith("ddp"):
        model, log = wrap_ddp(model, bucket_mb=bucket_mb)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    losses, calls = [], 0
    for s in range(steps):
        x, y = global_batch(s, batch_size, data=data)
        x, y = shard_batch(x, rank, p), shard_batch(y, rank, p)
        opt.zero_grad()
        if mode in ("ddp_accumulate", "ddp_no_sync"):  # accumulate gradients over `micro` micro-batches
            xs, ys, loss = x.chunk(micro), y.chunk(micro), 0.0
            for k in range(micro):  # no_sync: all-reduce on the last micro-batch only
                skip = mode == "ddp_no_sync" and k < micro - 1
                with model.no_sync() if skip else contextlib.nullcontext():
                    part = nn.functional.cross_entropy(model(xs[k]), ys[k]) / micro
                    part.backward()
                loss = loss + part.detach()
        else:
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            if mode == "naive":
                calls += average_gradients_(model)
            elif mode == "ring":
                calls += average_gradients_(model, all_reduce=ring_all_reduce_)
            elif mode == "bucketed":
                model.finish_gradient_sync()
                calls += len(model.buckets)
        opt.step()
        losses.append(loss.detach())
    losses = torch.stack(losses)
    dist.all_reduce(losses)  # one message for all the steps' losses: the batch mean of each step
    losses = (losses / p).tolist()
    params = nn.utils.parameters_to_vector(model.parameters()).detach()
    spread = params.clone()
    lo = params.clone()
    dist.all_reduce(spread, op=dist.ReduceOp.MAX)
    dist.all_reduce(lo, op=dist.ReduceOp.MIN)
    calls += len(log["events"])
    return {"params": params, "losses": losses, "rank_spread": float((spread - lo).max()), "allreduce_calls": calls}


def dp_equivalence(modes: Sequence[str] = MODES, *, steps: int = 5, batch_size: int = 64, lr: float = 0.5,
                   seed: int = 0, hidden: Sequence[int] = (64, 32), micro: int = 2, bucket_mb: float = 0.004,
                   data: tuple[torch.Tensor, torch.Tensor] | None = None) -> dict:
    """Worker: train the same model ``steps`` SGD steps in each data-parallel ``mode``.

    Returns ``{mode: {params, losses, rank_spread, allreduce_calls}}``; ``params`` should equal
    :func:`train_single_process`'s and ``rank_spread`` (largest difference between ranks) be 0.
    ``ddp_accumulate`` splits each rank's shard into ``micro`` micro-batches and accumulates
    their gradients (DDP all-reduces after each); ``ddp_no_sync`` does the same inside
    ``no_sync()`` but for the last one, so it all-reduces ``micro`` times less for the same result.
    ``data`` defaults to the digits; pass ``load_arrays("digits")`` from the caller to spare each
    rank the import of scikit-learn.
    """
    for i, m in enumerate(_args.sequence("modes", modes, non_empty=True)):
        _args.choice(f"modes[{i}]", m, MODES)
    check_training(steps=steps, lr=lr, seed=seed, batch_size=batch_size)
    _args.positive_int("micro", micro)
    _args.positive_float("bucket_mb", bucket_mb)
    data = data if data is not None else load_arrays("digits")
    return {m: _train_mode(m, steps=steps, batch_size=batch_size, lr=lr, seed=seed, hidden=hidden, micro=micro,
                           bucket_mb=bucket_mb, data=data) for m in modes}
