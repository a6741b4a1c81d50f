"""Mixture of experts: routing and capacity worked by hand, the MoE against a token-by-token
loop, and expert parallelism over two ranks (all_to_all_single on gloo) equal to the
single-process MoE - outputs, gradients, tokens per expert, dropped share and bytes moved."""

from __future__ import annotations

import pytest
import torch

from labkit.parallel.comm import CountingComm
from labkit.parallel.experts import (
    CASES,
    ExpertParallelMoE,
    MoE,
    ep_comparison_worker,
    ep_worker,
    expert_capacity,
    moe_problem,
    moe_reference,
    route,
)
from labkit.parallel.launch import launch

D, HIDDEN, E, TOKENS, P = 16, 32, 4, 32, 2


def test_capacity_by_hand():
    assert expert_capacity(10, 4) == 4                 # ceil(1.25 * 10 / 4) = ceil(3.125)
    assert expert_capacity(10, 4, top_k=2) == 7        # ceil(1.25 * 2 * 10 / 4) = ceil(6.25)
    assert expert_capacity(8, 4, capacity_factor=1.0) == 2
    with pytest.raises(ValueError, match="top_k"):
        expert_capacity(8, 4, top_k=5)
    with pytest.raises(ValueError, match="capacity_factor"):
        expert_capacity(8, 4, capacity_factor=0.0)


# 4 tokens, 2 experts; preferences: t0 (0, 1), t1 (1, 0), t2 (0, 1), t3 (0, 1)
LOGITS = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 0.5], [3.0, 0.0]])


def test_top2_routing_with_a_capacity_by_hand():
    # capacity = ceil(0.5 * 2 * 4 / 2) = 2 per expert. First choices are served first: expert 0
    # takes t0, t2 (t3 dropped), expert 1 takes t1; then second choices: t0 -> expert 1 (kept,
    # its 2nd), t1 -> expert 0 (full), t2 and t3 -> expert 1 (full).
    r = route(LOGITS, top_k=2, capacity_factor=0.5)
    assert r["capacity"] == 2
    assert r["expert"].tolist() == [[0, 1], [1, 0], [0, 1], [0, 1]]
    assert r["kept"].tolist() == [[True, True], [True, False], [True, False], [False, False]]
    assert r["tokens_per_expert"].tolist() == [2, 2] and r["wanted_per_expert"].tolist() == [4, 4]
    assert r["dropped_share"] == 0.5
    torch.testing.assert_close(r["gate"].sum(-1), torch.ones(4))  # top-2 gates renormalised
    p = torch.softmax(LOGITS[0], -1)
    torch.testing.assert_close(route(LOGITS[:1], top_k=1)["gate"], p[:1].view(1, 1))  # top-1: the probability


def test_groups_have_their_own_capacity():
    # two groups of two tokens, capacity ceil(0.5 * 2 * 2 / 2) = 1 each
    r = route(LOGITS, top_k=2, capacity_factor=0.5, groups=2)
    assert r["capacity"] == 1
    assert r["kept"].tolist() == [[True, False], [True, False], [True, True], [False, False]]
    assert r["tokens_per_expert"].tolist() == [2, 2] and r["dropped_share"] == 0.5
    with pytest.raises(ValueError, match="groups"):
        route(LOGITS, groups=3)


@pytest.mark.parametrize("top_k,capacity_factor", [(1, 4.0), (2, 4.0), (1, 0.5), (2, 0.75)])
def test_moe_equals_a_token_by_token_loop(top_k, capacity_factor):
    moe, x, _ = moe_problem(D, HIDDEN, E, 12, top_k=top_k, capacity_factor=capacity_factor)
    y, r = moe(x)
    logits = x @ moe.router.weight.t()
    for t in range(len(x)):
        probs = torch.softmax(logits[t], -1)
        top = probs.topk(top_k)
        gates = top.values / top.values.sum() if top_k > 1 else top.values
        want = sum((g * moe.experts[int(e)](x[t]) for g, e, kept in zip(gates, top.indices, r["kept"][t]) if kept),
                   torch.zeros(D))  # a token whose every choice was dropped gets zero
        torch.testing.assert_close(y[t], want)
    assert (r["dropped_share"] > 0) == (capacity_factor < 1)  # the tight cases do drop tokens


