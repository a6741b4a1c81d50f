"""Ring all-reduce written from point-to-point messages (lesson ``03_data_parallelism``).

All-reduce leaves every rank holding the elementwise sum of everyone's tensor. The ring
algorithm cuts the tensor into ``p`` chunks and passes them around a ring (rank ``r`` sends to
``r+1`` and receives from ``r-1``) in two phases of ``p-1`` steps each:

* **reduce-scatter**: at step ``s`` rank ``r`` sends chunk ``(r - s) mod p`` and adds what it
  receives into chunk ``(r - s - 1) mod p``; after ``p-1`` steps rank ``r`` holds the full sum
  of chunk ``(r + 1) mod p``;
* **all-gather**: the finished chunks travel once more around the ring, overwriting stale ones.

Each rank sends ``p-1`` chunks per phase, so ``2 (p-1)/p x N`` bytes for an ``N``-byte tensor -
nearly ``2N`` however many ranks there are, which is why the ring is bandwidth-optimal and the
cost model of :mod:`labkit.parallel.cost` uses ``2 (p-1)/p``. When ``p`` does not divide the
length, chunks differ by one element (as ``torch.tensor_split`` cuts them).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist

from labkit import _args


def chunk_bounds(numel: int, world_size: int) -> list[tuple[int, int]]:
    """``[(start, end), ...]`` of the ``world_size`` chunks of a ``numel``-element tensor.

    The first ``numel % world_size`` chunks get one extra element (``torch.tensor_split``'s rule);
    chunks may be empty when ``numel < world_size``.
    """
    numel = _args.non_negative_int("numel", numel)
    p = _args.positive_int("world_size", world_size)
    base, extra = divmod(numel, p)
    bounds, start = [], 0
    for i in range(p):
        end = start + base + (1 if i < extra else 0)
        bounds.append((start, end))
        start = end
    return bounds


def ring_schedule(world_size: int) -> list[dict]:
    """The ring's steps as rows ``{phase, step, rank, send_chunk, recv_chunk}`` (pure: no processes).

    ``phase`` is ``'reduce-scatter'`` (received chunk is added) or ``'all-gather'`` (overwritten).
    """
    p = _args.positive_int("world_size", world_size)
    rows = []
    for phase, offset in (("reduce-scatter", 0), ("all-gather", 1)):
        for s in range(p - 1):
            for r in range(p):
                rows.append({"phase": phase, "step": s, "rank": r, "send_chunk": (r + offset - s) % p,
                             "recv_chunk": (r + offset - s - 1) % p})
    return rows


def ring_bytes_sent(numel: int, world_size: int, element_size: int = 4) -> list[int]:
    """Bytes each rank sends in one ring all-reduce of ``numel`` elements, from the schedule.

    For ``numel`` divisible by ``p`` every rank sends ``2 (p-1)/p x numel x element_size``.
    """
    _args.positive_int("element_size", element_size)
    bounds = chunk_bounds(numel, world_size)
    sent = [0] * world_size
    for row in ring_schedule(world_size):
        start, end = bounds[row["send_chunk"]]
        sent[row["rank"]] += (end - start) * element_size
    return sent


def ring_all_reduce_(tensor: torch.Tensor, *, group=None, trace: list | None = None) -> torch.Tensor:
    """Sum ``tensor`` over all ranks in place with the ring algorithm; returns ``tensor``.

    Every rank must call it with a tensor of the same shape and dtype. ``trace``, if a list,
    receives one ``{phase, step, send_chunk, recv_chunk, bytes_sent}`` row per step (what this
    rank really sent), so a lesson can check the byte count against :func:`ring_bytes_sent`.
    Equal to ``dist.all_reduce(tensor)`` up to the order of floating-point additions.
    """
    _args.tensor("tensor", tensor)
    if trace is not None:
        _args.instance("trace", trace, list, "a list or None")
    if not dist.is_initialized():
        raise ValueError("ring_all_reduce_ needs an initialised process group (run it through launch or torchrun)")
    p = dist.get_world_size(group)
    r = dist.get_rank(group)
    if p == 1 or tensor.numel() == 0:
        return tensor
    peer = (lambda i: dist.get_global_rank(group, i)) if group is not None else (lambda i: i)
    right, left = peer((r + 1) % p), peer((r - 1) % p)
    flat = tensor.view(-1) if tensor.is_contiguous() else tensor.reshape(-1).clone()
    bounds = chunk_bounds(flat.numel(), p)
    buf = torch.empty(max(e - s for s, e in bounds), dtype=flat.dtype, device=flat.device)
    for row in ring_schedule(p)[r::p]:  # this rank's rows, in step order
        s0, e0 = bounds[row["send_chunk"]]
        s1, e1 = bounds[row["recv_chunk"]]
        send = dist.isend(flat[s0:e0], right, group=group) if e0 > s0 else None
        if e1 > s1:
            incoming = buf[: e1 - s1]
            dist.recv(incoming, left, group=group)
            if row["phase"] == "reduce-scatter":
                flat[s1:e1].add_(incoming)
            else:
                flat[s1:e1].copy_(incoming)
        if send is not None:
            send.wait()
        if trace is not None:
            trace.append({**{k: row[k] for k in ("phase", "step", "send_chunk", "recv_chunk")},
                          "bytes_sent": (e0 - s0) * flat.element_size()})
    if flat.data_ptr() != tensor.data_ptr():
        tensor.copy_(flat.view_as(tensor))
    return tensor


def ring_check(numels: Sequence[int] = (10, 7, 1, 1000), *, group_sizes: Sequence[int] | None = None,
               seed: int = 0, dtype: str = "float32") -> list[dict]:
    """Worker: ring all-reduce against ``dist.all_reduce`` on random tensors of each length.

    Each rank draws its own tensor (seed + rank), reduces a copy both ways and reports the
    largest difference and the bytes it sent (traced) next to :func:`ring_bytes_sent`'s count.
    ``group_sizes`` (default: the whole world) repeats the check on the first ``k`` ranks for
    each ``k``, so one launch of 4 processes covers rings of 2, 3 and 4. With ``dtype='int64'``
    the two must agree exactly. Run it with ``launch(ring_check, 4, group_sizes=[2, 3, 4])``.
    """
    for i, n in enumerate(_args.sequence("numels", numels)):
        _args.non_negative_int(f"numels[{i}]", n)
    _args.non_negative_int("seed", seed)
    _args.choice("dtype", dtype, ("float32", "float64", "int32", "int64"))
    if group_sizes is not None:
        _args.sequence("group_sizes", group_sizes, of=int)
    rank, world = dist.get_rank(), dist.get_world_size()
    sizes = list(group_sizes) if group_sizes is not None else [world]
    for i, k in enumerate(sizes):
        _args.integer(f"group_sizes[{i}]", k, minimum=1, maximum=world)
    dt = getattr(torch, dtype)
    rows = []
    for k in sizes:
        group = None if k == world else dist.new_group(list(range(k)))  # every rank must call new_group
        if rank >= k:
            continue
        for numel in numels:
            g = torch.Generator().manual_seed(seed * 1000 + rank)
            x = torch.randn(numel, generator=g) if dt.is_floating_point else torch.randint(-1000, 1000, (numel,), generator=g)
            x = x.to(dt)
            ours, ref, trace = x.clone(), x.clone(), []
            ring_all_reduce_(ours, group=group, trace=trace)
            dist.all_reduce(ref, group=group)
            rows.append({"numel": numel, "world_size": k, "rank": rank,
                         "max_abs_diff": (ours.double() - ref.double()).abs().max().item() if numel else 0.0,
                         "scale": ref.double().abs().max().item() if numel else 0.0,
                         "bytes_sent": sum(t["bytes_sent"] for t in trace),
                         "bytes_predicted": ring_bytes_sent(numel, k, x.element_size())[rank]})
    return rows
