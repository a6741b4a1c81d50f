"""The all-reduce cost model: the fit recovers known parameters; timing collectives on real ranks."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from labkit.parallel.cost import (
    CostModel,
    fit_cost_model,
    ring_traffic,
    sweep_functions,
    sweep_rows,
)
from labkit.parallel.launch import launch


def _rows(alpha, bandwidth, sizes, ps, overhead=0.0):
    """Rows that follow the ring model exactly: overhead + 2(p-1) alpha + 2(p-1)/p N / bandwidth."""
    return [{"bytes": n, "world_size": p, "seconds": overhead + 2 * (p - 1) * alpha + 2 * (p - 1) / p * n / bandwidth}
            for n in sizes for p in ps]


@given(st.floats(1e-5, 1e-2), st.floats(1e8, 1e11), st.floats(0, 1e-2), st.booleans())
def test_fit_recovers_exact_parameters(alpha, bandwidth, overhead, relative):
    m = fit_cost_model(_rows(alpha, bandwidth, [2**k for k in range(14, 27, 3)], [2, 3, 4], overhead),
                       relative=relative)
    assert math.isclose(m.alpha, alpha, rel_tol=1e-6, abs_tol=1e-9)
    assert math.isclose(m.overhead, overhead, rel_tol=1e-6, abs_tol=1e-9)
    assert math.isclose(m.bandwidth, bandwidth, rel_tol=1e-6)
    assert m.r2 > 0.999999 and m.points == 15


def test_one_world_size_cannot_separate_overhead_from_latency():
    # at p = 2 the fit sees overhead + 2 alpha as one intercept: alpha absorbs the overhead
    m = fit_cost_model(_rows(1e-4, 1e9, [2**k for k in range(14, 27, 3)], [2], overhead=4e-4))
    assert m.overhead == 0.0
    assert math.isclose(m.alpha, 1e-4 + 4e-4 / 2, rel_tol=1e-6)
    assert math.isclose(m.bandwidth, 1e9, rel_tol=1e-6)


def test_prediction_by_hand():
    m = CostModel(alpha=1e-3, bandwidth=1e9)
    assert m.predict(10**9, 2) == pytest.approx(2 * 1e-3 + 1.0)  # 2(2-1) steps; 2(2-1)/2 = 1 x 1 GB at 1 GB/s
    assert m.predict(10**9, 4) == pytest.approx(6 * 1e-3 + 1.5)  # 2(4-1) steps; 2(4-1)/4 = 1.5 x 1 GB
    assert CostModel(alpha=1e-3, bandwidth=1e9, overhead=5e-3).predict(10**9, 4) == pytest.approx(5e-3 + 6e-3 + 1.5)
    assert m.predict(10**9, 1) == 0.0
    assert "GB/s" in str(m)


def test_negative_intercept_is_held_at_zero():
    rows = [{"traffic": 1e6, "seconds": 0.5e-3}, {"traffic": 1e7, "seconds": 10e-3}, {"traffic": 2e7, "seconds": 20e-3}]
    m = fit_cost_model(rows, relative=False)  # the free fit would give alpha < 0
    assert m.alpha == 0.0 and m.bandwidth > 0


def test_single_rank_rows_are_ignored():
    rows = _rows(1e-4, 1e9, [1e5, 1e6], [2]) + [{"bytes": 1e7, "world_size": 1, "seconds": 123.0}]
    assert fit_cost_model(rows).points == 2


@pytest.mark.parametrize("rows, word", [
    ([], "at least 2"),
    ([{"traffic": 1e6, "seconds": 1e-3}, {"traffic": 1e6, "seconds": 2e-3}], "same traffic"),
    ([{"traffic": 1e6, "seconds": 0.0}, {"traffic": 2e6, "seconds": 2e-3}], "positive"),
    ([{"traffic": 1e6, "seconds": 3e-3}, {"traffic": 2e6, "seconds": 1e-3}], "noisy"),
])
def test_fit_errors(rows, word):
    with pytest.raises(ValueError, match=word):
        fit_cost_model(rows)


def test_ring_traffic():
    assert ring_traffic(1000, 1) == 0
    assert ring_traffic(1000, 2) == 1000
    assert ring_traffic(1000, 4) == 1500
    with pytest.raises(ValueError, match="nbytes"):
        ring_traffic(-1, 2)
    with pytest.raises(ValueError, match="world_size"):
        ring_traffic(10, 0)


def test_sweep_arguments():
    with pytest.raises(ValueError, match="sizes_mb"):
        sweep_functions([])
    with pytest.raises(ValueError, match="sizes_mb"):
        sweep_functions([1, -2])
    with pytest.raises(ValueError, match="impls"):
        sweep_functions([1], ("nccl",))
    assert sorted(sweep_functions([0.5, 2], ("gloo", "ring"))) == ["gloo 0.5", "gloo 2.0", "ring 0.5", "ring 2.0"]
    rows = sweep_rows({"gloo 1.0": {"median": 2e-3, "iqr": 0.0}, "compute": {"median": 1.0, "iqr": 0.0}}, 2)
    assert rows == [{"impl": "gloo", "world_size": 2, "bytes": 2**20, "traffic": 2**20, "seconds": 2e-3, "iqr": 0.0,
                     "busbw_gbs": 2**20 / 2e-3 / 1e9, "algbw_gbs": 2**20 / 2e-3 / 1e9}]
    p4 = sweep_rows({"ring 1.0": {"median": 2e-3, "iqr": 0.0}}, 4)[0]
    assert p4["busbw_gbs"] == pytest.approx(p4["algbw_gbs"] * 2 * 3 / 4)  # nccl-tests: busbw = algbw x 2(p-1)/p


@pytest.mark.dist
def test_sweep_on_two_ranks_is_consistent():
    from labkit.parallel.cost import allreduce_sweep

    per_rank = launch(allreduce_sweep, 2, [0.0625, 1.0], impls=("gloo", "ring"), repeats=3, timeout=120)
    assert per_rank[0] == per_rank[1]  # every rank reports the slowest rank's times
    rows = per_rank[0]
    assert {(r["impl"], r["bytes"]) for r in rows} == {(i, b) for i in ("gloo", "ring") for b in (2**16, 2**20)}
    assert all(r["seconds"] > 0 and r["traffic"] == r["bytes"] for r in rows)
    # (no fit here: two noisy sizes on a busy machine may even come out in the wrong order)
