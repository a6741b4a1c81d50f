"""Mixture of experts, and expert parallelism over ranks with all-to-all (lesson 04).

A mixture-of-experts MLP (Shazeer et al., 2017; GShard, Lepikhin et al., 2020; Switch,
Fedus et al., 2021) replaces one MLP by ``E`` expert MLPs and a router ``Linear(d, E)``:

    probs = softmax(x W_router^T)           one row of E probabilities per token
    top-k experts per token, gates = their probabilities (top-2: renormalised to sum to 1)
    y = sum over the token's kept choices of gate * expert(x)

Each expert takes at most ``capacity = ceil(capacity_factor * k * n_tokens / E)`` tokens of a
group (:func:`expert_capacity`); first choices are served before second choices, tokens in
order. An assignment past an expert's capacity is **dropped**: it adds nothing, so a token whose
every choice was dropped gets a **zero** output from this layer - in a residual block
``h + MoE(LN(h))`` it passes through unchanged on the residual.

**Expert parallelism** puts ``E/p`` experts on each of ``p`` ranks; every rank routes its own
tokens (its own group), then one ``all_to_all_single`` sends each token to the rank holding its
expert and a second brings the outputs back (gloo supports this form, with uneven split sizes;
not the list form). The router is replicated, so its gradient is all-reduced like data
parallelism's. :class:`MoE` is the single-process reference; with ``groups=p`` it applies the
capacity per rank-sized group exactly as the ranks do, so :func:`ep_worker` must reproduce it -
outputs, gradients, tokens per expert and the dropped share.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from labkit import _args
from labkit.parallel.comm import CountingComm, require_group
from labkit.parallel.launch import rank_device


def expert_capacity(n_tokens: int, n_experts: int, *, top_k: int = 1, capacity_factor: float = 1.25) -> int:
    """Tokens one expert takes from a group of ``n_tokens``: ``ceil(capacity_factor * top_k * n_tokens / n_experts)``."""
    n_tokens, n_experts = _args.positive_int("n_tokens", n_tokens), _args.positive_int("n_experts", n_experts)
    top_k = _args.integer("top_k", top_k, minimum=1, maximum=n_experts)
    capacity_factor = _args.positive_float("capacity_factor", capacity_factor)
    return math.ceil(capacity_factor * top_k * n_tokens / n_experts)


def route(logits: torch.Tensor, *, top_k: int = 1, capacity_factor: float = 1.25, groups: int = 1) -> dict:
    """Top-k routing with a capacity, for ``logits`` of shape ``(n_tokens, E)``.

    Returns ``expert`` and ``gate`` ``(n_tokens, k)`` (choices by preference), ``kept`` (False
    where the expert was full), ``capacity`` (per expert per group), ``wanted_per_expert`` and
    ``tokens_per_expert`` (assignments before and after the capacity, summed over the groups)
    and ``dropped_share`` (dropped assignments / all assignments). The ``groups`` are equal runs
    of consecutive tokens, each with its own capacity (one group per rank under expert parallelism)."""
    _args.tensor("logits", logits, dtype="floating", ndim=2, non_empty=True)
    n, n_experts = logits.shape
    groups = _args.positive_int("groups", groups)
    if n % groups:
        raise ValueError(f"groups={groups} must divide the {n} tokens")
    capacity = expert_capacity(n // groups, n_experts, top_k=top_k, capacity_factor=capacity_factor)
    gate, expert = torch.softmax(logits, dim=-1).topk(top_k, dim=-1)
    if top_k > 1:
        gate = gate / gate.sum(dim=-1, keepdim=True)
    kept = torch.empty_like(expert, dtype=torch.bool)
    for g in range(groups):
        rows = slice(g * n // groups, (g + 1) * n // groups)
        queue = F.one_hot(expert[rows].t().reshape(-1), n_experts)  # choice-major: all first choices first
        place = (queue.cumsum(0) * queue).sum(-1) - 1                  # place in its expert's queue
        kept[rows] = (place < capacity).view(top_k, -1).t()
    return {"expert": expert, "gate": gate, "kept": kept, "capacity": capacity,
            "wanted_per_expert": torch.bincount(expert.flatten(), minlength=n_experts),
            "tokens_per_expert": torch.bincount(expert[kept], minlength=n_experts),
            "dropped_share": 1.0 - kept.sum().item() / kept.numel()}


def _expert(d: int, hidden: int) -> nn.Module:
    return nn.Sequential(nn.Linear(d, hidden), nn.GELU(), nn.Linear(hidden, d))


class MoE(nn.Module):
    """The single-process mixture of experts: ``forward(x, groups=1) -> (y, routing)`` for
    tokens ``x`` of shape ``(n_tokens, d)``; ``routing`` is :func:`route`'s report."""

    def __init__(self, d: int, hidden: int, n_experts: int, *, top_k: int = 1, capacity_factor: float = 1.25):
        super().__init__()
        d, hidden = _args.positive_int("d", d), _args.positive_int("hidden", hidden)
        self.n_experts = _args.positive_int("n_experts", n_experts)
        self.top_k = _args.integer("top_k", top_k, minimum=1, maximum=n_experts)
        self.capacity_factor = _args.positive_float("capacity_factor", capacity_factor)
        self.router = nn.Linear(d, n_experts, bias=False)
        self.experts = nn.ModuleList(_expert(d, hidden) for _ in range(n_experts))

    def route(self, x: torch.Tensor, groups: int = 1) -> dict:
        return route(self.router(x), top_k=self.top_k, capacity_factor=self.capacity_factor, groups=groups)

    def forward(self, x: torch.Tensor, *, groups: int = 1):
        _args.tensor("x", x, dtype="floating", ndim=2, non_empty=True)
        r = self.route(x, groups)
        y = torch.zeros_like(x)
        for e, expert in enumerate(self.experts):
            token, choice = ((r["expert"] == e) & r["kept"]).nonzero(as_tuple=True)
            if len(token):
                y = y.index_add(0, token, r["gate"][token, choice, None] * expert(x[token]))
        return y, r


