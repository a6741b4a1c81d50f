"""Pipeline parallelism: the split model equals the unsplit one (outputs, gradients, parameters
after steps), with GPipe and 1F1B on real processes and through torch.distributed.pipelining;
saved-activation bytes against hand counts."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from labkit.parallel.launch import launch
from labkit.parallel.pipeline import (
    bubble_worker,
    measured_bubbles,
    partition,
    pipeline_worker,
    split_model,
    torch_pipelining_worker,
)
from labkit.parallel.problem import LiveActivationMeter, differences, make_problem, reference_run


def test_partition_by_hand():
    assert partition([1, 1, 1, 1], 2) == [(0, 2), (2, 4)]
    assert partition([4, 1, 1, 1, 1], 2) == [(0, 1), (1, 5)]
    assert partition([1, 2, 3, 4, 5], 3) == [(0, 3), (3, 4), (4, 5)]  # max 6; nothing beats it
    assert partition([3], 1) == [(0, 1)]


def test_partition_errors():
    with pytest.raises(ValueError, match="parts"):
        partition([1, 2], 0)
    with pytest.raises(ValueError, match="cannot cut 2 layers into 3"):
        partition([1, 2], 3)
    with pytest.raises(ValueError, match="costs"):
        partition([1, -2], 1)


def test_split_model_keeps_names_and_computes_the_same():
    model, x, _ = make_problem(8, 6, 4, seed=1)
    stages = split_model(model.layers, 3)
    assert [list(s._modules) for s in stages] == [["0", "1", "2", "3", "4"], ["5", "6", "7", "8"], ["9", "10", "11"]]
    h = x
    for s in stages:
        h = s(h)
    assert torch.equal(h, model(x))
    names = [n for s in stages for n, _ in s.named_parameters()]
    assert names == [n for n, _ in model.layers.named_parameters()]


def test_split_model_errors():
    with pytest.raises(TypeError, match="nn.Sequential"):
        split_model(nn.Linear(2, 2), 1)
    model, _, _ = make_problem(8, 2, 4)
    with pytest.raises(ValueError, match="only 2 layers"):
        split_model(model.layers, 3)


def test_make_problem_is_repeatable_and_checks_arguments():
    a, b = make_problem(8, 2, 4, seed=3), make_problem(8, 2, 4, seed=3)
    assert torch.equal(a[1], b[1]) and torch.equal(a[2], b[2])
    assert all(torch.equal(p, q) for p, q in zip(a[0].parameters(), b[0].parameters()))
    with pytest.raises(ValueError, match="depth"):
        make_problem(8, 0, 4)


def test_saved_tensor_meter_by_hand():
    layer = nn.Sequential(nn.Linear(4, 3), nn.ReLU())
    x = torch.randn(5, 4, requires_grad=True)
    meter = LiveActivationMeter(layer.parameters())
    with meter:
        y = layer(x)
    # Linear keeps its input (5x4) for the weight gradient; ReLU keeps its output (5x3): float32.
    assert meter.current == meter.peak == (5 * 4 + 5 * 3) * 4
    y.sum().backward()
    assert meter.current == 0 and meter.peak == 140
    counting_weights = LiveActivationMeter()
    with counting_weights:
        layer(x)
    assert counting_weights.peak == 140 + 3 * 4 * 4  # the weight too (needed for x's gradient)


def test_workers_need_a_process_group_and_check_arguments():
    for worker in (lambda: pipeline_worker(8, 2, 4, 2), lambda: torch_pipelining_worker(8, 2, 4, 2),
                   lambda: bubble_worker(8, 2, 4, (1, 2))):
        with pytest.raises(RuntimeError, match="launch"):
            worker()
    with pytest.raises(ValueError, match="micro_batches"):
        pipeline_worker(8, 2, 4, 8)
    with pytest.raises(ValueError, match="ms"):
        bubble_worker(8, 2, 4, ())
    with pytest.raises(ValueError, match="repeats"):
        bubble_worker(8, 2, 4, (1,), repeats=0)
    with pytest.raises(ValueError, match="results"):
        measured_bubbles([[{}], []])
    with pytest.raises(ValueError, match="steps"):
        reference_run(8, 2, 4, steps=0)


def _assert_matches(results, ref, *, steps_checked=True):
    for r in results:
        for name, g in r["grads"].items():
            torch.testing.assert_close(g, ref["grads"][name], rtol=1e-5, atol=1e-6)
        if steps_checked:
            for name, p in r["params"].items():
                torch.testing.assert_close(p, ref["params"][name], rtol=1e-5, atol=1e-6)
    names = [n for r in results for n in r["grads"]]
    assert sorted(names) == sorted(ref["grads"])  # every parameter lives on exactly one rank
    torch.testing.assert_close(results[-1]["output"], ref["output"], rtol=1e-5, atol=1e-6)


@pytest.mark.dist
def test_gpipe_two_ranks_equals_unsplit_with_uneven_micro_batches():
    # batch 30 in 4 micro-batches: 8, 8, 7, 7 rows (losses weighted by size)
    results = launch(pipeline_worker, 2, 16, 4, 30, 4, steps=3, lr=0.2, timeout=120, threads_per_rank=1)
    _assert_matches(results, reference_run(16, 4, 30, steps=3, lr=0.2))
    assert [len(ev) for ev in results[0]["events"]] == [8, 8, 8]  # 4 F + 4 B per step


@pytest.mark.dist
def test_1f1b_three_ranks_equals_unsplit():
    results = launch(pipeline_worker, 3, 8, 6, 24, 4, schedule="1f1b", steps=2, timeout=120, threads_per_rank=1)
    _assert_matches(results, reference_run(8, 6, 24, steps=2))
    # each cut carries the batch's activations (24 x 8 float32) one way and their gradients the other
    assert [r["sent_bytes"] for r in results] == [24 * 8 * 4, 2 * 24 * 8 * 4, 24 * 8 * 4]


@pytest.mark.dist
def test_torch_pipelining_gpipe_equals_unsplit():
    results = launch(torch_pipelining_worker, 2, 16, 4, 32, 4, timeout=120, threads_per_rank=1)
    _assert_matches(results, reference_run(16, 4, 32), steps_checked=False)


@pytest.mark.dist
def test_activation_memory_grows_with_micro_batches_in_flight():
    d, b, ms = 16, 4, (1, 4)
    results = launch(bubble_worker, 2, d, 4, b, ms, schedules=("gpipe", "1f1b"), repeats=1, timeout=120,
                     threads_per_rank=1)
    rows = measured_bubbles(results)
    assert [(r["schedule"], r["m"]) for r in rows] == [("gpipe", 1), ("gpipe", 4), ("1f1b", 1), ("1f1b", 4)]
    # per micro-batch, stage 0 keeps its input and 2 ReLU outputs; stage 1 its input, 1 ReLU output,
    # and the loss's output and target: (3 and 4) x b x d floats
    first, last = 3 * b * d * 4, 4 * b * d * 4
    by = {(r["schedule"], r["m"]): r["saved_peak_bytes"] for r in rows}
    assert by[("gpipe", 1)] == by[("1f1b", 1)] == [first, last]
    assert by[("gpipe", 4)] == [4 * first, 4 * last]  # all m in flight
    assert by[("1f1b", 4)] == [2 * first, last]  # at most p - s in flight
    for r in rows:
        assert r["formula"] == pytest.approx(1 / (r["m"] + 1))
        assert len(r["events"]) == 2 * 2 * r["m"] and 0 <= r["measured"] < 1 and 0 <= r["replayed"] < 1


def test_differences_by_hand():
    ref = {"output": torch.zeros(2), "grads": {"a": torch.zeros(3), "b": torch.zeros(1)},
           "params": {"a": torch.zeros(3), "b": torch.zeros(1)}}
    ranks = [{"output": None, "grads": {"a": torch.tensor([0.0, 0.5, 0.0])}, "params": {"a": torch.zeros(3)}},
             {"output": torch.tensor([0.0, -0.25]), "grads": {"b": torch.tensor([0.125])}}]
    d = differences(ranks, ref)
    assert d == {"output": 0.25, "grads": 0.5, "params": 0.0, "missing": []}
    assert differences(ranks[:1], ref)["missing"] == ["b"]
    with pytest.raises(ValueError, match="results must not be empty"):
        differences([], ref)
    with pytest.raises(ValueError, match="reference lacks"):
        differences(ranks, {"output": None})
