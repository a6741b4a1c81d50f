"""Data loading: how fast a ``DataLoader`` feeds the model, and when it is the bottleneck.

Lesson ``02_one_device_efficiency`` measures, on the learner's machine::

    throughput = samples in one epoch / median seconds per epoch      (samples / s)

for a loader with ``num_workers`` worker processes, ``pin_memory`` (page-locked host memory,
which lets copies to a GPU run asynchronously), ``persistent_workers`` (keep the workers
between epochs instead of starting them again) and ``prefetch_factor`` (batches each worker
prepares ahead). It compares data held in memory with data memory-mapped from ``.npy`` files
on disk (:class:`MemmapDataset`; the operating system pages it in on demand, and keeps it in
its page cache afterwards), and splits an epoch into data-only and compute-only time
(:func:`pipeline_breakdown`): if the loader alone is slower than the model alone, the data
pipeline, not the model, is what to speed up.

Datasets and transforms here are module-level classes so that worker processes started with
``spawn`` (macOS, Windows) can import them; a class defined in a notebook cell cannot.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from labkit import _args
from labkit.devices import get_device, synchronize
from labkit.timing import time_fn


class Augment:
    """A small, real per-image augmentation: random shift by up to ``shift`` pixels plus noise.

    ``x -> roll(x, (dy, dx)) + noise * N(0, 1)``, clamped to [0, 1]. It costs a few tens of
    microseconds per image, which is what makes the data pipeline visible next to a small model.
    """

    def __init__(self, shift: int = 2, noise: float = 0.05):
        _args.non_negative_int("shift", shift)
        _args.non_negative_float("noise", noise)
        self.shift, self.noise = shift, float(noise)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.shift:
            dy, dx = torch.randint(-self.shift, self.shift + 1, (2,)).tolist()
            x = torch.roll(x, shifts=(dy, dx), dims=(-2, -1))
        if self.noise:
            x = (x + self.noise * torch.randn_like(x)).clamp_(0, 1)
        return x


class Transformed(Dataset):
    """``dataset`` with ``transform`` applied to each input (labels untouched)."""

    def __init__(self, dataset: Dataset, transform: Callable[[torch.Tensor], torch.Tensor]):
        _args.instance("dataset", dataset, Dataset, "a torch Dataset")
        _args.function("transform", transform)
        self.dataset, self.transform = dataset, transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i):
        x, y = self.dataset[i]
        return self.transform(x), y


class MemmapDataset(Dataset):
    """Images and labels read from ``.npy`` files through ``np.load(mmap_mode='r')``.

    Nothing is read until an item is asked for; the files are opened lazily in each process
    (so the dataset pickles cheaply into worker processes). Write the files with
    :func:`write_memmap`.
    """

    def __init__(self, x_path: str | Path, y_path: str | Path):
        self.x_path, self.y_path = _args.path("x_path", x_path), _args.path("y_path", y_path)
        for name, p in (("x_path", self.x_path), ("y_path", self.y_path)):
            if not p.is_file():
                raise ValueError(f"{name} {str(p)!r} is not a file")
        x, y = np.load(self.x_path, mmap_mode="r"), np.load(self.y_path, mmap_mode="r")
        if len(x) != len(y):
            raise ValueError(f"{len(x)} images but {len(y)} labels")
        self._n = len(x)
        self._arrays = None

    def __getstate__(self):  # send paths, not open maps, to worker processes
        state = dict(self.__dict__)
        state["_arrays"] = None
        return state

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, i):
        if self._arrays is None:
            self._arrays = (np.load(self.x_path, mmap_mode="r"), np.load(self.y_path, mmap_mode="r"))
        x, y = self._arrays
        return torch.from_numpy(np.array(x[i])), torch.tensor(int(y[i]))


def write_memmap(x: torch.Tensor, y: torch.Tensor, directory: str | Path, *, name: str = "data") -> MemmapDataset:
    """Save ``x`` and ``y`` as ``<name>_x.npy`` / ``<name>_y.npy`` in ``directory``; return the dataset."""
    _args.tensor("x", x)
    _args.tensor("y", y)
    name = _args.file_name("name", name)  # '../escape' would write outside directory
    if len(x) != len(y) or len(x) == 0:
        raise ValueError(f"x and y must be non-empty and equally long, got {len(x)} and {len(y)}")
    d = _args.path("directory", directory)
    if not d.is_dir():
        raise ValueError(f"directory {str(d)!r} does not exist")
    xp, yp = d / f"{name}_x.npy", d / f"{name}_y.npy"
    np.save(xp, x.detach().cpu().numpy())
    np.save(yp, y.detach().cpu().numpy())
    return MemmapDataset(xp, yp)


def build_loader(dataset: Dataset, *, batch_size: int = 64, num_workers: int = 0, pin_memory: bool = False,
                 persistent_workers: bool = False, prefetch_factor: int | None = None, shuffle: bool = True,
                 generator: torch.Generator | None = None) -> DataLoader:
    """A DataLoader whose settings are checked first, with errors that say what to change.

    ``persistent_workers`` and ``prefetch_factor`` only mean something with worker processes,
    so they need ``num_workers >= 1``. ``pin_memory`` only helps copies to an accelerator.
    """
    _args.instance("dataset", dataset, Dataset, "a torch Dataset")
    if len(dataset) == 0:
        raise ValueError("dataset is empty")
    _args.positive_int("batch_size", batch_size)
    _args.non_negative_int("num_workers", num_workers)
    for flag, value in (("pin_memory", pin_memory), ("persistent_workers", persistent_workers), ("shuffle", shuffle)):
        _args.boolean(flag, value)
    if persistent_workers and num_workers == 0:
        raise ValueError("persistent_workers=True needs num_workers >= 1: with num_workers=0 the main "
                         "process loads the data and there are no workers to keep")
    if prefetch_factor is not None:
        if num_workers == 0:
            raise ValueError("prefetch_factor needs num_workers >= 1: only worker processes prefetch")
        _args.positive_int("prefetch_factor", prefetch_factor)
    if pin_memory and not torch.cuda.is_available():
        raise ValueError("pin_memory=True only helps copies to a CUDA GPU, and none is available here")
    if shuffle and generator is None:
        generator = torch.Generator().manual_seed(0)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator,
                      num_workers=num_workers, pin_memory=pin_memory, persistent_workers=persistent_workers,
                      prefetch_factor=prefetch_factor)


def consume(loader, *, device=None, step: Callable | None = None) -> int:
    """Iterate over one epoch of ``loader``, moving each batch to ``device`` and calling
    ``step(x, y)`` if given; returns the number of samples seen."""
    _args.iterable("loader", loader, "an iterable of (x, y) batches (a DataLoader)")
    if step is not None:
        _args.function("step", step)
    dev = get_device(device) if device is not None else torch.device("cpu")
    n = 0
    for x, y in loader:
        x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
        if step is not None:
            step(x, y)
        n += len(y)
    synchronize(dev)
    return n


def loader_throughput(loader: DataLoader, *, device=None, step: Callable | None = None,
                      min_run_time: float = 0.3, warmup: int = 1) -> dict:
    """Samples per second of whole epochs of ``loader`` (median over epochs, via ``time_fn``).

    With ``persistent_workers`` the workers start in the warm-up epoch and are reused; without,
    every epoch pays the start-up again, and so does this figure. ``step(x, y)`` adds the
    model's work per batch (default: none, the loader alone).
    """
    _args.instance("loader", loader, DataLoader, "a DataLoader")
    if step is not None:
        _args.function("step", step)
    _args.positive_float("min_run_time", min_run_time)
    _args.non_negative_int("warmup", warmup)
    dev = get_device(device) if device is not None else torch.device("cpu")
    n = len(loader) * loader.batch_size if loader.drop_last else len(loader.dataset)
    t = time_fn(lambda: consume(loader, device=dev, step=step), device=dev, warmup=warmup, min_run_time=min_run_time)
    return {"num_workers": loader.num_workers, "pin_memory": loader.pin_memory,
            "persistent_workers": loader.persistent_workers, "prefetch_factor": loader.prefetch_factor,
            "epoch_s": t.median, "samples_per_s": n / t.median}


def first_batch_seconds(loader: DataLoader) -> float:
    """Seconds until the first batch arrives: the worker start-up a non-persistent loader pays
    at every epoch."""
    _args.instance("loader", loader, DataLoader, "a DataLoader")
    start = time.perf_counter()
    it = iter(loader)
    next(it)
    elapsed = time.perf_counter() - start
    del it
    return elapsed


def pipeline_breakdown(loader: DataLoader, step: Callable, *, device=None, min_run_time: float = 0.3) -> dict:
    """Seconds per epoch for the loader alone, the model alone (on batches cached in memory) and
    both together, and which one bounds the epoch (``'data'`` or ``'compute'``)."""
    _args.instance("loader", loader, DataLoader, "a DataLoader")
    _args.function("step", step)
    _args.positive_float("min_run_time", min_run_time)
    dev = get_device(device) if device is not None else torch.device("cpu")
    cached = [(x.to(dev), y.to(dev)) for x, y in loader]

    def compute_only():
        for x, y in cached:
            step(x, y)

    data = time_fn(lambda: consume(loader, device=dev), device=dev, min_run_time=min_run_time, warmup=1).median
    compute = time_fn(compute_only, device=dev, min_run_time=min_run_time, warmup=1).median
    both = time_fn(lambda: consume(loader, device=dev, step=step), device=dev, min_run_time=min_run_time, warmup=1).median
    return {"data_s": data, "compute_s": compute, "both_s": both, "bound": "data" if data > compute else "compute"}
