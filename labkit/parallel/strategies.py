"""When to use which: what data, pipeline and tensor parallelism send and store (lesson 04).

For the lesson's model - ``L`` equal ``d x d`` Linear layers (``P = L (d^2 + d)`` parameters)
trained on a batch of ``B`` rows over ``p`` ranks, ``e`` bytes per number - one training step
costs each rank:

============  =======================================  =====================================
strategy      sent per rank per step                   parameters per rank / activations
============  =======================================  =====================================
data (DP)     all-reduce of all gradients: ``P e``      ``P`` / ``B/p`` rows through ``L`` layers
              (a ring puts ``2(p-1)/p P e`` on the wire)
pipeline (PP) activations and their gradients at the    ``P/p`` / GPipe: ``B`` rows through
              cuts: ``B d e`` each way (<= ``2 B d e``)  ``L/p`` layers; 1F1B: ``min(p, m)/m`` of it
tensor (TP)   ``L - 1`` all-reduces of ``B d e``        ``~P/p`` / full rows at each pair's input
============  =======================================  =====================================

DP's traffic grows with the model, PP's and TP's with the batch; TP's sits on the critical path
of every layer pair, so it wants the fastest link. :class:`labkit.parallel.comm.CountingComm`
wraps torch.distributed and counts every byte the lesson's code hands to it, so :func:`strategy_table` can be checked
against the bytes actually sent (``tests/test_strategies.py``). The *wire* bytes are not measured:
gloo's all-reduce does not report what it sends, so they are **derived** from the counted
payloads with the ring formula (``2(p-1)/p`` of an all-reduce, :meth:`CountingComm.wire_bytes`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

from labkit import _args
from labkit.models import count_parameters
from labkit.parallel.comm import CountingComm, counting_allreduce_hook, require_group
from labkit.parallel.launch import rank_device
from labkit.parallel.pipeline import pipeline_worker
from labkit.parallel.problem import LiveActivationMeter, make_problem
from labkit.parallel.tensor_parallel import tp_worker


@dataclass(frozen=True)
class Workload:
    """The lesson's model and batch: ``depth`` Linear(width, width) layers (ReLU between, MSE
    loss), ``batch`` rows, over ``ranks`` ranks; ``micro_batches`` for pipelines; Adam keeps
    ``optimizer_slots=2`` numbers per parameter."""

    width: int
    depth: int
    batch: int
    ranks: int
    micro_batches: int = 1
    bytes_per_element: int = 4
    optimizer_slots: int = 2

    def __post_init__(self):
        for name in ("width", "depth", "batch", "ranks", "micro_batches", "bytes_per_element"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if self.optimizer_slots < 0:
            raise ValueError(f"optimizer_slots must be >= 0, got {self.optimizer_slots}")
        if self.depth % self.ranks or self.batch % self.ranks or self.batch % self.micro_batches:
            raise ValueError(f"depth ({self.depth}) and batch ({self.batch}) must divide by ranks ({self.ranks}), "
                             f"and batch by micro_batches ({self.micro_batches})")


def _memory(params: float, acts: list[float], w: Workload) -> dict:
    e = w.bytes_per_element
    state = params * (2 + w.optimizer_slots) * e  # parameters + gradients + optimizer state
    return {"params_per_rank": params, "activation_bytes_per_rank": [a * e for a in acts],
            "memory_bytes": state + max(acts) * e}


def strategy_table(w: Workload) -> list[dict]:
    """One row per strategy (DP, PP with GPipe and 1F1B, TP): bytes each rank hands to
    communication per step (``sent_per_rank``), the ring wire bytes, parameters and saved
    activation bytes per rank (what autograd keeps: each layer's input, the last ReLU's output,
    and the loss's output and target), and the memory total with gradients and optimizer state."""
    if not isinstance(w, Workload):
        raise TypeError(f"w must be a Workload, got {type(w).__name__}")
    d, L, B, p, m, e = w.width, w.depth, w.batch, w.ranks, w.micro_batches, w.bytes_per_element
    P = L * (d * d + d)
    ring = 2 * (p - 1) / p
    k = L // p  # layers per pipeline stage
    rows = []
    dp_sent = P * e if p > 1 else 0
    rows.append({"strategy": "DP", "sent_per_rank": [dp_sent] * p, "wire_per_rank": ring * P * e,
                 **_memory(P, [(L + 2) * (B // p) * d] * p, w),
                 "when": "the model fits on one device; traffic grows with the parameters, overlaps backward"})
    pp_sent = [B * d * e * ((s < p - 1) + (s > 0)) for s in range(p)]
    per_micro = [(k + (2 if s == p - 1 else 1)) * (B // m) * d for s in range(p)]
    gpipe = [pm * m for pm in per_micro]
    onefb = [pm * min(p - s, m) for s, pm in enumerate(per_micro)]
    for name, acts in (("PP (GPipe)", gpipe), ("PP (1F1B)", onefb)):
        rows.append({"strategy": name, "sent_per_rank": pp_sent, "wire_per_rank": max(pp_sent),
                     **_memory(k * (d * d + d), acts, w),
                     "when": f"the model does not fit; traffic only at the cuts; idle share (p-1)/(m+p-1) = "
                             f"{(p - 1) / (m + p - 1):.2f}"})
    if L % 2 == 0 and d % p == 0:
        calls = L - 1 if p > 1 else 0  # one forward all-reduce per pair, one backward except the first pair
        tp_params = (L // 2) * (2 * d * d // p + d // p + d)
        tp_acts = (L // 2) * (B * d + B * d // p) + 2 * B * d
        rows.append({"strategy": "TP", "sent_per_rank": [calls * B * d * e] * p, "wire_per_rank": ring * calls * B * d * e,
                     **_memory(tp_params, [tp_acts] * p, w),
                     "when": "single layers too big, or latency matters; traffic every layer pair, on the "
                             "critical path: needs a fast link (inside one machine)"})
    return rows


def human_bytes(n: float) -> str:
    """``1536 -> '1.5 KB'`` (powers of 1024)."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


TABLE_KEYS = ("strategy", "sent_per_rank", "wire_per_rank", "params_per_rank", "activation_bytes_per_rank",
              "memory_bytes")


def format_table(rows: list[dict]) -> str:
    """:func:`strategy_table`'s rows as aligned text (busiest rank's figures)."""
    rows = _args.rows("rows", rows, keys=TABLE_KEYS)
    head = f"{'strategy':<11} {'sent/rank':>10} {'on wire':>10} {'params/rank':>12} {'activations':>12} {'memory':>10}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['strategy']:<11} {human_bytes(max(r['sent_per_rank'])):>10} {human_bytes(r['wire_per_rank']):>10} "
                     f"{r['params_per_rank']:>12,.0f} {human_bytes(max(r['activation_bytes_per_rank'])):>12} "
                     f"{human_bytes(r['memory_bytes']):>10}")
    return "\n".join(lines)


def ddp_bytes_worker(width: int = 64, depth: int = 4, batch: int = 32, *, seed: int = 0) -> dict:
    """One DDP step of the lesson's MLP with :func:`counting_allreduce_hook`: bytes all-reduced,
    parameters and saved activation bytes on this rank (to check the DP row)."""
    require_group("ddp_bytes_worker")
    dev = rank_device()
    model, x, y = make_problem(width, depth, batch, seed=seed, device=dev)
    comm = CountingComm(device=dev)
    ddp = DDP(model.layers, device_ids=[dev.index] if dev.type == "cuda" else None)
    ddp.register_comm_hook(comm, counting_allreduce_hook)
    xs, ys = x.tensor_split(comm.world_size), y.tensor_split(comm.world_size)
    meter = LiveActivationMeter(ddp.parameters())
    with meter:
        loss = F.mse_loss(ddp(xs[comm.rank]), ys[comm.rank])
    loss.backward()
    return {"rank": comm.rank, "all_reduce_bytes": comm.bytes("all_reduce"), "saved_peak_bytes": meter.peak,
            "n_params": count_parameters(ddp)}


def measure_worker(width: int = 64, depth: int = 4, batch: int = 32, micro_batches: int = 4, *, seed: int = 0) -> dict:
    """Run every strategy once on this process group and report, per strategy, what this rank
    sent (bytes handed to communication, counted), the ring wire bytes *derived* from them
    (``2(p-1)/p`` per all-reduce byte, not measured), its parameter count and its peak saved
    activation bytes - the measured side of :func:`strategy_table`."""
    require_group("measure_worker")
    p = dist.get_world_size()
    ring = 2 * (p - 1) / p
    dp = ddp_bytes_worker(width, depth, batch, seed=seed)
    out = {"DP": {"sent": dp["all_reduce_bytes"], "wire": ring * dp["all_reduce_bytes"], "params": dp["n_params"],
                  "activation_bytes": dp["saved_peak_bytes"]}}
    for name, sched in (("PP (GPipe)", "gpipe"), ("PP (1F1B)", "1f1b")):
        pp = pipeline_worker(width, depth, batch, micro_batches, schedule=sched, seed=seed)
        out[name] = {"sent": pp["sent_bytes"], "wire": pp["sent_bytes"], "activation_bytes": pp["saved_peak_bytes"],
                     "params": sum(g.numel() for g in pp["grads"].values())}
    if depth % 2 == 0 and width % p == 0:
        tp = tp_worker(width, depth, batch, seed=seed)
        out["TP"] = {"sent": tp["all_reduce_bytes"], "wire": tp["wire_bytes"], "params": tp["n_params"],
                     "activation_bytes": tp["saved_peak_bytes"]}
    return out


def compare_table(rows: list[dict], measured: list[dict]) -> list[dict]:
    """Predicted (:func:`strategy_table`) against measured (:func:`measure_worker`, one dict per
    rank) for the busiest rank: bytes sent, parameters, saved activation bytes (``measured``), and
    wire bytes (``wire derived``: the ring formula applied to the counted payloads)."""
    measured = _args.sequence("measured", measured, of=dict, non_empty=True,
                              what="one dict per rank (measure_worker's output)")
    rows = _args.rows("rows", rows, keys=TABLE_KEYS)
    out = []
    for r in rows:
        name = r["strategy"]
        if name not in measured[0]:
            raise ValueError(f"no measurement for {name!r}; measured has {sorted(measured[0])}")
        got = [m[name] for m in measured]
        out.append({"strategy": name,
                    "sent predicted": max(r["sent_per_rank"]), "sent measured": max(g["sent"] for g in got),
                    "wire predicted": r["wire_per_rank"], "wire derived": max(g["wire"] for g in got),
                    "params predicted": r["params_per_rank"], "params measured": max(g["params"] for g in got),
                    "activations predicted": max(r["activation_bytes_per_rank"]),
                    "activations measured": max(g["activation_bytes"] for g in got)})
    return out
