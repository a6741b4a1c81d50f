"""Ring all-reduce: the schedule (pure) and the real thing against dist.all_reduce on 2-4 ranks."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from labkit.parallel.examples import run_each
from labkit.parallel.launch import launch
from labkit.parallel.ring import (
    chunk_bounds,
    ring_all_reduce_,
    ring_bytes_sent,
    ring_check,
    ring_schedule,
)


@given(st.integers(0, 500), st.integers(1, 9))
def test_chunks_match_tensor_split(numel, p):
    bounds = chunk_bounds(numel, p)
    parts = torch.arange(numel).tensor_split(p)
    assert [e - s for s, e in bounds] == [len(t) for t in parts]
    assert bounds[0][0] == 0 and bounds[-1][1] == numel
    assert all(bounds[i][1] == bounds[i + 1][0] for i in range(p - 1))


def test_schedule_by_hand_for_three_ranks():
    rows = ring_schedule(3)
    rank0 = [(r["phase"], r["send_chunk"], r["recv_chunk"]) for r in rows if r["rank"] == 0]
    assert rank0 == [("reduce-scatter", 0, 2), ("reduce-scatter", 2, 1), ("all-gather", 1, 0), ("all-gather", 0, 2)]


@pytest.mark.parametrize("p", [1, 2, 3, 4, 7])
def test_schedule_properties(p):
    rows = ring_schedule(p)
    assert len(rows) == 2 * (p - 1) * p
    for phase in ("reduce-scatter", "all-gather"):
        for s in range(p - 1):
            step = [r for r in rows if r["phase"] == phase and r["step"] == s]
            for r in step:  # what rank r receives is what its left neighbour sends
                left = next(q for q in step if q["rank"] == (r["rank"] - 1) % p)
                assert r["recv_chunk"] == left["send_chunk"]
    for r in range(p):
        mine = [row for row in rows if row["rank"] == r and row["phase"] == "reduce-scatter"]
        # the reduce-scatter ends with rank r owning chunk r+1: it received every other rank's part of it
        assert sorted(row["send_chunk"] for row in mine) == sorted(set(range(p)) - {(r + 1) % p})
        gather = [row for row in rows if row["rank"] == r and row["phase"] == "all-gather"]
        if gather:
            assert gather[0]["send_chunk"] == (r + 1) % p  # and sends that finished chunk on first


@given(st.integers(1, 200), st.integers(1, 8))
def test_bytes_formula(k, p):
    n = k * p  # divisible: every rank sends 2(p-1)/p of the bytes
    assert ring_bytes_sent(n, p, 4) == [2 * (p - 1) * k * 4] * p


@given(st.integers(0, 300), st.integers(1, 8))
def test_bytes_total_for_any_length(n, p):
    # over all ranks, each chunk is sent p-1 times in each phase
    assert sum(ring_bytes_sent(n, p, 1)) == 2 * (p - 1) * n


@pytest.mark.parametrize("args, exc", [((10, 0), ValueError), ((10, 2.0), TypeError), ((-1, 2), ValueError),
                                       ((10, True), TypeError)])
def test_bad_arguments(args, exc):
    with pytest.raises(exc, match="world_size|numel"):
        chunk_bounds(*args)


def test_bad_element_size():
    with pytest.raises(ValueError, match="element_size"):
        ring_bytes_sent(10, 2, 0)


def test_ring_needs_a_process_group_and_a_tensor():
    with pytest.raises(TypeError, match="tensor"):
        ring_all_reduce_([1.0, 2.0])
    with pytest.raises(ValueError, match="process group"):
        ring_all_reduce_(torch.ones(3))


@pytest.mark.dist
def test_ring_equals_all_reduce_on_2_to_4_ranks():
    numels = [12, 10, 7, 3, 1, 0, 1001]
    per_rank = launch(run_each, 4, [(ring_check, {"numels": numels, "group_sizes": [2, 3, 4], "dtype": "int64"}),
                                    (ring_check, {"numels": numels, "group_sizes": [2, 3, 4], "dtype": "float32"})],
                      timeout=180)
    ints = [r for rank in per_rank for r in rank[0]]
    floats = [r for rank in per_rank for r in rank[1]]
    # every rank of every ring reported every length
    expected = sorted((k, r, n) for k in (2, 3, 4) for r in range(k) for n in numels)
    assert sorted((r["world_size"], r["rank"], r["numel"]) for r in ints) == expected
    assert all(r["max_abs_diff"] == 0 for r in ints)  # integers: exactly dist.all_reduce
    assert all(r["max_abs_diff"] <= 1e-5 * max(r["scale"], 1.0) for r in floats)
    assert all(r["bytes_sent"] == r["bytes_predicted"] for r in ints + floats)
    big = [r for r in floats if r["numel"] == 1001 and r["world_size"] == 4]
    assert sorted(r["bytes_sent"] for r in big) == [6004, 6004, 6008, 6008]
