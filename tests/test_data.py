"""labkit.data: bundled datasets, deterministic stratified splits, loaders, optional torchvision path."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from labkit import data as D


def test_digits_and_mnist_subset_are_real_and_scaled():
    x, y = D.load_arrays("digits")
    assert x.shape == (1797, 1, 8, 8) and y.shape == (1797,)
    xm, ym = D.load_arrays("mnist_subset")
    assert xm.shape == (5000, 1, 28, 28) and torch.bincount(ym).tolist() == [500] * 10
    for t in (x, xm):
        assert t.dtype == torch.float32 and 0 <= float(t.min()) and float(t.max()) == 1.0


def test_unknown_dataset():
    with pytest.raises(ValueError, match="name must be one of 'digits', 'mnist_subset'; got 'cifar'"):
        D.load_arrays("cifar")


def test_split_is_deterministic_stratified_and_disjoint():
    s1 = D.load_dataset("mnist_subset", seed=3)
    s2 = D.load_dataset("mnist_subset", seed=3)
    s3 = D.load_dataset("mnist_subset", seed=4)
    assert s1.sizes() == {"train": 3500, "val": 500, "test": 1000}
    assert torch.equal(s1.train.tensors[1], s2.train.tensors[1])
    assert not torch.equal(s1.train.tensors[1], s3.train.tensors[1])
    assert torch.bincount(s1.test.tensors[1]).tolist() == [100] * 10
    tr, va, te = D.stratified_split(torch.arange(10).repeat(10), (0.6, 0.2, 0.2), seed=0)
    all_idx = torch.cat([tr, va, te])
    assert len(set(all_idx.tolist())) == 100 == len(all_idx)
    assert s1.num_classes == 10 and s1.input_shape == (1, 28, 28)


@pytest.mark.parametrize("kwargs", [{"val_fraction": 0}, {"test_fraction": 1.2}, {"val_fraction": 0.5, "test_fraction": 0.5},
                                    {"limit": 0}, {"limit": -5}])
def test_load_dataset_bad_input(kwargs):
    with pytest.raises(ValueError):
        D.load_dataset("digits", **kwargs)


def test_split_bad_input():
    with pytest.raises(ValueError, match="empty"):
        D.stratified_split(torch.tensor([], dtype=torch.int64), (0.5, 0.5))
    with pytest.raises(ValueError, match="sum to 1"):
        D.stratified_split(torch.arange(4), (0.5, 0.6))


def test_loaders_shuffle_repeatably_with_a_generator():
    s = D.load_dataset("digits", limit=400)
    first = next(iter(D.make_loaders(s, batch_size=16, generator=torch.Generator().manual_seed(1))["train"]))[1]
    again = next(iter(D.make_loaders(s, batch_size=16, generator=torch.Generator().manual_seed(1))["train"]))[1]
    assert torch.equal(first, again) and len(first) == 16
    assert len(next(iter(D.make_loaders(s)["test"]))[1]) == len(s.test)


def test_loader_bad_input():
    ds = TensorDataset(torch.zeros(4, 2), torch.zeros(4))
    with pytest.raises(ValueError, match="batch_size"):
        D.make_loader(ds, batch_size=0)
    with pytest.raises(ValueError, match="empty"):
        D.make_loader(TensorDataset(torch.zeros(0, 2)))
    with pytest.raises(TypeError):
        D.make_loader([1, 2, 3])
    with pytest.raises(TypeError):
        D.make_loaders({"train": ds})
    with pytest.raises(TypeError):
        D.tensors(ds.tensors)


def test_dataset_to_tensors_on_tiny_generated_files(tmp_path):
    # the torchvision path turns raw uint8 arrays into labkit tensors; test it without downloading
    gray = np.random.default_rng(0).integers(0, 256, (5, 28, 28), dtype=np.uint8)
    np.save(tmp_path / "imgs.npy", gray)
    x, y = D.dataset_to_tensors(np.load(tmp_path / "imgs.npy"), [1, 2, 3, 4, 5])
    assert x.shape == (5, 1, 28, 28) and float(x.max()) <= 1 and y.tolist() == [1, 2, 3, 4, 5]
    rgb = np.zeros((2, 32, 32, 3), dtype=np.uint8)
    assert D.dataset_to_tensors(rgb, [0, 1])[0].shape == (2, 3, 32, 32)
    with pytest.raises(TypeError, match="uint8"):
        D.dataset_to_tensors(gray.astype(np.float32), [0] * 5)
    with pytest.raises(ValueError, match="labels"):
        D.dataset_to_tensors(gray, [0])
    with pytest.raises(ValueError, match="shaped"):
        D.dataset_to_tensors(np.zeros(5, dtype=np.uint8), [0] * 5)


def test_torchvision_loader_rejects_unknown_names(tmp_path):
    with pytest.raises(ValueError, match="name must be one of .*got 'imagenet'"):
        D.load_torchvision("imagenet", tmp_path)


@pytest.mark.parametrize("shuffle, drop_last", [(True, False), (False, False), (True, True)])
def test_batch_loader_gives_make_loaders_batches(shuffle, drop_last):
    x, y = torch.randn(70, 1, 4, 4), torch.arange(70)
    ds = TensorDataset(x, y)
    ours = list(D.batch_loader(ds, batch_size=16, shuffle=shuffle, drop_last=drop_last,
                               generator=torch.Generator().manual_seed(3)))
    ref = list(D.make_loader(ds, batch_size=16, shuffle=shuffle, drop_last=drop_last,
                             generator=torch.Generator().manual_seed(3)))
    assert len(ours) == len(ref) == (4 if drop_last else 5)
    for (a, b), (c, d) in zip(ours, ref):
        assert torch.equal(a, c) and torch.equal(b, d)
    assert not shuffle or not torch.equal(ours[0][1], torch.arange(16))  # it did shuffle


@pytest.mark.parametrize("kwargs, err, words", [
    ({"dataset": [1, 2]}, TypeError, "dataset"),
    ({"dataset": TensorDataset(torch.zeros(0, 2))}, ValueError, "empty"),
    ({"batch_size": 0}, ValueError, "batch_size"),
    ({"shuffle": "yes"}, TypeError, "shuffle"),
    ({"drop_last": 1}, TypeError, "drop_last"),
])
def test_batch_loader_bad_input(kwargs, err, words):
    args = {"dataset": TensorDataset(torch.zeros(4, 2))} | kwargs
    with pytest.raises(err, match=words):
        D.batch_loader(args.pop("dataset"), **args)
