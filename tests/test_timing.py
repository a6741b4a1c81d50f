"""labkit.timing: time_fn against known sleeps and a patched synchronize; compare's interleaved rounds,
medians and per-round speed-ups (checked with sleeps, which never return early)."""

from __future__ import annotations

import statistics
import time

import pytest
import torch

from labkit import timing
from labkit.timing import compare


def test_compare_orders_known_durations_and_checks_arguments():
    got = compare({"short": lambda: time.sleep(0.002), "long": lambda: time.sleep(0.008)}, rounds=3,
                  min_run_time=0.01)
    assert list(got) == ["short", "long"]
    assert got["short"]["median"] >= 0.002 and got["long"]["median"] >= 0.008  # sleep never returns early
    assert len(got["long"]["rounds"]) == 3 and got["short"]["speedup"] == 1.0
    assert got["long"]["speedup"] == statistics.median(a / b for a, b in zip(got["short"]["rounds"], got["long"]["rounds"]))
    with pytest.raises(ValueError, match="reference"):
        compare({"a": lambda: None}, reference="b")
    with pytest.raises(TypeError, match="fns"):
        compare({})
    with pytest.raises(TypeError, match="fns"):
        compare({"a": 3})
    with pytest.raises(ValueError, match="rounds"):
        compare({"a": lambda: None}, rounds=0)


def test_time_fn_measures_a_known_sleep():
    t = timing.time_fn(lambda: time.sleep(0.002), min_run_time=0.05, label="sleep")
    assert 0.0019 < t.median < 0.02
    assert t.runs >= 2 and t.iqr >= 0 and t.threads == torch.get_num_threads()
    assert "sleep" in str(t)


def test_time_fn_synchronizes_the_device(monkeypatch):
    calls = []
    monkeypatch.setattr(timing, "synchronize", lambda dev: calls.append(dev))
    timing.time_fn(lambda: None, device="cpu", warmup=1, min_run_time=0.01)
    assert len(calls) > 1 and all(d == torch.device("cpu") for d in calls)


def test_time_fn_restores_threads():
    before = torch.get_num_threads()
    t = timing.time_fn(lambda: torch.ones(8).sum(), threads=1, min_run_time=0.01)
    assert t.threads == 1 and torch.get_num_threads() == before


@pytest.mark.parametrize("kwargs, err", [
    ({"fn": 3}, TypeError), ({"min_run_time": 0}, ValueError), ({"warmup": -1}, ValueError),
    ({"threads": 0}, ValueError), ({"threads": 1.5}, TypeError), ({"device": "gpu"}, ValueError),
])
def test_time_fn_bad_input(kwargs, err):
    args = {"fn": lambda: None, **kwargs}
    fn = args.pop("fn")
    with pytest.raises(err):
        timing.time_fn(fn, **args)