class _AllToAll(torch.autograd.Function):
    """``all_to_all_single`` forward; the reverse exchange (splits swapped) backward."""

    @staticmethod
    def forward(ctx, x, comm: CountingComm, output_splits, input_splits):
        ctx.comm, ctx.splits = comm, (output_splits, input_splits)
        return comm.all_to_all_single(x, output_splits, input_splits)

    @staticmethod
    def backward(ctx, grad):
        output_splits, input_splits = ctx.splits
        return ctx.comm.all_to_all_single(grad.contiguous(), input_splits, output_splits), None, None, None


class ExpertParallelMoE(nn.Module):
    """This rank's share of a :class:`MoE`: the (replicated) router and experts
    ``rank E/p .. (rank+1) E/p - 1``. ``forward(x) -> (y, routing)`` for this rank's tokens."""

    def __init__(self, moe: MoE, comm: CountingComm):
        super().__init__()
        _args.module("moe", moe, MoE)
        _args.instance("comm", comm, CountingComm, "a labkit.parallel.comm.CountingComm")
        if moe.n_experts % comm.world_size:
            raise ValueError(f"n_experts={moe.n_experts} must be divisible by the world size {comm.world_size}")
        self.comm, self.n_experts, self.top_k, self.capacity_factor = comm, moe.n_experts, moe.top_k, moe.capacity_factor
        self.local = moe.n_experts // comm.world_size
        self.first = comm.rank * self.local
        self.router = copy.deepcopy(moe.router)
        self.experts = nn.ModuleList(copy.deepcopy(moe.experts[self.first + j]) for j in range(self.local))
        self.received_per_expert = torch.zeros(self.local, dtype=torch.long)  # tokens my experts ran, last forward

    def forward(self, x: torch.Tensor):
        _args.tensor("x", x, dtype="floating", ndim=2, non_empty=True)
        p, comm = self.comm.world_size, self.comm
        r = route(self.router(x), top_k=self.top_k, capacity_factor=self.capacity_factor)
        token, choice = r["kept"].nonzero(as_tuple=True)
        order = torch.argsort(r["expert"][token, choice], stable=True)  # rows grouped by expert = by rank
        token, choice = token[order], choice[order]
        send = torch.bincount(r["expert"][token, choice], minlength=self.n_experts)
        # 1. how many rows each rank will receive from me, per expert of its own
        recv = comm.all_to_all_single(send, [self.local] * p, [self.local] * p).view(p, self.local)
        in_splits, out_splits = send.view(p, self.local).sum(1).tolist(), recv.sum(1).tolist()
        # 2. tokens to their experts' ranks: rows arrive by source rank, then by expert
        rows = _AllToAll.apply(x[token], comm, out_splits, in_splits)
        which = torch.arange(self.local).repeat(p).repeat_interleave(recv.flatten())
        out = torch.zeros_like(rows)
        for j, expert in enumerate(self.experts):
            mine = (which == j).nonzero(as_tuple=True)[0]
            if len(mine):
                out = out.index_add(0, mine, expert(rows[mine]))
        self.received_per_expert = recv.sum(0)
        # 3. outputs back to the tokens' ranks, weighted by the gates and summed per token
        back = _AllToAll.apply(out, comm, in_splits, out_splits)
        y = torch.zeros_like(x).index_add(0, token, r["gate"][token, choice, None] * back)
        return y, r


def moe_problem(d: int = 16, hidden: int = 32, n_experts: int = 4, tokens: int = 32, *, top_k: int = 1,
                capacity_factor: float = 1.25, seed: int = 0):
    """The reference :class:`MoE` (built from ``seed``), tokens ``x`` and targets ``y`` of shape
    ``(tokens, d)``: the same on every rank."""
    _args.positive_int("tokens", tokens)
    _args.non_negative_int("seed", seed)
    torch.manual_seed(seed)  # nn.Linear initialisation uses the default generator
    moe = MoE(d, hidden, n_experts, top_k=top_k, capacity_factor=capacity_factor)
    g = torch.Generator().manual_seed(seed + 1)
    return moe, torch.randn(tokens, d, generator=g), torch.randn(tokens, d, generator=g)


