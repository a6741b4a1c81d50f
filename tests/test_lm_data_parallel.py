"""Data parallelism on the language model: DistributedSampler shards, what set_epoch changes, and
DDP over 2 ranks equal to one process on the same global batches."""

from __future__ import annotations

import pytest
import torch

from labkit.lm.corpus import course_text, encode
from labkit.lm.model import get_config
from labkit.parallel.examples import run_each
from labkit.parallel.launch import launch
from labkit.parallel.lm_data_parallel import (
    WindowDataset,
    course_windows,
    epoch_orders,
    lm_ddp_worker,
    train_lm_reference,
)


def test_windows_by_hand():
    data = WindowDataset(torch.arange(10), 3)
    assert len(data) == 3  # 9 targets after the first token: 3 windows of 3
    x, y = data[2]
    assert x.tolist() == [6, 7, 8] and y.tolist() == [7, 8, 9]
    with pytest.raises(IndexError):
        data[3]
    with pytest.raises(ValueError, match="block_size"):
        WindowDataset(torch.arange(3), 3)
    first = course_windows(get_config("tiny"), 4)
    assert len(first) == 4 and first[1][0].tolist() == encode(course_text()[64:128]).tolist()


def _shuffled(n, seed):  # DistributedSampler's documented order, written out
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()


def test_without_set_epoch_every_epoch_repeats_the_first():
    n, p = 20, 2
    fixed = epoch_orders(n, p, 3, set_epoch=False, seed=5)
    moving = epoch_orders(n, p, 3, set_epoch=True, seed=5)
    for rank in range(p):
        assert fixed[rank][0] == fixed[rank][1] == fixed[rank][2]  # the bug: the same order every epoch
        assert moving[rank][0] != moving[rank][1] and moving[rank][1] != moving[rank][2]
        for epoch in range(3):  # rank r takes every p-th index of randperm(seed + epoch)
            assert moving[rank][epoch] == _shuffled(n, 5 + epoch)[rank::p]
            assert fixed[rank][epoch] == _shuffled(n, 5)[rank::p]
    for epoch in range(3):  # the shards are disjoint and cover the epoch
        assert sorted(moving[0][epoch] + moving[1][epoch]) == list(range(n))


@pytest.mark.dist
def test_ddp_on_the_lm_equals_one_process():
    kwargs = {"epochs": 2, "batch_size": 8, "windows": 32}
    sgd = {**kwargs, "optimizer": "sgd", "lr": 0.5}
    runs = launch(run_each, 2, [(lm_ddp_worker, sgd), (lm_ddp_worker, {**sgd, "set_epoch": False}),
                                (lm_ddp_worker, kwargs)], timeout=240)
    with_epoch, without, adamw = ([rank[k] for rank in runs] for k in range(3))
    reference = train_lm_reference(**sgd)
    assert len(reference["losses"]) == 2 * 32 // 8
    for r in with_epoch:
        assert r["rank_spread"] == 0.0
        assert r["losses"] == pytest.approx(reference["losses"], abs=1e-5)
        assert torch.allclose(r["params"], reference["params"], atol=1e-5)
        assert r["orders"][0] != r["orders"][1]
    for epoch in range(2):  # the two ranks' shards interleave into the single process's epoch order
        assert [i for pair in zip(with_epoch[0]["orders"][epoch], with_epoch[1]["orders"][epoch]) for i in pair] \
            == reference["orders"][epoch]
    for r in without:
        assert r["orders"][0] == r["orders"][1]  # no set_epoch: epoch 2 replays epoch 1
    assert not torch.allclose(without[0]["params"], reference["params"], atol=1e-3)
    # AdamW (the course's optimizer): the same losses; rounding magnified on near-zero gradients
    reference = train_lm_reference(**kwargs)
    for r in adamw:
        assert r["rank_spread"] == 0.0
        assert r["losses"] == pytest.approx(reference["losses"], abs=1e-5)
        assert torch.allclose(r["params"], reference["params"], atol=1e-3)
