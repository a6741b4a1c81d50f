"""Data parallelism on the language model: ``DistributedSampler``, ``set_epoch`` and DDP (lesson ``03_data_parallelism``).

The course's byte-level GPT (:mod:`labkit.lm`) reads its text as windows of ``block_size``
tokens. :class:`WindowDataset` makes those windows a map-style dataset, so the usual PyTorch
recipe applies: each rank wraps it in ``torch.utils.data.distributed.DistributedSampler``
(rank ``r`` of ``p`` takes every ``p``-th index of one shuffled order, so the ranks see
disjoint shards that together cover the epoch) and trains a ``DistributedDataParallel`` copy of
the model on its shard.

The sampler shuffles with a generator seeded ``seed + epoch``, and ``epoch`` only changes when
the training loop calls ``sampler.set_epoch(epoch)``. Forget it and **every epoch visits the
windows in the same order** (and the same windows land on the same rank): :func:`epoch_orders`
shows the index lists both ways without starting a process.

With equal shards and a loss averaged over each shard, local batch ``b`` of rank ``r`` holds
positions ``r, r+p, r+2p, ..`` of slice ``b`` of the shuffled order, so the ranks' batches
together are exactly the single-process batch ``perm[b*B:(b+1)*B]`` (``B`` the global batch):
:func:`lm_ddp_worker` must end where :func:`train_lm_reference` (one process, ``randperm``
written out) ends.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler

from labkit import _args
from labkit.lm.corpus import course_text, encode
from labkit.lm.model import GPT, GPTConfig, get_config
from labkit.parallel.data_parallel import _agreement
from labkit.train import cross_entropy_batch


class WindowDataset(Dataset):
    """Non-overlapping windows of ``ids``: item ``i`` is ``(ids[iT:iT+T], ids[iT+1:iT+T+1])``
    with ``T = block_size`` (``y`` is ``x`` shifted by one token)."""

    def __init__(self, ids: torch.Tensor, block_size: int):
        _args.tensor("ids", ids, dtype="integer", ndim=1)
        self.block_size = _args.positive_int("block_size", block_size)
        if len(ids) < block_size + 1:
            raise ValueError(f"ids must hold at least block_size + 1 = {block_size + 1} tokens, got {len(ids)}")
        self.ids = ids

    def __len__(self) -> int:
        return (len(self.ids) - 1) // self.block_size

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= i < len(self):
            raise IndexError(f"window {i} out of range 0..{len(self) - 1}")
        s = i * self.block_size
        return self.ids[s:s + self.block_size], self.ids[s + 1:s + self.block_size + 1]


def course_windows(config: GPTConfig, windows: int) -> WindowDataset:
    """The first ``windows`` windows of the course corpus for ``config``'s context length."""
    _args.instance("config", config, GPTConfig)
    windows = _args.positive_int("windows", windows)
    return WindowDataset(encode(course_text())[: windows * config.block_size + 1], config.block_size)


def epoch_orders(length: int, world_size: int, epochs: int, *, set_epoch: bool = True, seed: int = 0) -> list[list[list[int]]]:
    """``orders[rank][epoch]``: the indices ``DistributedSampler(shuffle=True, drop_last=True)``
    gives each rank in each epoch of a ``length``-item dataset, calling ``set_epoch(epoch)``
    before each epoch or not. Pure: the sampler takes ``num_replicas`` and ``rank`` directly."""
    length, p = _args.positive_int("length", length), _args.positive_int("world_size", world_size)
    epochs, seed = _args.positive_int("epochs", epochs), _args.non_negative_int("seed", seed)
    _args.boolean("set_epoch", set_epoch)
    orders = []
    for rank in range(p):
        sampler = DistributedSampler(range(length), num_replicas=p, rank=rank, shuffle=True, seed=seed, drop_last=True)
        per_epoch = []
        for epoch in range(epochs):
            if set_epoch:
                sampler.set_epoch(epoch)
            per_epoch.append(list(sampler))
        orders.append(per_epoch)
    return orders