def _report(routing: dict) -> dict:
    return {"tokens_per_expert": routing["tokens_per_expert"], "wanted_per_expert": routing["wanted_per_expert"],
            "dropped_share": routing["dropped_share"], "capacity": routing["capacity"]}


def moe_reference(d: int = 16, hidden: int = 32, n_experts: int = 4, tokens: int = 32, *, top_k: int = 1,
                  capacity_factor: float = 1.25, groups: int = 1, seed: int = 0) -> dict:
    """The MoE in one process (capacity per group of ``tokens / groups``): output, gradients,
    tokens per expert (kept and wanted) and the dropped share."""
    moe, x, y = moe_problem(d, hidden, n_experts, tokens, top_k=top_k, capacity_factor=capacity_factor, seed=seed)
    x.requires_grad_()  # as inside a model: the tokens' gradients flow back through the exchange
    out, routing = moe(x, groups=groups)
    (((out - y) ** 2).sum() / y.numel()).backward()
    return {"output": out.detach(), "input_grad": x.grad, "grads": {n: p.grad for n, p in moe.named_parameters() if p.grad is not None},
            **_report(routing)}


def ep_worker(d: int = 16, hidden: int = 32, n_experts: int = 4, tokens: int = 32, *, top_k: int = 1,
              capacity_factor: float = 1.25, seed: int = 0) -> dict:
    """One forward/backward of :class:`ExpertParallelMoE`, each rank routing its ``tokens/p``
    consecutive tokens: the output gathered whole, every gradient (experts gathered from their
    ranks, the router all-reduced), tokens per expert (routed, and as received by the experts'
    ranks), the dropped share, and the all-to-all bytes forward and backward."""
    require_group("ep_worker")
    moe, x, y = moe_problem(d, hidden, n_experts, tokens, top_k=top_k, capacity_factor=capacity_factor, seed=seed)
    comm = CountingComm(device=rank_device())
    p, rank = comm.world_size, comm.rank
    if tokens % p:
        raise ValueError(f"tokens={tokens} must be divisible by the world size {p}")
    ep = ExpertParallelMoE(moe, comm)
    mine = slice(rank * tokens // p, (rank + 1) * tokens // p)
    x = x[mine].clone().requires_grad_()
    out, routing = ep(x)
    forward_bytes = comm.bytes("all_to_all")
    (((out - y[mine]) ** 2).sum() / y.numel()).backward()
    backward_bytes = comm.bytes("all_to_all") - forward_bytes
    comm.all_reduce(ep.router.weight.grad)  # replicated router: sum of every rank's tokens' gradients
    grads = {"router.weight": ep.router.weight.grad.clone()}
    for j, expert in enumerate(ep.experts):
        for name, prm in expert.named_parameters():
            parts = [torch.empty_like(prm.grad) for _ in range(p)]
            dist.all_gather(parts, prm.grad)  # plain torch.distributed: outside the count
            grads.update({f"experts.{r * ep.local + j}.{name}": g for r, g in enumerate(parts)})
    report = _report(routing)
    for key in ("tokens_per_expert", "wanted_per_expert"):
        dist.all_reduce(report[key])  # summed over the ranks' groups
    dropped = torch.tensor([routing["dropped_share"] * routing["kept"].numel()])
    dist.all_reduce(dropped)
    outs, input_grads = [torch.empty_like(out) for _ in range(p)], [torch.empty_like(x) for _ in range(p)]
    dist.all_gather(outs, out.detach())
    dist.all_gather(input_grads, x.grad)
    received = [torch.empty_like(ep.received_per_expert) for _ in range(p)]
    dist.all_gather(received, ep.received_per_expert)
    return {**report, "rank": rank, "output": torch.cat(outs).cpu(), "input_grad": torch.cat(input_grads).cpu(), "grads": {n: g.cpu() for n, g in grads.items()},
            "dropped_share": dropped.item() / (tokens * top_k), "received_per_expert": torch.cat(received),
            "local_tokens_per_expert": routing["tokens_per_expert"],
            "all_to_all_bytes": {"forward": forward_bytes, "backward": backward_bytes},
            "router_all_reduce_bytes": comm.bytes("all_reduce")}


CASES = {"top1": {"top_k": 1, "capacity_factor": 4.0}, "top2": {"top_k": 2, "capacity_factor": 4.0},
         "top1_tight": {"top_k": 1, "capacity_factor": 1.0}, "top2_tight": {"top_k": 2, "capacity_factor": 1.0}}


def ep_comparison_worker(d: int = 16, hidden: int = 32, n_experts: int = 4, tokens: int = 32, *, seed: int = 0) -> dict:
    """One launch for lesson 04: :func:`ep_worker` for each of :data:`CASES` (top-1 and top-2,
    with a capacity no expert fills - ``capacity_factor = E`` - and a tight one, 1.0)."""
    return {name: ep_worker(d, hidden, n_experts, tokens, seed=seed, **case) for name, case in CASES.items()}
