"""Interleaved 1F1B on real processes (torch.distributed.pipelining): the gradients of one process,
and PyTorch's op order equal to labkit's simulator's (Megatron's schedule)."""

from __future__ import annotations

import pytest
import torch

from labkit.parallel.examples import run_each
from labkit.parallel.launch import launch
from labkit.parallel.pipeline_interleaved import schedule_ops, torch_interleaved_worker
from labkit.parallel.problem import reference_run
from labkit.parallel.schedule import interleaved_order

CASES = [  # (width, depth, batch, micro_batches, virtual_stages) on 2 ranks: depth = p x v chunks
    (16, 4, 32, 4, 2),
    (16, 4, 32, 2, 2),  # m == p (where Megatron-LM would run every forward first)
    (8, 8, 16, 4, 4),
]


def test_schedule_ops_reads_actions():
    from torch.distributed.pipelining.schedules import _Action, _ComputationType

    actions = [None, _Action(3, _ComputationType.FORWARD, 1), _Action(1, _ComputationType.FULL_BACKWARD, 0)]
    assert schedule_ops(actions, 2) == [("F", 1, 1), ("B", 0, 0)]
    with pytest.raises(ValueError, match="full-backward"):
        schedule_ops([_Action(0, _ComputationType.BACKWARD_WEIGHT, 0)], 2)


@pytest.mark.dist
def test_torch_interleaved_equals_unsplit_and_runs_labkits_order():
    calls = [(torch_interleaved_worker, {"width": w, "depth": d, "batch": b, "micro_batches": m, "virtual_stages": v})
             for w, d, b, m, v in CASES]
    ranks = launch(run_each, 2, calls, timeout=240, threads_per_rank=1)
    for k, (w, d, b, m, v) in enumerate(CASES):
        results = [ranks[0][k], ranks[1][k]]
        ref = reference_run(w, d, b)
        assert sorted(n for r in results for n in r["grads"]) == sorted(ref["grads"])
        for r in results:
            for name, g in r["grads"].items():
                torch.testing.assert_close(g, ref["grads"][name], rtol=1e-5, atol=1e-6)
            assert r["order"] == interleaved_order(2, m, v)[r["rank"]]
        torch.testing.assert_close(results[1]["output"], ref["output"], rtol=1e-5, atol=1e-6)
