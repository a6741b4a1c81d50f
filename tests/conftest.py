"""Shared fixtures and markers: hardware markers skip where the hardware is missing."""

from __future__ import annotations

import os

import matplotlib
import pytest
import torch

matplotlib.use("Agg")
os.environ.setdefault("LABKIT_STATIC_WIDGETS", "1")


def _has(kind: str) -> bool:
    from labkit.devices import available_devices

    return any(d.startswith(kind) for d in available_devices())


def pytest_collection_modifyitems(config, items):
    missing = {k: not _has(k) for k in ("cuda", "mps", "xla")}
    marks = {"gpu": "cuda", "mps": "mps", "xla": "xla"}
    for item in items:
        for mark, kind in marks.items():
            if mark in item.keywords and missing[kind]:
                item.add_marker(pytest.mark.skip(reason=f"no {kind} device on this machine"))


@pytest.fixture(params=None)
def device(request):
    """Each available device in turn (only 'cpu' on a machine without accelerators)."""
    return torch.device(request.param)


def pytest_generate_tests(metafunc):
    if "device" in metafunc.fixturenames:
        from labkit.devices import available_devices

        metafunc.parametrize("device", available_devices(), indirect=True)


@pytest.fixture
def gen():
    """A seeded torch.Generator for tests that draw random numbers."""
    return torch.Generator().manual_seed(0)
