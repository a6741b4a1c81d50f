"""labkit.efficiency.loading: loaders deliver the same data however they are configured; bad settings fail clearly."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from labkit.efficiency.loading import (
    Augment,
    MemmapDataset,
    Transformed,
    build_loader,
    consume,
    first_batch_seconds,
    loader_throughput,
    pipeline_breakdown,
    write_memmap,
)


@pytest.fixture
def data(gen):
    x = torch.rand(40, 1, 6, 6, generator=gen)
    y = torch.randint(0, 10, (40,), generator=gen)
    return x, y


def test_memmap_round_trip_equals_memory(data, tmp_path):
    x, y = data
    ds = write_memmap(x, y, tmp_path)
    assert len(ds) == 40
    assert (tmp_path / "data_x.npy").is_file()
    for i in (0, 17, 39):
        xi, yi = ds[i]
        torch.testing.assert_close(xi, x[i])
        assert int(yi) == int(y[i])
    clone = pickle.loads(pickle.dumps(ds))  # what a worker process receives
    assert clone._arrays is None
    torch.testing.assert_close(clone[5][0], x[5])


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 2])
def test_loader_yields_every_sample_once(data, tmp_path, workers):
    x, y = data
    ds = write_memmap(x, y, tmp_path)
    loader = build_loader(ds, batch_size=8, num_workers=workers, shuffle=False,
                          persistent_workers=workers > 0)
    xs = torch.cat([b[0] for b in loader])
    torch.testing.assert_close(xs, x)
    assert consume(loader) == 40


def test_shuffled_loader_is_a_permutation(data):
    x, y = data
    loader = build_loader(TensorDataset(x, y), batch_size=7, shuffle=True, generator=torch.Generator().manual_seed(1))
    ys = torch.cat([b[1] for b in loader])
    assert sorted(ys.tolist()) == sorted(y.tolist())


def test_throughput_rows(data):
    x, y = data
    row = loader_throughput(build_loader(TensorDataset(x, y), batch_size=8), min_run_time=0.01)
    assert row["num_workers"] == 0 and row["samples_per_s"] > 0
    assert row["samples_per_s"] == pytest.approx(40 / row["epoch_s"])
    assert first_batch_seconds(build_loader(TensorDataset(x, y), batch_size=8)) > 0


def test_pipeline_breakdown_names_the_slower_part(data):
    import time

    x, y = data
    loader = build_loader(TensorDataset(x, y), batch_size=8)
    out = pipeline_breakdown(loader, lambda xb, yb: time.sleep(0.005), min_run_time=0.01)
    assert out["bound"] == "compute"  # 5 batches x 5 ms of "model" outweigh indexing 40 items
    assert out["compute_s"] >= 0.025
    with pytest.raises(TypeError, match="step"):
        pipeline_breakdown(loader, "model")


def test_augment_keeps_shape_and_range(gen):
    torch.manual_seed(0)
    img = torch.rand(1, 8, 8, generator=gen)
    out = Augment(shift=2, noise=0.1)(img)
    assert out.shape == img.shape and out.min() >= 0 and out.max() <= 1
    assert torch.equal(Augment(shift=0, noise=0.0)(img), img)
    ds = Transformed(TensorDataset(img[None].expand(3, 1, 8, 8), torch.arange(3)), Augment(shift=0, noise=0.0))
    assert int(ds[2][1]) == 2 and len(ds) == 3


def test_bad_settings_fail_clearly(data, tmp_path):
    x, y = data
    ds = TensorDataset(x, y)
    with pytest.raises(ValueError, match="persistent_workers=True needs num_workers >= 1"):
        build_loader(ds, num_workers=0, persistent_workers=True)
    with pytest.raises(ValueError, match="prefetch_factor needs num_workers >= 1"):
        build_loader(ds, num_workers=0, prefetch_factor=2)
    with pytest.raises(ValueError, match="prefetch_factor must be"):
        build_loader(ds, num_workers=1, prefetch_factor=0)
    with pytest.raises(ValueError, match="num_workers must be an int >= 0"):
        build_loader(ds, num_workers=-1)
    with pytest.raises(ValueError, match="batch_size"):
        build_loader(ds, batch_size=0)
    with pytest.raises(TypeError, match="num_workers"):
        build_loader(ds, num_workers=1.0)
    with pytest.raises(ValueError, match="empty"):
        build_loader(TensorDataset(torch.zeros(0, 2)))
    with pytest.raises(TypeError, match="dataset"):
        build_loader([1, 2, 3])
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="pin_memory"):
            build_loader(ds, pin_memory=True)
    with pytest.raises(ValueError, match="x_path"):
        MemmapDataset(tmp_path / "missing.npy", tmp_path / "y.npy")
    np.save(tmp_path / "a.npy", np.zeros((3, 2), dtype=np.float32))
    np.save(tmp_path / "b.npy", np.zeros(4, dtype=np.int64))
    with pytest.raises(ValueError, match="3 images but 4 labels"):
        MemmapDataset(tmp_path / "a.npy", tmp_path / "b.npy")
    with pytest.raises(ValueError, match="directory"):
        write_memmap(x, y, tmp_path / "nowhere")
    with pytest.raises(ValueError, match="shift"):
        Augment(shift=-1)
    with pytest.raises(TypeError, match="loader"):
        loader_throughput([(x, y)])
    with pytest.raises(TypeError, match="transform"):
        Transformed(ds, transform=3)


def test_pin_memory_allowed_with_cuda(monkeypatch, data):
    x, y = data
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    loader = build_loader(TensorDataset(x, y), pin_memory=True)
    assert loader.pin_memory