OPTIMIZERS = {"adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}
LM_LOSS = cross_entropy_batch()  # next-token cross-entropy, averaged over every position


def _check(config_name, epochs, batch_size, lr, seed, windows, optimizer):
    config = get_config(config_name)
    _args.choice("optimizer", optimizer, tuple(OPTIMIZERS))
    _args.positive_int("epochs", epochs)
    _args.positive_int("batch_size", batch_size)
    _args.positive_float("lr", lr)
    _args.non_negative_int("seed", seed)
    _args.positive_int("windows", windows)
    if windows < batch_size:
        raise ValueError(f"windows ({windows}) must hold at least one global batch ({batch_size})")
    return config


def _model(config: GPTConfig, seed: int) -> GPT:
    torch.manual_seed(seed)
    return GPT(config)


def train_lm_reference(config_name: str = "tiny", *, epochs: int = 2, batch_size: int = 8, lr: float = 3e-3,
                       seed: int = 0, windows: int = 32, optimizer: str = "adamw") -> dict:
    """One process, the plain recipe: each epoch, shuffle the windows with ``torch.randperm``
    seeded ``seed + epoch`` and take global batches of ``batch_size`` in order (a partial last
    batch is dropped); AdamW (the course's optimizer) or plain SGD. Returns ``params`` (one vector), ``losses`` (one per step) and
    ``orders`` (each epoch's window indices, in the order used)."""
    config = _check(config_name, epochs, batch_size, lr, seed, windows, optimizer)
    data = course_windows(config, windows)
    model = _model(config, seed)
    opt = OPTIMIZERS[optimizer](model.parameters(), lr=lr)
    losses, orders = [], []
    for epoch in range(epochs):
        perm = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed + epoch)).tolist()
        steps = len(data) // batch_size
        orders.append(perm[: steps * batch_size])
        for b in range(steps):
            x, y = (torch.stack(t) for t in zip(*(data[i] for i in perm[b * batch_size:(b + 1) * batch_size])))
            opt.zero_grad()
            loss = LM_LOSS(model, (x, y)).loss
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
    return {"params": nn.utils.parameters_to_vector(model.parameters()).detach(), "losses": losses, "orders": orders}


def lm_ddp_worker(config_name: str = "tiny", *, epochs: int = 2, batch_size: int = 8, lr: float = 3e-3, seed: int = 0,
                  windows: int = 32, set_epoch: bool = True, optimizer: str = "adamw") -> dict:
    """Worker: train the LM with DDP, each rank reading its shard through ``DistributedSampler``
    (``batch_size`` is the global batch: ``batch_size / p`` windows per rank and step).

    Returns this rank's ``orders`` (its window indices per epoch), ``params``, the batch-mean
    ``losses`` per step (averaged over ranks) and ``rank_spread`` (largest difference of any
    parameter between ranks: 0). With ``set_epoch=True`` it should equal
    :func:`train_lm_reference`; with ``False`` every epoch repeats the first one's order.

    How equal: the gradients differ from one process's by float rounding only (the sum runs in
    another order), so the losses agree to ~1e-6 and SGD's parameters to ~1e-7. Adam divides each
    gradient by its own running RMS, which magnifies those rounding differences on coordinates
    whose gradient is nearly zero: after 8 AdamW steps of the tiny LM (lr 3e-3), 105 of its 136,960
    parameters differed by more than 1e-5, the largest by 1.0e-4 (SGD, lr 0.5: all within 1.6e-7).
    """
    config = _check(config_name, epochs, batch_size, lr, seed, windows, optimizer)
    _args.boolean("set_epoch", set_epoch)
    rank, p = dist.get_rank(), dist.get_world_size()
    if batch_size % p:
        raise ValueError(f"batch_size {batch_size} must split evenly over {p} ranks")
    data = course_windows(config, windows)
    sampler = DistributedSampler(data, num_replicas=p, rank=rank, shuffle=True, seed=seed, drop_last=True)
    loader = DataLoader(data, batch_size=batch_size // p, sampler=sampler, drop_last=True)
    model = DDP(_model(config, seed))
    opt = OPTIMIZERS[optimizer](model.parameters(), lr=lr)
    losses, orders = [], []
    for epoch in range(epochs):
        if set_epoch:
            sampler.set_epoch(epoch)
        orders.append(list(sampler))
        for x, y in loader:
            opt.zero_grad()
            loss = LM_LOSS(model, (x, y)).loss
            loss.backward()  # DDP averages the gradients over the ranks
            opt.step()
            losses.append(loss.detach())
    return {"rank": rank, "orders": orders, **_agreement(model, losses)}