def test_a_group_of_one_equals_the_moe():
    moe, x, _ = moe_problem(D, HIDDEN, E, 12, top_k=2, capacity_factor=1.0)
    ep = ExpertParallelMoE(moe, CountingComm())
    torch.testing.assert_close(ep(x)[0], moe(x)[0])
    assert ep.received_per_expert.tolist() == moe(x)[1]["tokens_per_expert"].tolist()


def test_errors():
    with pytest.raises(ValueError, match="top_k"):
        MoE(4, 8, 2, top_k=3)
    with pytest.raises(TypeError, match="moe"):
        ExpertParallelMoE(torch.nn.Linear(2, 2), CountingComm())
    with pytest.raises(TypeError, match="logits"):
        route(torch.zeros(3, 2, dtype=torch.long))
    with pytest.raises(TypeError, match="x"):
        MoE(4, 8, 2)(torch.zeros(3, 4, dtype=torch.long))
    for worker in (ep_worker, ep_comparison_worker):
        with pytest.raises(RuntimeError, match="launch"):
            worker()


@pytest.fixture(scope="module")
def two_ranks():
    """One launch for the dist tests: every case of CASES on 2 ranks, 2 experts each."""
    return launch(ep_comparison_worker, P, D, HIDDEN, E, TOKENS, timeout=240, threads_per_rank=1)


def _assert_equal(report, ref):
    for key in ("output", "input_grad"):
        torch.testing.assert_close(report[key], ref[key], rtol=1e-5, atol=1e-5, msg=key)
    assert sorted(report["grads"]) == sorted(ref["grads"])
    for name, g in report["grads"].items():
        torch.testing.assert_close(g, ref["grads"][name], rtol=1e-5, atol=1e-5, msg=name)


@pytest.mark.dist
@pytest.mark.parametrize("case", ["top1", "top2"])
def test_expert_parallel_equals_the_moe_when_nothing_is_dropped(two_ranks, case):
    ref = moe_reference(D, HIDDEN, E, TOKENS, **CASES[case])  # one process, one group
    assert ref["dropped_share"] == 0
    for r in two_ranks:
        _assert_equal(r[case], ref)
        assert r[case]["dropped_share"] == 0
        assert r[case]["tokens_per_expert"].tolist() == ref["tokens_per_expert"].tolist()
        assert sum(r[case]["tokens_per_expert"].tolist()) == TOKENS * CASES[case]["top_k"]


@pytest.mark.dist
@pytest.mark.parametrize("case", ["top1_tight", "top2_tight"])
def test_tight_capacity_drops_what_the_reference_drops(two_ranks, case):
    ref = moe_reference(D, HIDDEN, E, TOKENS, groups=P, **CASES[case])  # each rank's tokens: a group
    assert ref["dropped_share"] > 0
    for r in two_ranks:
        rep = r[case]
        assert rep["dropped_share"] == ref["dropped_share"]
        assert rep["tokens_per_expert"].tolist() == ref["tokens_per_expert"].tolist()
        assert rep["received_per_expert"].tolist() == ref["tokens_per_expert"].tolist()  # what the experts ran
        assert rep["wanted_per_expert"].tolist() == ref["wanted_per_expert"].tolist()
        _assert_equal(rep, ref)


@pytest.mark.dist
@pytest.mark.parametrize("case", list(CASES))
def test_all_to_all_bytes_match_the_routing(two_ranks, case):
    moe, x, _ = moe_problem(D, HIDDEN, E, TOKENS, **CASES[case])
    per = TOKENS // P
    counts = [moe.route(x[g * per:(g + 1) * per])["tokens_per_expert"] for g in range(P)]  # group g's kept tokens
    local = E // P
    for r in two_ranks:
        rank = r[case]["rank"]
        mine = slice(rank * local, (rank + 1) * local)
        sent_away = int(counts[rank].sum() - counts[rank][mine].sum())
        came_in = sum(int(counts[s][mine].sum()) for s in range(P) if s != rank)
        rows = (sent_away + came_in) * D * 4  # tokens out + outputs back (or their gradients)
        assert r[case]["all_to_all_bytes"] == {"forward": (E - local) * 8 + rows, "backward": rows}
        assert r[case]["router_all_reduce_bytes"] == E * D * 4
